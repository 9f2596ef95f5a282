"""The upper-casing echo server, over TCP, as a newcomer would write it with sockserve.

Run:  python examples/tcp_server.py            (then: python examples/tcp_client.py hello)
"""

import argparse

import sockserve


class UpperCaseHandler(sockserve.StreamRequestHandler):
    """One instance per connection: reads lines, answers each one upper-cased."""

    def handle(self):
        # self.rfile and self.wfile are file objects over the client's socket.
        for line in self.rfile:
            data = line.strip()
            print(f"{self.client_address[0]} wrote: {data!r}", flush=True)
            self.wfile.write(data.upper() + b"\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=9999)
    args = parser.parse_args()

    # ThreadingTCPServer serves each connection in its own thread; with plain
    # TCPServer a second client would wait until the first one hangs up.
    with sockserve.ThreadingTCPServer((args.host, args.port), UpperCaseHandler) as server:
        host, port = server.server_address[:2]
        print(f"listening on {host}:{port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
