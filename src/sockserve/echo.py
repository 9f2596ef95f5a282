"""The upper-casing echo service from the article sockserve started from, and its client.

``sockserve echo`` serves it and ``sockserve send`` talks to it; ``examples/`` has the
same pair written out for reading.
"""

from __future__ import annotations

import logging
import socket

from ._handlers import DatagramRequestHandler, StreamRequestHandler
from .address import display_client_address

logger = logging.getLogger("sockserve.echo")


class UpperEchoHandler(StreamRequestHandler):
    """Replies to each line with the line upper-cased, until the client closes."""

    def handle(self) -> None:
        for line in self.rfile:
            logger.info("%s wrote: %r", display_client_address(self.client_address), line.strip())
            self.wfile.write(line.strip().upper() + b"\n")


class UpperEchoDatagramHandler(DatagramRequestHandler):
    """Replies to each packet with the packet upper-cased."""

    def handle(self) -> None:
        data = self.rfile.read().strip()
        logger.info("%s wrote: %r", display_client_address(self.client_address), data)
        self.wfile.write(data.upper())


def send(address: tuple[str, int], data: bytes, *, udp: bool = False,
         timeout: float = 5.0) -> bytes:
    """Send *data* (one line, or one datagram with *udp*) and return the reply.

    Raises:
        OSError: connecting, sending or receiving failed (TimeoutError after *timeout*).
    """
    if udp:
        family = socket.getaddrinfo(*address, type=socket.SOCK_DGRAM)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(data, address)
            return sock.recv(65536)
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data + b"\n")
        sock.shutdown(socket.SHUT_WR)  # one exchange: the server then sees EOF and closes
        with sock.makefile("rb") as replies:
            return replies.readline().rstrip(b"\n")
