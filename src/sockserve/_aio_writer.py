"""The sending side an async stream handler talks to: ``ConnectionWriter``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._aio_limits import LIFETIME_EXCEEDED, WRITE_TIMEOUT

if TYPE_CHECKING:
    from ._aio_streams import ConnectionReader


def expire(waiter: asyncio.Future[Any], message: str) -> None:
    """Timer callback: fail *waiter* with ``TimeoutError(message)`` unless it is done."""
    if not waiter.done():
        waiter.set_exception(TimeoutError(message))


def _dropped(data: Any) -> None:
    """What a lost connection's ``write()`` and ``writelines()`` do with *data*."""


class ConnectionWriter:
    """The sending side of a connection: ``write()`` buffers, ``await drain()`` waits for room.

    ``write()`` and ``writelines()`` are the transport's own methods: they send at once
    what the socket takes and buffer the rest.  ``drain()`` waits while that buffer is
    above the transport's high-water mark, so a handler that awaits it after each write
    never holds more than about one write beyond the mark.  Once the connection is lost
    they drop what they are given, as asyncio's transports do (uvloop's raise
    RuntimeError), and ``drain()`` raises ``ConnectionResetError``.
    """

    __slots__ = ("transport", "write", "writelines", "_reader")

    write: Callable[[bytes | bytearray | memoryview], None]
    writelines: Callable[[Iterable[bytes | bytearray | memoryview]], None]

    def __init__(self, transport: asyncio.Transport, reader: ConnectionReader) -> None:
        self.transport = transport
        self.write = transport.write
        self.writelines = transport.writelines
        self._reader = reader

    def connection_lost(self) -> None:
        """The connection is gone: writes from now on are dropped."""
        self.write = self.writelines = _dropped

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark.

        Raises:
            ConnectionResetError: the connection is lost (the data cannot be delivered).
            TimeoutError: no room within the reader's ``timeout`` seconds or the
                server's ``write_timeout``, or the connection's lifetime is over.
        """
        reader = self._reader
        if reader._write_paused and not reader._lost:
            delay: float | None = None
            if reader._timed:
                delay, message = reader._write_limit()  # raises once the lifetime is over
            loop = reader._serving.loop
            waiter: asyncio.Future[None] = loop.create_future()
            reader._drain_waiters.append(waiter)
            timer = None
            if delay is not None:
                timer = loop.call_later(delay, expire, waiter, message)
            try:
                await waiter
            except TimeoutError as exc:
                if str(exc) in (WRITE_TIMEOUT, LIFETIME_EXCEEDED):
                    # The server's limit: what is buffered for a client that does not
                    # read would otherwise hold the connection open after the handler.
                    self.transport.abort()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
        if reader._lost:
            raise ConnectionResetError("connection lost")

    def close(self) -> None:
        """Close the connection once the buffered data is sent."""
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed (``connection_lost()`` has run)."""
        reader = self._reader
        if reader._lost:
            return
        if reader._closed is None:
            reader._closed = reader._serving.loop.create_future()
        await asyncio.shield(reader._closed)

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def write_eof(self) -> None:
        """Half-close: the peer reads EOF, and this side can still read."""
        self.transport.write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's ``get_extra_info()``: "peername", "sockname", "socket"..."""
        return self.transport.get_extra_info(name, default)
