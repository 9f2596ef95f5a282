"""asyncio streams echo peer (``--uvloop``: the same code on uvloop's event loop).

The handler is the one the asyncio docs teach: read, write, drain, until EOF.
"""

from __future__ import annotations

import asyncio

from _peer import CHUNK, HOST, announce, parser, run_asyncio


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass  # the client went away: nothing to echo to
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(echo, HOST, port)
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
