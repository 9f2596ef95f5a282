"""Graceful drain: stop accepting, finish what was accepted, cut what is left at the deadline."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import sockserve
from sockserve.stats import DrainReport
from tests.helpers import IO_TIMEOUT, connect, recv_all, wait_for


class TwoLines(sockserve.StreamRequestHandler):
    """A request in two parts, so the test decides when it is in flight."""

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"started\n")
        self.wfile.write(self.rfile.readline().upper())


def serve(server: sockserve.BaseServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def drain_in_thread(server: sockserve.BaseServer, timeout: float,
                    **kwargs: Any) -> tuple[threading.Thread, list[DrainReport]]:
    reports: list[DrainReport] = []
    thread = threading.Thread(target=lambda: reports.append(server.drain(timeout, **kwargs)))
    thread.start()
    return thread, reports


def test_in_flight_requests_finish_within_the_deadline() -> None:
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), TwoLines)
    loop = serve(server)
    clients = [connect(server.server_address) for _ in range(3)]
    try:
        for client in clients:
            client.sendall(b"one\n")
            assert client.makefile("rb").readline() == b"started\n"
        drainer, reports = drain_in_thread(server, IO_TIMEOUT)
        assert server.draining.wait(IO_TIMEOUT)
        for client in clients:
            client.sendall(b"two\n")
            assert recv_all(client) == b"TWO\n"  # nothing in flight is lost
        drainer.join(IO_TIMEOUT)
        loop.join(IO_TIMEOUT)
        assert not loop.is_alive()
    finally:
        for client in clients:
            client.close()
        server.server_close()
    assert reports == [DrainReport(open=3, finished=3, cut=0)]


def test_stuck_handlers_are_cut_at_the_deadline() -> None:
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), TwoLines)
    serve(server)
    try:
        with connect(server.server_address) as client:
            client.sendall(b"one\n")
            assert client.makefile("rb").readline() == b"started\n"
            report = server.drain(0.2)  # the client never sends its second line
            assert recv_all(client) == b""  # the handler saw EOF and ended
    finally:
        server.server_close()
    assert report == DrainReport(open=1, finished=0, cut=1)


@pytest.mark.parametrize("backlog", [False, True])
def test_a_serial_server_busy_in_a_stuck_handler_is_cut_at_the_deadline(backlog: bool) -> None:
    # Its loop is the handler: it cannot stop before the connection ends, so the
    # deadline must reach the connection while the drain waits for the loop.  With
    # backlog=True the loop then takes the backlog, past the deadline: a silent client
    # there is cut at once, or it would hold the drain for ever.
    server = sockserve.TCPServer(("127.0.0.1", 0), TwoLines)
    loop = serve(server)
    try:
        with connect(server.server_address) as busy, \
                connect(server.server_address) as waiting:  # in the backlog, silent
            busy.sendall(b"one\n")
            assert busy.makefile("rb").readline() == b"started\n"
            drainer, reports = drain_in_thread(server, 0.2, backlog=backlog)
            assert recv_all(busy) == b""  # cut: the handler saw EOF and ended
            if backlog:
                assert recv_all(waiting) == b""
            drainer.join(IO_TIMEOUT)
            loop.join(IO_TIMEOUT)
            assert not loop.is_alive()
    finally:
        server.server_close()
    expected = 2 if backlog else 1
    assert reports == [DrainReport(open=expected, finished=0, cut=expected)]


def test_server_close_with_drain_timeout_does_not_hang_on_idle_clients() -> None:
    class Echo(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                self.wfile.write(line)

    class Server(sockserve.ThreadingTCPServer):
        drain_timeout = 0.2

    server = Server(("127.0.0.1", 0), Echo)
    loop = serve(server)
    with connect(server.server_address) as idle:
        idle.sendall(b"hi\n")
        assert idle.recv(10) == b"hi\n"  # keep-alive: connected, now idle
        server.shutdown()
        loop.join(IO_TIMEOUT)
        server.server_close()  # joins handler threads: only possible because it cuts
        assert recv_all(idle) == b""
    assert server.statistics().connections == 0


def test_handlers_can_watch_the_draining_flag() -> None:
    class Patient(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"waiting\n")
            if self.server.draining.wait(IO_TIMEOUT):
                self.wfile.write(b"bye\n")

    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), Patient)
    serve(server)
    try:
        with connect(server.server_address) as client:
            assert client.makefile("rb").readline() == b"waiting\n"
            report = server.drain(IO_TIMEOUT)
            assert recv_all(client) == b"bye\n"
    finally:
        server.server_close()
    assert report == DrainReport(open=1, finished=1, cut=0)


def test_drain_can_serve_the_kernel_backlog_too() -> None:
    class FirstWaits(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line == b"first\n":
                self.wfile.write(b"holding\n")
                self.server.draining.wait(IO_TIMEOUT)  # holds the serial loop
            self.wfile.write(line.upper())

    for backlog in (True, False):
        server = sockserve.TCPServer(("127.0.0.1", 0), FirstWaits)
        loop = serve(server)
        first = connect(server.server_address)
        first.sendall(b"first\n")
        assert first.recv(8) == b"holding\n"
        waiting = [connect(server.server_address) for _ in range(2)]
        try:
            for n, client in enumerate(waiting):
                client.sendall(b"late %d\n" % n)
            server.drain(IO_TIMEOUT, backlog=backlog)
            loop.join(IO_TIMEOUT)
            assert recv_all(first) == b"FIRST\n"
            server.server_close()  # the backlog not served is reset now
            for n, client in enumerate(waiting):
                try:
                    reply = recv_all(client)
                except ConnectionResetError:
                    reply = b""
                assert reply == (b"LATE %d\n" % n if backlog else b"")
        finally:
            for client in (first, *waiting):
                client.close()
            server.server_close()


def test_drain_cuts_requests_that_only_look_like_sockets() -> None:
    # get_request() may return any object that behaves like the socket (the stdlib
    # asks no more); cutting it must go through its own shutdown().
    class Wrapped:
        def __init__(self, sock: Any) -> None:
            self._sock = sock

        def __getattr__(self, name: str) -> Any:
            return getattr(self._sock, name)

    class Hold(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"held\n")
            self.rfile.read()

    class Server(sockserve.ThreadingTCPServer):
        def get_request(self) -> tuple[Any, Any]:
            sock, address = super().get_request()
            return Wrapped(sock), address

    server = Server(("127.0.0.1", 0), Hold)
    loop = serve(server)
    try:
        with connect(server.server_address) as client:
            assert client.recv(100) == b"held\n"
            assert server.drain(0.1) == DrainReport(open=1, finished=0, cut=1)
            assert recv_all(client) == b""
    finally:
        loop.join(IO_TIMEOUT)
        server.server_close()


def test_draining_is_cleared_when_serving_starts_again() -> None:
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), sockserve.StreamRequestHandler)
    with server:
        loop = threading.Thread(target=server.serve_forever, daemon=True)
        loop.start()
        wait_for(server.is_serving, what="serving")
        server.drain(0.1)
        loop.join(IO_TIMEOUT)
        assert server.draining.is_set()
        again = threading.Thread(target=server.serve_forever, daemon=True)
        again.start()
        wait_for(server.is_serving, what="serving again")
        assert not server.draining.is_set()
        server.shutdown()
        again.join(IO_TIMEOUT)


def test_a_drain_with_backlog_does_not_make_a_later_shutdown_serve_the_backlog() -> None:
    release = threading.Event()
    served: list[bytes] = []

    class Holds(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            served.append(self.rfile.readline())
            self.wfile.write(b"in\n")
            self.wfile.flush()
            release.wait(IO_TIMEOUT)

    server = sockserve.TCPServer(("127.0.0.1", 0), Holds)
    try:
        loop = serve(server)
        server.drain(IO_TIMEOUT, backlog=True)  # nothing waits: a drain like any other
        loop.join(IO_TIMEOUT)
        loop = serve(server)
        with connect(server.server_address) as first, \
                connect(server.server_address) as waiting:
            first.sendall(b"first\n")
            assert first.recv(10) == b"in\n"  # the serial loop is held
            waiting.sendall(b"late\n")
            stopper = threading.Thread(target=server.shutdown)
            stopper.start()
            wait_for(lambda: not server.is_serving(), what="shutdown() to be asked")
            release.set()
            stopper.join(IO_TIMEOUT)
            loop.join(IO_TIMEOUT)
        assert served == [b"first\n"]
    finally:
        release.set()
        server.server_close()


def test_drain_serves_the_backlog_of_a_descriptor_above_1023() -> None:
    # select() takes no descriptor past FD_SETSIZE (1024); a busy process reaches it.
    import os
    import resource
    import socket

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= 1100:
        pytest.skip("needs a descriptor limit above 1100")
    low = socket.create_server(("127.0.0.1", 0))
    high_fd = os.dup2(low.fileno(), 1100, inheritable=False)
    low.close()
    release = threading.Event()

    class FirstWaits(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            self.wfile.write(line.upper())
            self.wfile.flush()
            if line == b"first\n":
                release.wait(IO_TIMEOUT)  # holds the serial loop

    server = sockserve.TCPServer.from_socket(socket.socket(fileno=high_fd), FirstWaits)
    try:
        loop = serve(server)
        with connect(server.server_address) as first, \
                connect(server.server_address) as waiting:
            first.sendall(b"first\n")
            assert first.recv(10) == b"FIRST\n"
            waiting.sendall(b"late\n")
            drainer = threading.Thread(target=server.drain, args=(IO_TIMEOUT,),
                                       kwargs={"backlog": True})
            drainer.start()
            wait_for(lambda: not server.is_serving(), what="the drain to begin")
            release.set()
            assert recv_all(waiting) == b"LATE\n"
            drainer.join(IO_TIMEOUT)
            loop.join(IO_TIMEOUT)
    finally:
        release.set()
        server.server_close()
