"""Async request handlers: one instance per connection (or datagram), ``await setup() →
handle() → finish()`` in the stdlib's order."""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._aio_streams import ConnectionReader
    from ._aio_writer import ConnectionWriter


class AsyncBaseRequestHandler:
    """Base class of the async handlers; subclasses define ``async def handle()``.

    The server constructs the handler, then awaits ``setup()``, ``handle()`` and
    ``finish()``.  ``finish()`` runs even when ``handle()`` raises (or is cancelled
    by ``shutdown()``), but not when ``setup()`` does, as in the stdlib.
    """

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server

    async def setup(self) -> None:
        """Prepare for ``handle()``; does nothing by default."""

    async def handle(self) -> None:
        """Serve the request; does nothing by default."""

    async def finish(self) -> None:
        """Clean up after ``handle()``; does nothing by default."""


class AsyncStreamRequestHandler(AsyncBaseRequestHandler):
    """Serves one stream connection through ``self.reader`` and ``self.writer``.

    ``request`` is the connection's socket as the event loop exposes it (for
    ``getsockopt()`` and the like, not for I/O).  The connection is closed after
    ``finish()``, once the written data is sent.
    """

    # Seconds a read or a drain() may wait before raising TimeoutError (None: forever),
    # as StreamRequestHandler.timeout does for its socket.
    timeout: float | None = None

    def __init__(self, reader: ConnectionReader, writer: ConnectionWriter,
                 client_address: Any, server: Any) -> None:
        super().__init__(writer.get_extra_info("socket"), client_address, server)
        self.reader = reader
        self.writer = writer
        reader.timeout = self.timeout


class AsyncDatagramRequestHandler(AsyncBaseRequestHandler):
    """Serves one datagram: ``self.packet`` in, replies with ``self.send()`` or ``wfile``.

    As in ``DatagramRequestHandler``, ``rfile`` reads the packet and what ``handle()``
    writes to ``wfile`` is sent back as one datagram by ``finish()`` (only if something
    was written: unlike the stdlib, no empty datagram is sent for a silent handler).
    ``request`` is ``(packet, socket)``, as the stdlib's.
    """

    def __init__(self, packet: bytes, transport: asyncio.DatagramTransport,
                 client_address: Any, server: Any) -> None:
        # Not super().__init__(): request is made only when asked for (see below).
        self.packet = packet
        self.transport = transport
        self.client_address = client_address
        # Where send() replies: client_address, unless that shows an IPv4 client of a
        # dual-stack socket unmapped (unmap_ipv4_clients).
        self._reply_to = client_address
        self.server = server

    # Made on first use (and None until then: class attributes, one store less each).
    _rfile: io.BytesIO | None = None
    _wfile: io.BytesIO | None = None

    @property
    def request(self) -> tuple[bytes, Any]:
        """``(packet, socket)``, as the stdlib's ``request``."""
        return self.packet, self.transport.get_extra_info("socket")

    @property
    def rfile(self) -> io.BytesIO:
        """The packet as a file (made on first use)."""
        if self._rfile is None:
            self._rfile = io.BytesIO(self.packet)
        return self._rfile

    @property
    def wfile(self) -> io.BytesIO:
        """The reply that ``finish()`` sends (made on first use)."""
        if self._wfile is None:
            self._wfile = io.BytesIO()
        return self._wfile

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send *data* to the client as one datagram, now."""
        self.transport.sendto(data, self._reply_to)

    async def finish(self) -> None:
        if self._wfile is not None and (reply := self._wfile.getvalue()):
            self.send(reply)

