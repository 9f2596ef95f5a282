"""Echo with sockserve's EventedTCPServer: a MessageRequestHandler with chunk framing,
called once per message on the serving loop (no thread per connection).

    python bench/servers/sockserve_evented.py [--port N] [--workers N [--all-cpus] [--reuse-port]]

``--workers N`` serves with N pre-forked evented workers (``PreForkMixIn`` before
``EventedMixIn``): single-threaded workers, so two of them on two CPUs never hand a GIL
to each other.  ``--all-cpus`` undoes the driver's pinning to one CPU first, so that
the workers (which inherit the affinity) can spread over every CPU.

Prints its port as the first line, like every bench server.
"""

from __future__ import annotations

import sockserve
from _peer import HOST, announce, parse, parser


class ChunkEcho(sockserve.MessageRequestHandler):
    framing = "chunk"

    def handle_message(self, message: bytes) -> bytes:
        return message


class Server(sockserve.EventedTCPServer):
    request_queue_size = 4096


class PreForkServer(sockserve.PreForkMixIn, sockserve.EventedMixIn, sockserve.TCPServer):
    request_queue_size = 4096


def main() -> None:
    p = parser(__doc__.splitlines()[0], all_cpus=True)
    p.add_argument("--workers", type=int, default=0,
                   help="pre-forked worker processes (default 0: serve in this process)")
    p.add_argument("--reuse-port", action="store_true",
                   help="each worker also listens on a SO_REUSEPORT socket of its own")
    args = parse(p)
    server_class: type[sockserve.TCPServer] = Server
    if args.workers:
        server_class = type("PreForkServer", (PreForkServer,), {
            "workers": args.workers, "reuse_port_per_worker": args.reuse_port})
    with server_class((HOST, args.port), ChunkEcho) as server:
        announce(server.server_address[1])
        try:
            server.serve_forever(poll_interval=None)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
