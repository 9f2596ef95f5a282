"""asyncio DatagramProtocol echo peer (``--uvloop``: on uvloop)."""

from __future__ import annotations

import asyncio
from typing import Any

from _peer import HOST, announce, parser, run_asyncio


class Echo(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


async def serve(port: int) -> None:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Echo, local_addr=(HOST, port))
    announce(transport.get_extra_info("sockname")[1])
    try:
        await asyncio.Event().wait()  # serve until the driver kills the process
    finally:
        transport.close()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = p.parse_args()
    run_asyncio(serve(args.port), args.uvloop)


if __name__ == "__main__":
    main()
