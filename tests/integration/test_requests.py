"""handle_request(), verify_request(), handler errors and the request handlers' files."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

import sockserve
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, connect, recv_all, wait_for


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class Boom(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        if self.rfile.readline() == b"boom\n":
            raise ValueError("handler failed on purpose")
        self.wfile.write(b"fine\n")


def test_handle_request_serves_one_request() -> None:
    with sockserve.TCPServer(("127.0.0.1", 0), Echo) as server:
        with connect(server.server_address) as client:
            client.sendall(b"one\n")
            server.handle_request()
            assert recv_all(client) == b"one\n"


@pytest.mark.parametrize("timeout_on", ["server", "socket"])
def test_handle_request_times_out(timeout_on: str) -> None:
    timeouts: list[bool] = []

    class Server(sockserve.TCPServer):
        def handle_timeout(self) -> None:
            timeouts.append(True)

    with Server(("127.0.0.1", 0), Echo) as server:
        if timeout_on == "server":
            server.timeout = 0.05
        else:
            server.socket.settimeout(0.05)
        assert server.handle_request() is None
    assert timeouts == [True]


def test_verify_request_rejects_without_running_the_handler() -> None:
    ran: list[bool] = []

    class Handler(sockserve.BaseRequestHandler):
        def handle(self) -> None:
            ran.append(True)

    class Picky(sockserve.TCPServer):
        def verify_request(self, request: object, client_address: object) -> bool:
            return False

    with serve_in_thread(Picky(("127.0.0.1", 0), Handler)) as server:
        with connect(server.server_address) as client:
            assert recv_all(client) == b""  # closed unanswered
    assert ran == []


@pytest.mark.parametrize("server_class", [sockserve.TCPServer, sockserve.ThreadingTCPServer])
def test_handler_error_is_logged_and_the_server_keeps_serving(
        server_class: type[sockserve.TCPServer], caplog: pytest.LogCaptureFixture) -> None:
    with serve_in_thread(server_class(("127.0.0.1", 0), Boom)) as server:
        with caplog.at_level(logging.ERROR, logger="sockserve.server"):
            with connect(server.server_address) as client:
                client.sendall(b"boom\n")
                assert recv_all(client) == b""
                client_port = client.getsockname()[1]
            with connect(server.server_address) as client:
                client.sendall(b"ok\n")
                assert recv_all(client) == b"fine\n"
    [record] = [r for r in caplog.records if r.name == "sockserve.server"]
    assert str(client_port) in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError


def test_unconfigured_logging_still_reaches_stderr_with_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    server = sockserve.TCPServer(("127.0.0.1", 0), Boom, bind_and_activate=False)
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # as in a program that never configured logging
    try:
        try:
            raise ValueError("reported")
        except ValueError:
            server.handle_error(None, ("127.0.0.1", 4242))
    finally:
        root.handlers[:] = saved
        server.server_close()
    err = capsys.readouterr().err
    assert "('127.0.0.1', 4242)" in err and "ValueError: reported" in err


def test_overridden_handle_error_is_used() -> None:
    seen: list[object] = []

    class Server(sockserve.TCPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            seen.append(client_address)

    with serve_in_thread(Server(("127.0.0.1", 0), Boom)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"boom\n")
            assert recv_all(client) == b""
            address = client.getsockname()
    assert seen == [address]


def test_finish_runs_when_handle_raises_but_not_when_setup_raises() -> None:
    calls: list[str] = []

    class Handler(sockserve.BaseRequestHandler):
        def setup(self) -> None:
            calls.append("setup")
            if self.request == "bad setup":
                raise RuntimeError

        def handle(self) -> None:
            calls.append("handle")
            raise KeyError

        def finish(self) -> None:
            calls.append("finish")

    with pytest.raises(KeyError):
        Handler("bad handle", None, None)
    with pytest.raises(RuntimeError):
        Handler("bad setup", None, None)
    assert calls == ["setup", "handle", "finish", "setup"]


def test_unbuffered_wfile_puts_each_write_on_the_wire_at_once() -> None:
    reply_seen = threading.Event()
    results: list[int] = []

    class Handler(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            results.append(self.wfile.write(b"early\n"))
            reply_seen.wait(IO_TIMEOUT)  # the client reads it before handle() returns
            results.append(reply_seen.is_set())

    with serve_in_thread(sockserve.TCPServer(("127.0.0.1", 0), Handler)) as server:
        with connect(server.server_address) as client:
            assert client.makefile("rb").readline() == b"early\n"
            reply_seen.set()
            assert recv_all(client) == b""
    assert results == [6, True]


def test_buffered_wfile_is_flushed_by_finish() -> None:
    class Handler(sockserve.StreamRequestHandler):
        wbufsize = 1 << 16
        disable_nagle_algorithm = True

        def handle(self) -> None:
            for word in (b"a", b"b", b"c"):
                self.wfile.write(word)
            assert self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    with serve_in_thread(sockserve.TCPServer(("127.0.0.1", 0), Handler)) as server:
        with connect(server.server_address) as client:
            assert recv_all(client) == b"abc"


def test_unbuffered_rfile_reads_what_arrives() -> None:
    class Handler(sockserve.StreamRequestHandler):
        rbufsize = 0

        def handle(self) -> None:
            self.wfile.write(self.rfile.read(3))

    with serve_in_thread(sockserve.TCPServer(("127.0.0.1", 0), Handler)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"xyz")
            assert recv_all(client) == b"xyz"


def test_stream_handler_timeout_ends_a_silent_client(caplog: pytest.LogCaptureFixture) -> None:
    class Slow(sockserve.StreamRequestHandler):
        timeout = 0.05

        def handle(self) -> None:
            self.rfile.readline()

    with caplog.at_level(logging.ERROR, logger="sockserve.server"):
        with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), Slow)) as server:
            with connect(server.server_address) as client:
                assert recv_all(client) == b""  # the server gave up and closed
    [record] = caplog.records
    assert record.exc_info is not None and isinstance(record.exc_info[1], TimeoutError)


@pytest.mark.parametrize("server_class", [sockserve.UDPServer, sockserve.ThreadingUDPServer,
                                          sockserve.ForkingUDPServer])
def test_datagram_reply_is_sent_in_finish(server_class: type[sockserve.UDPServer]) -> None:
    class Upper(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.read().upper())
            self.wfile.write(b"!")

    with serve_in_thread(server_class(("127.0.0.1", 0), Upper)) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(IO_TIMEOUT)
            for word in (b"one", b"two"):
                client.sendto(word, server.server_address)
                assert client.recv(100) == word.upper() + b"!"


def test_mix_in_listed_after_the_server_class_warns() -> None:
    with pytest.warns(RuntimeWarning, match="put the mix-in first"):
        class Wrong(sockserve.TCPServer, sockserve.ThreadingMixIn):
            pass


class ClosesItself(sockserve.TCPServer):
    """close_request() as the stdlib's own, without calling the base one."""

    max_connections_per_ip = 1
    timeout = IO_TIMEOUT

    def close_request(self, request: socket.socket) -> None:
        request.close()


