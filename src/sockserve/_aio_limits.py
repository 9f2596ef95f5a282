"""The server's per-connection timeouts, as an async connection applies them.

Same options and meaning as the sync servers' ``rfile``/``wfile`` (``_streams.py``):

- ``idle_timeout``: how long one read call may wait for its first byte;
- ``read_timeout``: how long one read call may take once its first byte has come (a
  client trickling a byte at a time, slowloris, cannot hold a handler for ever);
- ``write_timeout``: how long one ``drain()`` may wait for room (a client that does not
  read);
- ``connection_lifetime``: a deadline for the whole connection, counted from accept;
  at the deadline the transport is closed.

The handler's own ``timeout`` bounds every wait too: the shorter one applies, as in the
sync servers.  Running out of time raises ``TimeoutError`` where the handler waits.  All
times are the event loop's (``loop.time()``): uvloop's clock is not ``time.monotonic()``.
"""

from __future__ import annotations

import asyncio
from typing import Any

LIFETIME_EXCEEDED = "connection lifetime exceeded"
WRITE_TIMEOUT = "write timeout"


class ConnectionLimits:
    """The server's timeouts for one connection, with its lifetime deadline."""

    __slots__ = ("idle_timeout", "read_timeout", "write_timeout", "deadline")

    def __init__(self, idle_timeout: float | None, read_timeout: float | None,
                 write_timeout: float | None, deadline: float | None) -> None:
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.deadline = deadline  # loop.time() at which the connection must end

    @classmethod
    def from_server(cls, server: Any, loop: asyncio.AbstractEventLoop) -> ConnectionLimits | None:
        """The limits *server* sets now, or None when it sets none (nothing to enforce)."""
        idle, read = server.idle_timeout, server.read_timeout
        write, lifetime = server.write_timeout, server.connection_lifetime
        if idle is None and read is None and write is None and lifetime is None:
            return None
        return cls(idle, read, write, None if lifetime is None else loop.time() + lifetime)

    def bound(self, limit: float | None, reason: str, own: float | None,
              now: float) -> tuple[float | None, str]:
        """The longest wait allowed by *limit* (named *reason*), the handler's own
        timeout *own* and the lifetime, and the message for when it runs out.

        Raises:
            TimeoutError: the connection's lifetime is over already.
        """
        if own is not None and (limit is None or own < limit):
            limit, reason = own, f"timed out after {own} s"
        if self.deadline is not None:
            left = self.deadline - now
            if left <= 0:
                raise TimeoutError(LIFETIME_EXCEEDED)
            if limit is None or left < limit:
                limit, reason = left, LIFETIME_EXCEEDED
        return limit, reason
