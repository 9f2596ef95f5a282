"""File objects for stream handlers that enforce the server's timeouts and line limit.

``StreamRequestHandler`` uses these instead of ``socket.makefile()`` only when one of
the server's ``idle_timeout``, ``read_timeout``, ``write_timeout``,
``connection_lifetime`` or ``max_line_length`` is set; otherwise it behaves exactly
like the stdlib.

- idle timeout: how long one read call may wait for its first byte (the client is
  between requests and sends nothing);
- read timeout: how long one read call may take once its first byte has arrived, so
  a client trickling a byte at a time (slowloris) cannot hold a handler for ever;
- write timeout: how long one write may take (a client that does not read);
- connection lifetime: a deadline for everything on the connection;
- max line length: the longest line ``readline()`` returns, newline included; a
  longer one raises ``LineTooLong`` instead of buffering without bound
  (``readline(size)`` with a size up to one byte more than the limit returns what
  it asks for, and the caller judges, as http.server does with ``readline(65537)``
  and the 64 KiB default; a larger size gets ``LineTooLong`` past the limit too).
Running out of time raises ``TimeoutError`` in the handler, which ends the request
through the usual error handling (logged; the connection is closed).
"""

from __future__ import annotations

import io
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .errors import LineTooLong


@dataclass
class StreamLimits:
    """The server's per-connection limits, with the connection's own deadline."""

    idle_timeout: float | None = None
    read_timeout: float | None = None
    write_timeout: float | None = None
    max_line_length: int | None = None
    lifetime_deadline: float | None = None  # time.monotonic() value

    @classmethod
    def from_server(cls, server: Any) -> StreamLimits | None:
        """The limits set on *server*, or None when it sets none (plain files then)."""
        values = {name: getattr(server, name, None) for name in
                  ("idle_timeout", "read_timeout", "write_timeout", "max_line_length",
                   "connection_lifetime")}
        if all(value is None for value in values.values()):
            return None
        lifetime = values.pop("connection_lifetime")
        deadline = None if lifetime is None else time.monotonic() + lifetime
        return cls(**values, lifetime_deadline=deadline)

    def bound(self, timeout: float | None, reason: str) -> tuple[float | None, str]:
        """*timeout* shortened to the connection's remaining lifetime, and what the
        resulting limit is called (for the TimeoutError raised when it expires)."""
        if self.lifetime_deadline is None:
            return timeout, reason
        left = self.lifetime_deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("connection lifetime exceeded")
        if timeout is None or left < timeout:
            return left, "connection lifetime exceeded"
        return timeout, reason


# A call's "no limit": a timeout all the same, so that the descriptor stays in the
# mode every call in progress expects (SocketTimeouts.enter()).
FOREVER = 365 * 24 * 3600.0

# An unbuffered rfile's readline() peeks at this much to find the newline.
PEEK_SIZE = 4096
MSG_PEEK = int(socket.MSG_PEEK)  # a plain int: socket's MSG_* are slower IntFlags


