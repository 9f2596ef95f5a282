"""sockserve.aio echo peer: async handlers on uvloop (``--loop asyncio``: plain asyncio).

    python bench/servers/sockserve_async.py [--port N] [--loop uvloop|asyncio] [--udp]

The stream handler echoes each chunk as it arrives, awaiting drain() only when the
transport asks for it; the datagram handler replies with send().
"""

from __future__ import annotations

import importlib.util

from _peer import CHUNK, HOST, announce, parser, skip


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop",
                   help="event loop (default: uvloop)")
    p.add_argument("--udp", action="store_true", help="serve UDP instead of TCP")
    args = p.parse_args()
    if args.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        skip("uvloop is not installed")
    try:
        from sockserve import aio
    except ImportError as exc:
        skip(f"sockserve.aio cannot be imported: {exc}")

    class StreamEcho(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            read_some, write = self.reader.read_some, self.writer.write
            while data := await read_some(CHUNK):
                write(data)
                await self.writer.drain()  # returns at once unless the client lags

    class DatagramEcho(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            self.send(self.packet)

    server_class = aio.AsyncUDPServer if args.udp else aio.AsyncTCPServer
    handler = DatagramEcho if args.udp else StreamEcho
    with server_class((HOST, args.port), handler, loop_factory=args.loop) as server:
        announce(server.server_address[1])
        server.serve_forever(poll_interval=None)


if __name__ == "__main__":
    main()
