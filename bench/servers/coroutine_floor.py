"""The least an ``async def handle()`` can cost on uvloop: a floor, not a server to use.

    python bench/servers/coroutine_floor.py [--port N] [--udp]

The same handler code as sockserve_async.py (a stream handler that reads a chunk,
writes it and awaits ``drain()``; a datagram handler object whose ``handle()`` sends
the packet back), run with nothing a real async server needs: no task (the protocol
sends each chunk straight into the coroutine), no contextvars context, no timeouts,
no error handling, no bookkeeping of connections.  Whatever it costs beyond the bare
Protocol peer (asyncio_protocol.py, asyncio_datagram.py) is what running a coroutine
per message costs by itself; what sockserve.aio costs beyond it is the price of the
handler running as a real asyncio task, in its own context, under the server's limits.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any

from _peer import CHUNK, HOST, announce, parser, run_asyncio


@types.coroutine
def _next_chunk() -> Generator[None, bytes, bytes]:
    """Suspend the handler until the protocol sends it the next chunk."""
    return (yield)


class StreamFloor(asyncio.Protocol):
    """Protocol and handler in one: data_received() resumes the handler coroutine."""

    transport: Any  # uvloop's transports do not subclass asyncio's
    _coro: Coroutine[Any, Any, None] | None = None
    _paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.write = self.transport.write
        self._coro = self.handle()
        self._coro.send(None)  # runs to its first read

    def data_received(self, data: bytes) -> None:
        self._send(data)

    def eof_received(self) -> bool:
        self._send(b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._coro is not None:
            self._send(b"")

    def _send(self, data: bytes) -> None:
        assert self._coro is not None
        try:
            self._coro.send(data)
        except StopIteration:
            self._coro = None
            self.transport.close()

    async def read_some(self, max_bytes: int) -> bytes:
        return await _next_chunk()  # the loop reads at most CHUNK-sized pieces anyway

    async def drain(self) -> None:
        if self._paused:  # never true at 64 B per exchange; the check is the cost
            raise RuntimeError("a floor server does not wait for room")

    async def handle(self) -> None:
        read_some, write = self.read_some, self.write
        while data := await read_some(CHUNK):
            write(data)
            await self.drain()


class DatagramHandler:
    """A handler object per datagram, as the socketserver model makes one per request."""

    __slots__ = ("packet", "client_address", "_transport")

    def __init__(self, packet: bytes, client_address: Any, transport: Any) -> None:
        self.packet, self.client_address, self._transport = packet, client_address, transport

    def send(self, data: bytes) -> None:
        self._transport.sendto(data, self.client_address)

    async def handle(self) -> None:
        self.send(self.packet)


class DatagramFloor(asyncio.DatagramProtocol):
    transport: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        coro = DatagramHandler(data, addr, self.transport).handle()
        try:
            coro.send(None)
        except StopIteration:
            pass


async def serve(port: int, udp: bool) -> None:
    loop = asyncio.get_running_loop()
    if udp:
        transport, _ = await loop.create_datagram_endpoint(DatagramFloor, local_addr=(HOST, port))
        announce(transport.get_extra_info("sockname")[1])
        try:
            await asyncio.Event().wait()  # serve until the driver kills the process
        finally:
            transport.close()
    else:
        server = await loop.create_server(StreamFloor, HOST, port)
        announce(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--udp", action="store_true", help="serve UDP instead of TCP")
    args = p.parse_args()
    run_asyncio(serve(args.port, args.udp), use_uvloop=True)


if __name__ == "__main__":
    main()
