"""gevent echo peer: ``StreamServer`` (a greenlet per connection), ``--udp``: DatagramServer.

gevent's own cooperative sockets are used directly, so no monkey-patching is needed.
"""

from __future__ import annotations

from typing import Any

from _peer import CHUNK, HOST, announce, parser, skip


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--udp", action="store_true", help="serve UDP (DatagramServer)")
    args = p.parse_args()
    try:
        from gevent.server import DatagramServer, StreamServer
    except ImportError:
        skip("gevent is not installed")

    def echo(sock: Any, address: Any) -> None:
        try:
            while data := sock.recv(CHUNK):
                sock.sendall(data)
        except ConnectionError:
            pass  # the client went away: nothing to echo to

    class DatagramEcho(DatagramServer):  # type: ignore[misc]
        def handle(self, data: bytes, address: Any) -> None:
            self.socket.sendto(data, address)

    server = DatagramEcho((HOST, args.port)) if args.udp else StreamServer((HOST, args.port), echo)
    server.start()
    announce(server.server_port)
    server.serve_forever()


if __name__ == "__main__":
    main()
