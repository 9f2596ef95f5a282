"""One handler model: the same handler classes run unchanged under every server model."""

from __future__ import annotations

import socket
from typing import Any

import pytest

import sockserve
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, connect, recv_all


class LineEcho(sockserve.StreamRequestHandler):
    """Plain socketserver code: nothing here knows which model serves it."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


class PacketEcho(sockserve.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


class PreForkPool(sockserve.PreForkMixIn, sockserve.ThreadPoolMixIn, sockserve.TCPServer):
    pass


class PreForkGreen(sockserve.PreForkMixIn, sockserve.GreenMixIn, sockserve.TCPServer):
    pass


class PreForkPoolUDP(sockserve.PreForkMixIn, sockserve.ThreadPoolMixIn, sockserve.UDPServer):
    pass


def settings(server_class: type) -> dict[str, Any]:
    return {"graceful_timeout": IO_TIMEOUT} if issubclass(server_class,
                                                          sockserve.PreForkMixIn) else {}


@pytest.mark.parametrize("server_class", [
    sockserve.TCPServer, sockserve.ThreadingTCPServer, sockserve.ForkingTCPServer,
    sockserve.ThreadPoolTCPServer, sockserve.PreForkTCPServer, PreForkPool,
    sockserve.GreenTCPServer, PreForkGreen])
def test_stream_handler_under_every_model(server_class: type) -> None:
    server = type("Server", (server_class,), settings(server_class))(("127.0.0.1", 0), LineEcho)
    with serve_in_thread(server):
        for word in (b"one", b"two"):
            with connect(server.server_address) as client:
                client.sendall(word + b"\n" + word + b"\n")
                client.shutdown(socket.SHUT_WR)
                assert recv_all(client) == (word.upper() + b"\n") * 2


@pytest.mark.parametrize("server_class", [
    sockserve.UDPServer, sockserve.ThreadingUDPServer, sockserve.ForkingUDPServer,
    sockserve.ThreadPoolUDPServer, sockserve.PreForkUDPServer, PreForkPoolUDP])
def test_datagram_handler_under_every_model(server_class: type) -> None:
    server = type("Server", (server_class,), settings(server_class))(("127.0.0.1", 0), PacketEcho)
    with serve_in_thread(server):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(IO_TIMEOUT)
            for word in (b"one", b"two"):
                client.sendto(word, server.server_address)
                assert client.recv(100) == word.upper()
