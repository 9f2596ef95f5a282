"""The datagram side of ``serve()``: one handler task per datagram.

Each datagram goes through the sync servers' rules first (``_aio_admission``): its
size against ``max_packet_size``, ``unmap_ipv4_clients``, the access list,
``verify_request()``.  The per-datagram path tests two attributes of the protocol, not
four of the server: the protocol keeps a copy of these options, taken when serving
starts and again whenever one of them is assigned on the server (``AsyncMixIn``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import TYPE_CHECKING, Any, cast

from ._aio_admission import allowed, oversized
from ._aio_handlers import AsyncBaseRequestHandler, AsyncDatagramRequestHandler
from .address import unmap_client_address

if TYPE_CHECKING:
    from ._aio_serving import Serving

logger = logging.getLogger("sockserve.aio")

_NO_SETUP = AsyncBaseRequestHandler.setup
_DATAGRAM_FINISH = AsyncDatagramRequestHandler.finish

# sendto() errors a UDP server expects (the client went away: ICMP port unreachable
# is reported on the next socket call, udp(7)); anything else is logged.
DATAGRAM_IGNORED_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                     errno.ENETUNREACH})

# The server options DatagramServing copies (read_options()).
DATAGRAM_OPTIONS = frozenset({"max_packet_size", "unmap_ipv4_clients", "access_list"})


class DatagramServing(asyncio.DatagramProtocol):
    """The datagram endpoint's protocol: one handler task per datagram."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self.server = serving.server
        self.counters = serving.server._sockserve_counters
        self.transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = serving.loop.create_future()
        self.read_options()

    def read_options(self) -> None:
        """Copy the options every datagram is checked against (any thread may call)."""
        server = self.server
        self.max_size: int = server.max_packet_size
        self.screened = bool(server.unmap_ipv4_clients or server.access_list is not None
                             or self.serving.verify_request is not None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance() check: asyncio's own datagram transport is no subclass of
        # DatagramTransport before Python 3.12.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.socket = transport.get_extra_info("socket")

    def datagram_received(self, data: bytes, addr: Any) -> None:
        serving, transport = self.serving, self.transport
        if not serving.accepting or transport is None:
            return
        if len(data) > self.max_size or self.screened:
            self._screen(data, addr, transport)
            return
        self.counters.accepted += 1
        serving.spawn(_serve_datagram(self.server, data, transport, addr))

    def _screen(self, data: bytes, addr: Any, transport: asyncio.DatagramTransport) -> None:
        """datagram_received() with a rule to apply."""
        serving, server = self.serving, self.server
        if len(data) > server.max_packet_size:
            packet = oversized(server, data, addr)
            if packet is None:
                return
            data = packet
        self.counters.accepted += 1
        client_address = addr
        if server.unmap_ipv4_clients:
            client_address = unmap_client_address(addr)
        if server.access_list is not None and not allowed(server, client_address):
            return  # dropped: a datagram has no connection to close
        if serving.verify_request is not None:
            request = (data, self.socket)
            try:
                if not serving.verify_request(request, client_address):
                    self.counters.denied += 1
                    return
            except Exception:
                server.handle_error(request, client_address)
                return
        # Replies go to the address the datagram came from, even when the handler is
        # shown it unmapped (an IPv6 socket cannot send to an IPv4 pair).
        reply_to = None if client_address is addr else addr
        serving.spawn(_serve_datagram(server, data, transport, client_address, reply_to))

    def error_received(self, exc: Exception) -> None:
        if getattr(exc, "errno", None) not in DATAGRAM_IGNORED_ERRNOS:
            logger.warning("datagram socket error on %s: %s", self.server.server_address, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _serve_datagram(server: Any, packet: bytes, transport: asyncio.DatagramTransport,
                          client_address: Any, reply_to: Any = None) -> None:
    handler: AsyncDatagramRequestHandler | None = None
    try:
        handler = server.RequestHandlerClass(packet, transport, client_address, server)
        if reply_to is not None:
            handler._reply_to = reply_to
        handler_class = type(handler)
        # The inherited setup() and finish() (with nothing in wfile) do nothing: not
        # calling them saves two coroutines per datagram.
        if handler_class.setup is not _NO_SETUP:
            await handler.setup()
        try:
            await handler.handle()
        finally:
            if handler_class.finish is not _DATAGRAM_FINISH or handler._wfile is not None:
                await handler.finish()
    except Exception:
        request = handler.request if handler is not None else (packet, None)
        server.handle_error(request, client_address)
