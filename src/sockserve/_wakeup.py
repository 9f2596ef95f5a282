"""A self-pipe that lets another thread, or a forked child, wake a blocked selector."""

from __future__ import annotations

import socket

# One byte per message; the loop reads everything that is pending.
SHUTDOWN = b"s"  # stop serving
RECHECK = b"r"  # something the loop waits on changed (e.g. a full pool has room again)


class Waker:
    """Both ends of a socketpair: ``wake()`` writes, the serving loop selects on ``fileno()``.

    A socketpair rather than ``os.pipe()``: a closed ``socket`` object refuses further
    sends (EBADF) instead of writing into whatever file reuses the descriptor number,
    so ``wake()`` needs no lock and stays safe to call from a forked child.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def write_fileno(self) -> int:
        """The sending end, e.g. for ``signal.set_wakeup_fd()``."""
        return self._writer.fileno()

    def wake(self, message: bytes = SHUTDOWN) -> None:
        """Queue *message* for the loop; never blocks, never raises."""
        try:
            self._writer.send(message)
        except OSError:
            # Full (the loop already has messages to read) or closed (the loop is gone):
            # either way there is nobody left to wake.
            pass

    def read_messages(self) -> bytes:
        """Everything written since the last call (empty if nothing)."""
        chunks = []
        while True:
            try:
                chunk = self._reader.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
