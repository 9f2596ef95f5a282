"""Access lists and dual-stack addresses on real servers."""

from __future__ import annotations

import logging
import socket
import struct
from typing import Any

import pytest

import sockserve
from sockserve import aio
from sockserve.access import AccessList
from sockserve.address import bind_sockets
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, recv_all, wait_for


class WhoAmI(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(repr(self.client_address).encode())


def ask(address: Any, source: str = "127.0.0.1") -> bytes:
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(IO_TIMEOUT)
        client.bind((source, 0))
        client.connect(address)
        return recv_all(client)


def test_cidr_rules_close_log_and_count(caplog: pytest.LogCaptureFixture) -> None:
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), WhoAmI)
    server.access_list = AccessList.from_strings(allow="127.0.0.0/8", deny="127.0.0.2")
    with caplog.at_level(logging.INFO, logger="sockserve.server"):
        with serve_in_thread(server):
            assert ask(server.server_address, "127.0.0.2") == b""
            assert ask(server.server_address, "127.0.0.3").startswith(b"('127.0.0.3'")
    assert server.statistics().denied == 1
    assert any("access denied" in r.getMessage() and "127.0.0.2" in r.getMessage()
               for r in caplog.records)


def test_access_list_composes_with_verify_request() -> None:
    class Picky(sockserve.ThreadingTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            return bool(client_address[0] != "127.0.0.4")

    server = Picky(("127.0.0.1", 0), WhoAmI)
    server.access_list = AccessList.from_strings(deny="127.0.0.5")
    with serve_in_thread(server):
        assert ask(server.server_address, "127.0.0.4") == b""  # verify_request says no
        assert ask(server.server_address, "127.0.0.5") == b""  # the access list says no
        assert ask(server.server_address, "127.0.0.6") != b""
    assert server.statistics().denied == 2


def test_dual_stack_shows_ipv4_clients_as_ipv4_and_matches_ipv6_rules() -> None:
    [sock] = bind_sockets("[::]:0")
    server = sockserve.ThreadingTCPServer.from_socket(sock, WhoAmI)
    server.unmap_ipv4_clients = True
    server.access_list = AccessList.from_strings(deny="::1")
    port = server.server_address[1]
    with serve_in_thread(server):
        assert ask(("127.0.0.1", port)).startswith(b"('127.0.0.1', ")
        assert ask(("::1", port), "::1") == b""
    assert server.statistics().denied == 1


def test_datagrams_from_denied_clients_are_dropped() -> None:
    class Echo(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.read())

    server = sockserve.UDPServer(("127.0.0.1", 0), Echo)
    server.access_list = AccessList.from_strings(deny="127.0.0.7")
    with serve_in_thread(server):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as denied:
            denied.bind(("127.0.0.7", 0))
            denied.sendto(b"x", server.server_address)
            wait_for(lambda: server.statistics().denied == 1, what="the drop counted")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as allowed:
            allowed.settimeout(IO_TIMEOUT)
            allowed.sendto(b"y", server.server_address)
            assert allowed.recv(10) == b"y"


def test_dual_stack_datagram_replies_reach_clients_shown_as_ipv4() -> None:
    class Echo(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            data = self.rfile.read()
            self.wfile.write(repr(self.client_address).encode())
            self.socket.sendto(data, self.client_address)  # as stdlib examples do

    [sock] = bind_sockets("udp://[::]:0")
    server = sockserve.UDPServer.from_socket(sock, Echo)
    server.unmap_ipv4_clients = True
    with serve_in_thread(server):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(IO_TIMEOUT)
            client.sendto(b"direct", ("127.0.0.1", server.server_address[1]))
            assert client.recv(100) == b"direct"  # the handler's own sendto()
            assert client.recv(100).startswith(b"('127.0.0.1', ")  # finish()'s reply


def reset_while_waiting(address: Any) -> None:
    """A client from 127.0.0.1 that resets its connection while it waits in the backlog."""
    client = socket.socket()
    client.settimeout(IO_TIMEOUT)
    client.connect(address)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


class AsyncWhoAmI(aio.AsyncStreamRequestHandler):
    seen: list[Any] = []

    async def handle(self) -> None:
        self.seen.append(self.client_address)
        self.writer.write(repr(self.client_address).encode())


class Seen(WhoAmI):
    seen: list[Any] = []

    def handle(self) -> None:
        self.seen.append(self.client_address)
        super().handle()


@pytest.mark.parametrize("loop", [None, "asyncio", "uvloop"])
def test_a_denied_client_that_reset_never_reaches_a_handler(loop: str | None) -> None:
    # uvloop gives such a connection no peer address, which the rules took for a Unix
    # client's: allowed.
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    handler: Any = Seen if loop is None else AsyncWhoAmI
    handler.seen = []
    sock = socket.create_server(("127.0.0.1", 0))
    server: Any = (sockserve.ThreadingTCPServer.from_socket(sock, handler) if loop is None
                   else aio.AsyncTCPServer.from_socket(sock, handler))
    if loop is not None:
        server.loop_factory = loop
    server.access_list = AccessList(deny=["127.0.0.1"])
    reset_while_waiting(sock.getsockname())  # queued before serving starts
    with serve_in_thread(server):
        # Accepted after the reset one, so served after it.
        assert ask(sock.getsockname(), "127.0.0.2").startswith(b"('127.0.0.2'")
    assert [address[0] for address in handler.seen] == ["127.0.0.2"]
