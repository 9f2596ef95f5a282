"""The ``sockserve`` command: ``echo`` serves the demo, ``send`` is its client."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from ._mixins import ThreadingTCPServer, ThreadingUDPServer
from .echo import UpperEchoDatagramHandler, UpperEchoHandler, send


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` as a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sockserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sockserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    echo = commands.add_parser("echo", help="serve the upper-casing echo demo")
    echo.add_argument("--udp", action="store_true", help="serve UDP instead of TCP")
    echo.add_argument("--host", default="localhost", help="address to bind (default: localhost)")
    echo.add_argument("--port", type=int, default=9999, help="port (default: 9999; 0 picks one)")

    client = commands.add_parser("send", help="send DATA to an echo server, print the reply")
    client.add_argument("address", type=parse_host_port, metavar="HOST:PORT")
    client.add_argument("data", nargs="+", help="words to send, joined by spaces")
    client.add_argument("--udp", action="store_true", help="send one UDP datagram")
    client.add_argument("--timeout", type=float, default=5.0, help="seconds (default: 5)")
    return parser


def run_echo(args: argparse.Namespace) -> int:
    base = ThreadingUDPServer if args.udp else ThreadingTCPServer
    handler = UpperEchoDatagramHandler if args.udp else UpperEchoHandler
    # A restarted demo must not wait for the old connections' TIME_WAIT to expire.
    server_class = type("EchoServer", (base,), {"allow_reuse_address": True,
                                                "daemon_threads": True})
    with server_class((args.host, args.port), handler) as server:
        host, port = server.server_address[:2]
        print(f"sockserve echo: serving {'UDP' if args.udp else 'TCP'} on {host}:{port} "
              "(Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("sockserve echo: stopped", flush=True)
    return 0


def run_send(args: argparse.Namespace) -> int:
    data = " ".join(args.data)
    try:
        reply = send(args.address, data.encode(), udp=args.udp, timeout=args.timeout)
    except OSError as exc:
        print(f"sockserve send: {exc}", file=sys.stderr)
        return 1
    print(f"Sent:     {data}")
    print(f"Received: {reply.decode(errors='replace')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "echo":
        return run_echo(args)
    return run_send(args)
