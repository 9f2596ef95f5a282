"""trio echo peer: ``trio.serve_tcp`` with a task per connection."""

from __future__ import annotations

from functools import partial
from typing import Any

from _peer import CHUNK, HOST, announce, parser, skip

try:
    import trio
except ImportError:
    trio = None


async def echo(stream: Any) -> None:
    try:
        while data := await stream.receive_some(CHUNK):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # the client went away: nothing to echo to


async def serve(port: int) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, echo, port, host=HOST))
        announce(listeners[0].socket.getsockname()[1])


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    if trio is None:
        skip("trio is not installed")
    trio.run(serve, args.port)


if __name__ == "__main__":
    main()
