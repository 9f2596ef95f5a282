"""asyncio Protocol echo peer (``--uvloop``: on uvloop): the cheapest asyncio TCP echo.

No coroutine per connection: data_received() hands each chunk straight back to the
transport, which buffers whatever the socket does not take at once.
"""

from __future__ import annotations

import asyncio

from _peer import HOST, announce, parser, run_asyncio


class Echo(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Echo, HOST, port)
    announce(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = p.parse_args()
    run_asyncio(serve(args.port), args.uvloop)


if __name__ == "__main__":
    main()
