"""The green model: unchanged blocking handlers, every connection on one hub thread."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import sockserve
from sockserve.concurrency import green
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, client_ctx, connect, recv_all, wait_for
from tests.integration.test_one_model import LineEcho

pytest.importorskip("greenlet")


class RawEcho(sockserve.BaseRequestHandler):
    """Uses the socket itself, as many socketserver handlers do."""

    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


def make(handler: type, server_class: type = sockserve.GreenTCPServer,
         address: Any = ("127.0.0.1", 0), **settings: Any) -> Any:
    settings.setdefault("request_queue_size", 256)
    return type("Server", (server_class,), settings)(address, handler)


@pytest.mark.parametrize("handler", [LineEcho, RawEcho])
def test_many_connections_share_one_hub_thread(handler: type) -> None:
    """200 clients open at once, each answered in turn, all from one thread."""
    threads_before = threading.active_count()
    with serve_in_thread(make(handler)) as server:
        clients = [connect(server.server_address) for _ in range(200)]
        try:
            for number, client in enumerate(clients):  # all connected and waiting
                client.sendall(b"client %d\n" % number)
            for number, client in reversed(list(enumerate(clients))):
                expected = (b"CLIENT %d\n" if handler is LineEcho else b"client %d\n") % number
                assert client.recv(100) == expected
            # the serving loop and the hub: no thread per connection
            assert threading.active_count() - threads_before == 2
        finally:
            for client in clients:
                client.close()


@pytest.mark.parametrize("limit", [{"max_line_length": 1024}, {"read_timeout": 30.0},
                                   {"write_timeout": 30.0}])
def test_a_limit_without_an_idle_timeout_waits_as_long_as_it_must(
        limit: dict[str, float]) -> None:
    # A read with no idle limit waits "for ever" (a year), which is more than epoll
    # takes in one call (INT_MAX ms, about 24.8 days): the hub waits in shorter steps.
    with serve_in_thread(make(LineEcho, sockserve.GreenTCPServer, **limit)) as server, \
            connect(server.server_address) as client:
        for line in (b"one\n", b"two\n"):  # between them the handler waits
            client.sendall(line)
            assert client.recv(100) == line.upper()
        assert server.statistics().connections == 1


def test_large_replies_to_a_slow_reader_do_not_stop_the_others() -> None:
    """sendall() to a client that does not read waits in its greenlet only."""
    payload = os.urandom(4 << 20)

    class Big(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                self.wfile.write(payload if line == b"big\n" else line)

    with serve_in_thread(make(Big)) as server:
        with connect(server.server_address) as slow, connect(server.server_address) as quick:
            slow.sendall(b"big\n")  # its reply fills the socket buffers and waits
            quick.sendall(b"hello\nagain\n")
            quick.shutdown(socket.SHUT_WR)
            assert recv_all(quick) == b"hello\nagain\n"
            slow.shutdown(socket.SHUT_WR)
            assert recv_all(slow) == payload


def test_read1_returns_large_messages_whole_in_pieces() -> None:
    """The green rfile's read1() (which waits before it allocates) loses nothing."""
    message = os.urandom(300_000)

    class Read1Echo(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            while data := self.rfile.read1(65536):
                self.wfile.write(data)

    with serve_in_thread(make(Read1Echo)) as server, connect(server.server_address) as client:
        client.sendall(message)
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == message


@pytest.mark.parametrize("fault", [TimeoutError, RuntimeError])
def test_a_failing_connection_leaves_the_others_serving(
        fault: type, caplog: pytest.LogCaptureFixture) -> None:
    """A socket timeout or a crash ends that connection, as on a thread: logged, closed."""

    class Fragile(LineEcho):
        def handle(self) -> None:
            if self.rfile.readline() == b"fail\n":
                if fault is RuntimeError:
                    raise RuntimeError("boom")
                self.connection.settimeout(0.1)  # the next read times out
            super().handle()

    with caplog.at_level(logging.ERROR, logger="sockserve.server"):
        with serve_in_thread(make(Fragile)) as server:
            with connect(server.server_address) as failing, \
                    connect(server.server_address) as other:
                failing.sendall(b"fail\n")
                other.sendall(b"fine\nhi\n")
                assert other.recv(10) == b"HI\n"
                assert recv_all(failing) == b""
                other.sendall(b"still here\n")
                assert other.recv(20) == b"STILL HERE\n"
    assert any(record.exc_info and record.exc_info[0] is fault for record in caplog.records)


def test_a_failed_hub_ends_its_connections_and_a_new_hub_serves_the_next(
        caplog: pytest.LogCaptureFixture) -> None:
    """A bug in the hub: its connections end (handle_error(), closed, no longer
    counted open) instead of hanging, and later connections get a fresh hub."""
    with serve_in_thread(make(LineEcho)) as server:
        with connect(server.server_address) as waiting:
            waiting.sendall(b"hi\n")
            assert waiting.recv(10) == b"HI\n"
            hub = server.hub
            wait_for(lambda: any(sock._waiter is not None
                                 for sock in list(hub._sockets.values())),
                     what="the connection waiting on the hub")
            hub._timers.add(0.0, object())  # the bug: a timer whose waiter is no greenlet
            hub._wake()
            assert recv_all(waiting) == b""
        wait_for(lambda: server.statistics().connections == 0, what="the connection released")
        wait_for(lambda: not hub.alive, what="the failed hub's thread to end")
        with connect(server.server_address) as later:
            later.sendall(b"again\n")
            assert later.recv(10) == b"AGAIN\n"
        assert server.hub is not hub
    assert any(record.levelname == "CRITICAL" for record in caplog.records)
    assert any(record.exc_info and record.exc_info[0] is ConnectionAbortedError
               for record in caplog.records)


def test_socket_timeouts_and_non_blocking_calls_behave_as_on_a_plain_socket() -> None:
    seen: dict[str, Any] = {}
    ready, got_data, done = threading.Event(), threading.Event(), threading.Event()

    class Probe(sockserve.BaseRequestHandler):
        def handle(self) -> None:
            sock = self.request
            seen["initial"] = sock.gettimeout()
            sock.setblocking(False)
            seen["blocking"] = sock.getblocking()
            try:
                sock.recv(10)
            except BlockingIOError:
                seen["nonblocking"] = "would block"
            sock.settimeout(0.05)
            try:
                sock.recv(10)
            except TimeoutError:
                seen["timeout"] = "timed out"
            with pytest.raises(ValueError):
                sock.settimeout(-1)
            with pytest.raises(BlockingIOError):  # "has the peer closed?", never waiting
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            sock.settimeout(None)
            ready.set()
            seen["data"] = sock.recv(10)
            got_data.set()
            seen["waitall"] = sock.recv(6, socket.MSG_WAITALL)  # sent in two parts
            done.set()

    with serve_in_thread(make(Probe)) as server, connect(server.server_address) as client:
        assert ready.wait(IO_TIMEOUT)  # only now: the first reads must find nothing
        client.sendall(b"ok")
        assert got_data.wait(IO_TIMEOUT)
        client.sendall(b"abc")
        client.sendall(b"def")
        assert done.wait(IO_TIMEOUT)
    assert seen == {"initial": None, "blocking": False, "nonblocking": "would block",
                    "timeout": "timed out", "data": b"ok", "waitall": b"abcdef"}


def test_sendall_to_a_client_that_does_not_read_times_out(
        caplog: pytest.LogCaptureFixture) -> None:
    """The timeout covers the whole sendall(), as on a plain socket (Python 3.5+)."""
    finished = threading.Event()

    class Flood(sockserve.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(0.2)
            try:
                self.request.sendall(b"x" * (32 << 20))
            finally:
                finished.set()

    with caplog.at_level(logging.ERROR, logger="sockserve.server"):
        with serve_in_thread(make(Flood)) as server, connect(server.server_address):
            assert finished.wait(IO_TIMEOUT)
    assert any(record.exc_info and record.exc_info[0] is TimeoutError
               for record in caplog.records)


def test_shutdown_from_a_handler_does_not_deadlock() -> None:
    class Stopper(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            self.server.shutdown()
            self.wfile.write(b"stopping\n")

    server = make(Stopper)
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    try:
        with connect(server.server_address) as client:
            client.sendall(b"stop\n")
            assert recv_all(client) == b"stopping\n"
        loop.join(IO_TIMEOUT)
        assert not loop.is_alive()
    finally:
        server.server_close()


def test_server_close_waits_for_open_connections_then_stops_the_hub() -> None:
    server = make(LineEcho)
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    client = connect(server.server_address)
    try:
        client.sendall(b"a\n")
        assert client.recv(10) == b"A\n"
        server.shutdown()  # the loop stops; the connection is still served, as a thread
        loop.join(IO_TIMEOUT)
        client.sendall(b"b\n")
        assert client.recv(10) == b"B\n"
        closer = threading.Thread(target=server.server_close)
        closer.start()
        closer.join(0.1)
        assert closer.is_alive()  # block_on_close: waits for the open connection
        client.sendall(b"c\n")
        assert client.recv(10) == b"C\n"
    finally:
        client.close()
    closer.join(IO_TIMEOUT)
    assert not closer.is_alive() and not server.hub.alive


def test_drain_cuts_idle_connections_at_the_deadline() -> None:
    server = make(LineEcho)
    with serve_in_thread(server):
        with connect(server.server_address) as idle, connect(server.server_address) as busy:
            busy.sendall(b"x\n")
            assert busy.recv(10) == b"X\n"
            report = server.drain(0.1)
            assert recv_all(idle) == b"" and recv_all(busy) == b""
    assert (report.open, report.cut) == (2, 2)


@pytest.fixture
def tls_pair() -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    yield server_ctx, client_ctx(ca)


def test_tls_connections_are_served_on_the_hub(
        tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client = tls_pair
    message = os.urandom(200_000)  # several TLS records each way

    class Echo(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"%d\n" % len(self.rfile.readline()))
            while data := self.rfile.read1(65536):
                self.wfile.write(data)

    with serve_in_thread(make(Echo, ssl_context=server_ctx)) as server:
        tls_clients = [client.wrap_socket(connect(server.server_address),
                                          server_hostname="localhost") for _ in range(3)]
        try:
            for tls in tls_clients:
                tls.sendall(b"hello\n")
            for tls in tls_clients:
                assert tls.recv(10) == b"6\n"
            tls = tls_clients[0]
            tls.sendall(message)
            received = b""
            while len(received) < len(message):
                received += tls.recv(65536)
            assert received == message
        finally:
            for tls in tls_clients:
                tls.close()


def test_tls_timeouts_and_non_blocking_reads_behave_as_on_an_ssl_socket(
        tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """Non-blocking: the ssl module's SSLWantReadError.  With a timeout: one deadline
    for the whole read, even while a partial record trickles in (slowloris on TLS)."""
    server_ctx, client = tls_pair
    seen: dict[str, Any] = {}
    done = threading.Event()

    class Probe(sockserve.BaseRequestHandler):
        def handle(self) -> None:
            sock = self.request
            sock.setblocking(False)
            try:
                sock.recv(10)
            except ssl.SSLWantReadError:
                seen["nonblocking"] = "SSLWantReadError"
            sock.settimeout(0.5)
            try:
                sock.recv(10)
            except Exception as exc:
                seen["trickled"] = type(exc).__name__
            finally:
                done.set()

    with serve_in_thread(make(Probe, ssl_context=server_ctx)) as server:
        with client.wrap_socket(connect(server.server_address),
                                server_hostname="localhost") as tls:
            # A record trickled in raw, a byte at a time: a deadline per wait would see
            # all 69 bytes and fail on the bogus record (SSLError) 7 s later.
            record = b"\x17\x03\x03\x00\x40" + bytes(64)  # application data, 64 bytes
            for byte in record:
                if done.wait(0.1):  # pacing the trickle, and its end
                    break
                socket.socket.send(tls, bytes([byte]))
            assert done.wait(IO_TIMEOUT)
    assert seen == {"nonblocking": "SSLWantReadError", "trickled": "TimeoutError"}


def test_tls_unwrap_waits_for_the_peer_cooperatively(
        tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """unwrap() (the close_notify exchange) waits on the hub, as it would block."""
    server_ctx, client = tls_pair

    class Unwrap(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())
            plain = self.request.unwrap()  # waits for the client's close_notify
            plain.sendall(b"in the clear\n")

    with serve_in_thread(make(Unwrap, ssl_context=server_ctx)) as server:
        with client.wrap_socket(connect(server.server_address),
                                server_hostname="localhost") as tls:
            tls.sendall(b"secret\n")
            assert tls.recv(10) == b"secret\n"
            plain = tls.unwrap()
            assert recv_all(plain) == b"in the clear\n"


def test_unix_stream_server() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "green.sock")
        with serve_in_thread(make(LineEcho, sockserve.GreenUnixStreamServer, path)):
            with connect(path, socket.AF_UNIX) as client:
                client.sendall(b"unix\n")
                client.shutdown(socket.SHUT_WR)
                assert recv_all(client) == b"UNIX\n"


def test_sendfile_is_cooperative() -> None:
    content = os.urandom(1 << 20)

    class FileSender(sockserve.BaseRequestHandler):
        def handle(self) -> None:
            with tempfile.TemporaryFile() as file:
                file.write(content)
                file.seek(0)
                assert self.request.sendfile(file) == len(content)

    with serve_in_thread(make(FileSender)) as server, connect(server.server_address) as client:
        assert recv_all(client) == content


def test_a_duplicated_socket_cooperates_too() -> None:
    class DupEcho(sockserve.BaseRequestHandler):
        def handle(self) -> None:
            with self.request.dup() as copy:
                assert copy.gettimeout() == self.request.gettimeout()
                while data := copy.recv(4096):
                    copy.sendall(data)

    with serve_in_thread(make(DupEcho)) as server:
        with connect(server.server_address) as first, \
                connect(server.server_address) as second:
            second.sendall(b"second")  # both wait in a dup's recv(), on one thread
            first.sendall(b"first")
            assert first.recv(10) == b"first" and second.recv(10) == b"second"


def test_files_keep_working_after_the_socket_is_closed() -> None:
    """close() with makefile() files open defers the real close, as on a plain socket."""
    closed = threading.Event()

    class CloseFirst(sockserve.BaseRequestHandler):
        def handle(self) -> None:
            reader = self.request.makefile("rb")
            writer = self.request.makefile("wb", buffering=0)
            self.request.close()
            closed.set()
            writer.write(reader.readline().upper())  # waits on the hub, not for ever
            reader.close()
            writer.close()

    with serve_in_thread(make(CloseFirst)) as server, connect(server.server_address) as client:
        assert closed.wait(IO_TIMEOUT)
        client.sendall(b"still served\n")
        assert recv_all(client) == b"STILL SERVED\n"


def test_drain_cuts_a_connection_still_waiting_for_the_hub() -> None:
    """A connection accepted while every handler holds the hub is cut all the same."""
    release = threading.Event()

    class Hog(LineEcho):
        def handle(self) -> None:
            release.wait(IO_TIMEOUT)  # blocks the whole hub (what the docs warn about)
            super().handle()

    server = make(Hog)
    with serve_in_thread(server):
        with connect(server.server_address) as first, connect(server.server_address) as second:
            wait_for(lambda: server.statistics().connections == 2, what="both accepted")
            report = server.drain(0.1)
            release.set()
            assert recv_all(second) == b"" and recv_all(first) == b""
    assert (report.open, report.cut) == (2, 2)


def test_handle_request_hands_one_connection_to_the_hub() -> None:
    """As with ThreadingMixIn, handle_request() returns once the request is handed on."""
    with make(LineEcho) as server, connect(server.server_address) as client:
        server.handle_request()
        client.sendall(b"once\n")
        assert client.recv(10) == b"ONCE\n"


def test_datagram_servers_are_refused() -> None:
    class GreenUDP(sockserve.GreenMixIn, sockserve.UDPServer):
        pass

    with GreenUDP(("127.0.0.1", 0), sockserve.DatagramRequestHandler) as server:
        with pytest.raises(TypeError, match="stream"):
            server.serve_forever()


def test_missing_greenlet_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(green, "greenlet", None)
    with make(LineEcho) as server:
        with pytest.raises(RuntimeError, match=r"sockserve\[green\]"):
            server.serve_forever()
