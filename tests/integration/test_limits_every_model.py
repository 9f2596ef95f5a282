"""The limits, timeouts and drain hold in every synchronous model, not just one."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

import sockserve
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, connect, recv_all, wait_for

MODELS = [sockserve.TCPServer, sockserve.ThreadingTCPServer, sockserve.ForkingTCPServer,
          sockserve.ThreadPoolTCPServer, sockserve.PreForkTCPServer, sockserve.GreenTCPServer]


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


def make(server_class: type, **settings: Any) -> Any:
    settings.setdefault("graceful_timeout", IO_TIMEOUT)
    return type("Server", (server_class,), settings)(("127.0.0.1", 0), Echo)


@pytest.mark.parametrize("server_class", MODELS)
def test_idle_timeout_and_line_limit(server_class: type) -> None:
    with serve_in_thread(make(server_class, idle_timeout=0.1, max_line_length=8)) as server:
        with connect(server.server_address) as silent:
            assert recv_all(silent) == b""  # closed by the idle timeout
        with connect(server.server_address) as client:
            client.sendall(b"ok\n" + b"z" * 50 + b"\n")
            assert recv_all(client) == b"ok\n"  # then the long line ends the request


@pytest.mark.parametrize("server_class", [sockserve.ThreadingTCPServer,
                                          sockserve.ForkingTCPServer,
                                          sockserve.ThreadPoolTCPServer,
                                          sockserve.GreenTCPServer])
def test_reject_and_drain(server_class: type, caplog: pytest.LogCaptureFixture) -> None:
    server = make(server_class, max_connections=1, overload="reject", busy_reply=b"busy\n")
    with caplog.at_level(logging.WARNING, logger="sockserve.server"):
        with serve_in_thread(server):
            with connect(server.server_address) as first:
                first.sendall(b"in\n")
                assert first.recv(10) == b"in\n"
                with connect(server.server_address) as second:
                    assert recv_all(second) == b"busy\n"
                report = server.drain(0.1)  # first is idle: cut at the deadline
                assert recv_all(first) == b""
    assert (report.finished, report.cut) == (0, 1)
    assert server.statistics().rejected == 1


def test_prefork_workers_drain_within_the_graceful_timeout() -> None:
    server = make(sockserve.PreForkTCPServer, workers=1, drain_timeout=0.1)
    with connect(server.server_address) as idle:
        with serve_in_thread(server):
            idle.sendall(b"hi\n")
            assert idle.recv(10) == b"hi\n"
        # The worker cut its idle client itself and exited cleanly: nothing killed.
        assert recv_all(idle) == b""
    workers = server.statistics().workers
    assert workers is not None and workers.crashed == 0 and workers.exited == 1


def test_udp_models_share_the_packet_limit() -> None:
    class Length(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"%d" % len(self.packet))

    for server_class in (sockserve.UDPServer, sockserve.ThreadPoolUDPServer,
                         sockserve.PreForkUDPServer):
        server = type("S", (server_class,), {"max_packet_size": 10,
                                             "graceful_timeout": IO_TIMEOUT})(
            ("127.0.0.1", 0), Length)
        with serve_in_thread(server):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(IO_TIMEOUT)
                client.sendto(b"x" * 100, server.server_address)
                assert client.recv(10) == b"10"


class CloseItself(sockserve.StreamRequestHandler):
    """Closes its own socket, as some handlers written for the stdlib do."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())
        self.wfile.flush()
        self.request.close()


@pytest.mark.parametrize("server_class", [sockserve.TCPServer, sockserve.ThreadingTCPServer,
                                          sockserve.ThreadPoolTCPServer,
                                          sockserve.GreenTCPServer])
def test_a_handler_that_closes_its_socket_frees_its_connection_slot(
        server_class: type) -> None:
    server = type("Server", (server_class,), {"max_connections_per_ip": 1})(
        ("127.0.0.1", 0), CloseItself)
    with serve_in_thread(server):
        for n in range(3):  # each one after the last has ended
            with connect(server.server_address) as client:
                client.sendall(b"%d\n" % n)
                assert recv_all(client) == b"%d\n" % n
            wait_for(lambda: server.statistics().connections == 0, what="the slot freed")
    assert server.statistics().rejected == 0
