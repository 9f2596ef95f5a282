"""One server, several listening addresses."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

import sockserve
from sockserve.address import bind_sockets
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, connect, recv_all


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class DatagramEcho(sockserve.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def echo(address: object, family: int = socket.AF_INET) -> bytes:
    with connect(address, family) as client:
        client.sendall(b"hi\n")
        return recv_all(client)


@pytest.mark.parametrize("server_class", [sockserve.TCPServer, sockserve.ThreadPoolTCPServer,
                                          sockserve.PreForkTCPServer])
def test_tcp_on_two_addresses(server_class: type) -> None:
    socks = bind_sockets("127.0.0.1:0") + bind_sockets("127.0.0.2:0")
    server_type: Any = type("S", (server_class,), {"graceful_timeout": IO_TIMEOUT})
    server = server_type.from_sockets(socks, Echo)
    with serve_in_thread(server):
        assert len(server.server_addresses) == 2
        for address in server.server_addresses:
            assert echo(address) == b"hi\n"
    assert all(sock.fileno() == -1 for sock in socks)  # closed with the server


def test_udp_replies_leave_from_the_socket_that_received() -> None:
    socks = bind_sockets("udp://127.0.0.1:0") + bind_sockets("udp://127.0.0.2:0")
    with serve_in_thread(sockserve.UDPServer.from_sockets(socks, DatagramEcho)) as server:
        for address in server.server_addresses:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(IO_TIMEOUT)
                client.sendto(b"x", address)
                data, source = client.recvfrom(10)
                assert (data, source) == (b"x", address)


def test_unix_paths_are_served_and_removed(unix_path: str) -> None:
    paths = [unix_path + "-a", unix_path + "-b"]
    socks = [s for path in paths for s in bind_sockets(f"unix:{path}")]
    with serve_in_thread(sockserve.ThreadingUnixStreamServer.from_sockets(socks, Echo)):
        for path in paths:
            assert echo(path, socket.AF_UNIX) == b"hi\n"
    assert not any(os.path.exists(path) for path in paths)


def test_mixed_socket_types_are_refused() -> None:
    socks = bind_sockets("127.0.0.1:0") + bind_sockets("udp://127.0.0.1:0")
    try:
        with pytest.raises(ValueError, match="SOCK_STREAM"):
            sockserve.TCPServer.from_sockets(socks, Echo)
    finally:
        for sock in socks:
            sock.close()
