"""sockserve.aio echo peer: async handlers on uvloop (``--loop asyncio``: plain asyncio).

    python bench/servers/sockserve_async.py [--port N] [--loop uvloop|asyncio] [--udp]
                                            [--workers N [--all-cpus]]

The stream handler echoes each chunk as it arrives, awaiting drain() only when the
transport asks for it; the datagram handler replies with send().  ``--workers N``
serves with N pre-forked workers, an event loop each (``PreForkMixIn`` before
``AsyncMixIn``); ``--all-cpus`` lets them spread over every CPU.
"""

from __future__ import annotations

import importlib.util

from _peer import CHUNK, HOST, announce, parse, parser, skip


def main() -> None:
    p = parser(__doc__.splitlines()[0], all_cpus=True)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop",
                   help="event loop (default: uvloop)")
    p.add_argument("--udp", action="store_true", help="serve UDP instead of TCP")
    p.add_argument("--workers", type=int, default=0,
                   help="pre-forked worker processes (default 0: serve in this process)")
    args = parse(p)
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

    server_class: type = aio.AsyncUDPServer if args.udp else aio.AsyncTCPServer
    handler = DatagramEcho if args.udp else StreamEcho
    if args.workers:
        import sockserve
        base = sockserve.UDPServer if args.udp else sockserve.TCPServer
        server_class = type("PreForkAsyncServer", (sockserve.PreForkMixIn, aio.AsyncMixIn, base),
                            {"workers": args.workers})
    with server_class((HOST, args.port), handler, loop_factory=args.loop) as server:
        announce(server.server_address[1])
        try:
            server.serve_forever(poll_interval=None)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