class SocketTimeouts:
    """The timeout a connection's ``rfile`` and ``wfile`` set on its socket for each
    system call, and the handler's own, which the socket gets back when no call is in
    progress (so ``self.request`` used directly keeps only that one).

    Shared by the two files: a reader thread and a writer thread may each be in a
    call, and neither may take the other's temporary timeout for the handler's.  The
    handler's own is its ``timeout`` attribute, or one it has set on the socket since
    (the socket then shows another value than the files last set).
    """

    __slots__ = ("_sock", "_own", "_last_set", "_active", "_lock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._own = self._last_set = sock.gettimeout()
        self._active = 0
        self._lock = threading.Lock()

    def _adopt(self) -> None:
        """The socket shows another timeout than the files last set: the handler's.

        Compared to the microsecond: the socket keeps nanoseconds, so a timeout
        computed from a deadline reads back a little different.
        """
        current, last = self._sock.gettimeout(), self._last_set
        if current != last and (current is None or last is None
                                or abs(current - last) > 1e-6):
            self._own = self._last_set = current

    def _set(self, timeout: float | None) -> None:
        if timeout != self._last_set:
            self._sock.settimeout(timeout)
            self._last_set = timeout

    def enter(self, timeout: float | None, reason: str,
              limits: StreamLimits) -> str:
        """Set the socket's timeout for one call: *timeout*, or shorter if the
        handler's own or the connection's lifetime says so; returns what expiry means.
        Every ``enter()`` is followed by one ``leave()``."""
        with self._lock:
            self._adopt()
            own = self._own
            if own is not None and (timeout is None or own < timeout):
                timeout, reason = own, "timed out"
            timeout, reason = limits.bound(timeout, reason)
            # Never blocking mode during a call: another thread's call may be in
            # progress, and a switch would take its timeout away (or make its
            # blocking call see EAGAIN).
            self._set(FOREVER if timeout is None else timeout)
            self._active += 1
        return reason

    def leave(self) -> None:
        """The call has ended: the last one puts the handler's own timeout back."""
        with self._lock:
            self._adopt()  # one the handler set meanwhile, from another thread
            self._active -= 1
            if not self._active and self._sock.fileno() >= 0:
                self._set(self._own)


class _GuardedSocketIO(socket.SocketIO):
    """The raw file under the buffered ones: each system call gets the limits' time
    (``SocketTimeouts``)."""

    def __init__(self, sock: socket.socket, mode: Literal["rb", "wb"],
                 limits: StreamLimits, timeouts: SocketTimeouts) -> None:
        super().__init__(sock, mode)
        # A reference, as socket.makefile() takes: a handler's self.request.close()
        # then leaves the descriptor open until the files close (finish() flushes).
        sock._io_refs += 1  # type: ignore[attr-defined]
        self._socket = sock  # SocketIO keeps it as _sock, which typeshed does not declare
        self._limits = limits
        self._timeouts = timeouts
        self.call_deadline: float | None = None  # set once a read call has data
        self._write_failed: str | None = None  # a write timed out: data was lost

    def readinto(self, b: Any) -> int:
        count: int = self._guarded_read(super().readinto, b)
        return count

    def _guarded_read(self, read: Callable[..., Any], *args: Any) -> Any:
        """``read(*args)`` under the idle timeout, or once a call has data, under what
        is left of its read timeout (``call_deadline``)."""
        if self.call_deadline is None:
            timeout, reason = self._limits.idle_timeout, "idle timeout"
        else:
            timeout, reason = self.call_deadline - time.monotonic(), "read timeout"
            if timeout <= 0:
                raise TimeoutError(reason)
        reason = self._timeouts.enter(timeout, reason, self._limits)
        try:
            got = read(*args)
        except TimeoutError as exc:
            raise TimeoutError(reason) from exc
        finally:
            self._timeouts.leave()
        if got and self.call_deadline is None and self._limits.read_timeout is not None:
            self.call_deadline = time.monotonic() + self._limits.read_timeout
        return got

    def write(self, b: Any) -> int:
        if self._write_failed is not None:
            # Part of the stream is lost: nothing after it may go out, and the client
            # that did not read does not get to hold the thread again (finish()).
            raise TimeoutError(self._write_failed)
        # sendall() counts its timeout for the whole call (Python 3.5+).
        reason = self._timeouts.enter(self._limits.write_timeout, "write timeout",
                                      self._limits)
        try:
            self._socket.sendall(b)
        except TimeoutError as exc:
            self._write_failed = reason
            raise TimeoutError(reason) from exc
        finally:
            self._timeouts.leave()
        with memoryview(b) as view:
            return view.nbytes


def _bounded_readline(readline: Any, size: int | None, limit: int | None) -> bytes:
    """*readline(size)* under the line limit: past it, ``LineTooLong``.  A call whose
    size is at most ``limit + 1`` is the caller's to judge, as http.server and
    http.client do (``readline(65537)``, then 414/431, with a limit of 64 KiB)."""
    if limit is None:
        return readline(size)  # type: ignore[no-any-return]
    if size is not None and 0 <= size <= limit + 1:
        return readline(size)  # type: ignore[no-any-return]
    line: bytes = readline(limit + 1)
    if len(line) > limit:
        raise LineTooLong(f"line longer than max_line_length ({limit} bytes, "
                          "newline included)")
    return line


class GuardedReader(io.BufferedReader):
    """``rfile``: each read call gets the idle/read timeouts afresh; lines are bounded."""

    raw: _GuardedSocketIO

    def __init__(self, raw: _GuardedSocketIO, buffer_size: int = io.DEFAULT_BUFFER_SIZE,
                 max_line_length: int | None = None) -> None:
        super().__init__(raw, buffer_size)
        self._max_line = max_line_length

    def readline(self, size: int | None = -1) -> bytes:
        self.raw.call_deadline = None
        return _bounded_readline(super().readline, size, self._max_line)

    def read(self, size: int | None = -1) -> bytes:
        self.raw.call_deadline = None
        return super().read(size)

    def read1(self, size: int = -1) -> bytes:
        self.raw.call_deadline = None
        return super().read1(size)

    def readinto(self, b: Any) -> int:
        self.raw.call_deadline = None
        return super().readinto(b)

    def readinto1(self, b: Any) -> int:
        self.raw.call_deadline = None
        return super().readinto1(b)

    def peek(self, size: int = 0) -> bytes:
        self.raw.call_deadline = None
        return super().peek(size)


class UnbufferedGuardedReader(_GuardedSocketIO):
    """``rfile`` for ``rbufsize = 0``, as ``socket.makefile("rb", 0)``: nothing is read
    ahead, so what follows a line stays in the socket for the handler (a CGI script's
    body, a proxied stream)."""

    def __init__(self, sock: socket.socket, limits: StreamLimits,
                 timeouts: SocketTimeouts) -> None:
        super().__init__(sock, "rb", limits, timeouts)

    def readline(self, size: int | None = -1) -> bytes:
        self.call_deadline = None  # one deadline for the whole line, byte by byte
        return _bounded_readline(self._read_line, size, self._limits.max_line_length)

    def _read_line(self, size: int | None) -> bytes:
        """A line, and not a byte more: what waits is peeked at, and taken up to the
        newline (two system calls a line, where the stdlib makes one a byte)."""
        self._checkClosed()
        if isinstance(self._socket, ssl.SSLSocket):  # takes no flags
            return self._read_line_bytewise(size)
        line = bytearray()
        while size is None or size < 0 or len(line) < size:
            want = PEEK_SIZE if size is None or size < 0 else min(PEEK_SIZE, size - len(line))
            ahead = self._guarded_read(self._socket.recv, want, MSG_PEEK)
            if not ahead:
                break
            chunk = self._guarded_read(self._socket.recv, ahead.find(b"\n") + 1 or len(ahead))
            line += chunk
            if chunk.endswith(b"\n"):
                break
        return bytes(line)

    def _read_line_bytewise(self, size: int | None) -> bytes:
        """A line a byte at a time, as ``socket.makefile("rb", 0)`` reads one."""
        line = bytearray()
        byte = bytearray(1)
        while (size is None or size < 0 or len(line) < size) and \
                _GuardedSocketIO.readinto(self, byte):
            line += byte
            if byte == b"\n":
                break
        return bytes(line)

    def read(self, size: int | None = -1) -> bytes | None:
        self.call_deadline = None
        return super().read(-1 if size is None else size)


def guarded_files(sock: socket.socket, limits: StreamLimits, rbufsize: int,
                  wbufsize: int) -> tuple[io.BufferedIOBase, Any]:
    """``(rfile, wfile)`` for a handler, with *limits* enforced on every system call."""
    timeouts = SocketTimeouts(sock)
    reader: Any = UnbufferedGuardedReader(sock, limits, timeouts) if rbufsize == 0 \
        else GuardedReader(_GuardedSocketIO(sock, "rb", limits, timeouts),
                           rbufsize if rbufsize > 0 else io.DEFAULT_BUFFER_SIZE,
                           limits.max_line_length)
    raw_writer = _GuardedSocketIO(sock, "wb", limits, timeouts)
    if wbufsize == 0:
        return reader, raw_writer  # each write() sends everything, like _SocketWriter
    size = wbufsize if wbufsize > 0 else io.DEFAULT_BUFFER_SIZE
    return reader, io.BufferedWriter(raw_writer, size)
