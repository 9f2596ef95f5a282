"""The upper-casing echo server, over UDP: each datagram gets one datagram back.

Run:  python examples/udp_server.py            (then: python examples/udp_client.py hello)
"""

import argparse

import sockserve


class UpperCaseHandler(sockserve.DatagramRequestHandler):
    """One instance per datagram: rfile holds the packet, wfile collects the reply."""

    def handle(self):
        data = self.rfile.read().strip()
        print(f"{self.client_address[0]} wrote: {data!r}", flush=True)
        self.wfile.write(data.upper())  # sent back when handle() returns


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=9999)
    args = parser.parse_args()

    with sockserve.UDPServer((args.host, args.port), UpperCaseHandler) as server:
        host, port = server.server_address[:2]
        print(f"listening on {host}:{port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
