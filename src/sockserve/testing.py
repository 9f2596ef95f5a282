"""Helpers for tests, ours and users': run a server in a background thread.

Like ``trio.testing``: public, small, and what our own suite uses.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TypeVar

from ._server import BaseServer

S = TypeVar("S", bound=BaseServer)

# Long enough for a loaded CI machine, short enough that a hang fails the test.
JOIN_TIMEOUT = 10.0


@contextlib.contextmanager
def serve_in_thread(server: S, poll_interval: float | None = 0.5) -> Iterator[S]:
    """Run ``server.serve_forever()`` in a thread for the duration of the block.

    On exit: ``shutdown()``, ``server_close()``, and the thread is joined.

    Resource handling: the server is closed on exit even when the block raises.

    Raises:
        RuntimeError: the serving thread did not stop within ``JOIN_TIMEOUT``.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.serve_forever(poll_interval)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"serve {type(server).__name__}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        try:
            server.shutdown()
        finally:
            server.server_close()
            thread.join(JOIN_TIMEOUT)
    if thread.is_alive():
        raise RuntimeError(f"{type(server).__name__}.serve_forever() did not stop")
    if errors:
        raise errors[0]