def test_an_overridden_close_request_still_frees_the_connections_place() -> None:
    with ClosesItself(("127.0.0.1", 0), Echo) as server:
        for n in range(3):
            with connect(server.server_address) as client:
                client.sendall(b"%d\n" % n)
                server.handle_request()
                assert recv_all(client) == b"%d\n" % n  # not refused: one per IP
        assert server.statistics().connections == 0
        assert server.statistics().rejected == 0


def test_a_failing_verify_request_is_reported_and_the_server_keeps_serving(
        caplog: pytest.LogCaptureFixture) -> None:
    class Picky(sockserve.ThreadingTCPServer):
        def verify_request(self, request: socket.socket, client_address: object) -> bool:
            if request.recv(5, socket.MSG_PEEK) == b"boom\n":
                raise RuntimeError("verify_request failed on purpose")
            return True

    with caplog.at_level(logging.ERROR, logger="sockserve.server"):
        with serve_in_thread(Picky(("127.0.0.1", 0), Echo)) as server:
            with connect(server.server_address) as client:
                client.sendall(b"boom\n")
                assert recv_all(client) == b""  # closed, not held by the server
            with connect(server.server_address) as client:
                client.sendall(b"fine\n")
                assert recv_all(client) == b"fine\n"
            # Released just after the client saw its end (shutdown_request()).
            wait_for(lambda: server.statistics().connections == 0, what="both released")
    assert "verify_request failed on purpose" in caplog.text


def test_handle_request_at_max_connections_waits_instead_of_rejecting() -> None:
    release = threading.Event()

    class Held(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line == b"hold\n":
                self.wfile.write(b"held\n")
                self.wfile.flush()
                release.wait(IO_TIMEOUT)
            self.wfile.write(line.upper())

    class Server(sockserve.ThreadingTCPServer):
        max_connections = 1  # overload "pause": the next client waits in the backlog
        timeout = IO_TIMEOUT

    with Server(("127.0.0.1", 0), Held) as server:
        with connect(server.server_address) as first, \
                connect(server.server_address) as second:
            first.sendall(b"hold\n")
            server.handle_request()
            assert first.recv(10) == b"held\n"
            second.sendall(b"next\n")
            waiting = threading.Thread(target=server.handle_request)
            waiting.start()
            release.set()  # the first connection ends: room for the second
            waiting.join(IO_TIMEOUT)
            assert recv_all(second) == b"NEXT\n"
            assert recv_all(first) == b"HOLD\n"
        assert server.statistics().rejected == 0
