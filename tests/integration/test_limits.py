"""Limits and timeouts: each triggered by a real client, others served meanwhile."""

from __future__ import annotations

import errno
import fcntl
import logging
import socket
import ssl
import sys
import termios
import threading
import time
from typing import Any

import pytest

import sockserve
from sockserve._streams import StreamLimits, guarded_files
from sockserve.errors import LineTooLong
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, client_ctx, connect, recv_all, wait_for


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


def make(handler: type = Echo, server_class: type = sockserve.ThreadingTCPServer,
         **settings: Any) -> Any:
    return type("Server", (server_class,), settings)(("127.0.0.1", 0), handler)


def echo_once(address: Any, line: bytes = b"ping\n") -> bytes:
    """The reply to *line*; b"" also when the server closed the connection before
    reading all of it (the kernel then resets it)."""
    with connect(address) as client:
        try:
            client.sendall(line)
            client.shutdown(socket.SHUT_WR)
            return recv_all(client)
        except (ConnectionResetError, BrokenPipeError):
            return b""
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:  # reset before our shutdown()
                return b""
            raise


def handler_errors(caplog: pytest.LogCaptureFixture) -> list[BaseException | None]:
    return [r.exc_info[1] if r.exc_info else None for r in caplog.records
            if r.name == "sockserve.server" and r.levelno == logging.ERROR]


def test_max_connections_pause_serves_everyone_in_turn() -> None:
    release = threading.Event()
    running, most = [0], [0]
    lock = threading.Lock()

    class Hold(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            self.wfile.write(self.rfile.readline())
            release.wait(IO_TIMEOUT)
            with lock:
                running[0] -= 1

    server = make(Hold, max_connections=2, request_queue_size=16)
    clients = []
    with serve_in_thread(server):
        try:
            for n in range(5):
                clients.append(connect(server.server_address))
                clients[-1].sendall(b"%d\n" % n)
            for client in clients[:2]:
                assert client.recv(10)  # two served at once...
            assert server.statistics().connections == 2  # ...the rest wait in the backlog
            release.set()
            assert [recv_all(c) for c in clients[2:]] == [b"2\n", b"3\n", b"4\n"]
        finally:
            for client in clients:
                client.close()
    assert most[0] == 2 and server.statistics().rejected == 0


def test_max_connections_reject_answers_busy() -> None:
    release = threading.Event()

    class Hold(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"in\n")
            release.wait(IO_TIMEOUT)

    server = make(Hold, max_connections=1, overload="reject", busy_reply=b"busy\n")
    with serve_in_thread(server):
        with connect(server.server_address) as first:
            assert first.recv(10) == b"in\n"
            with connect(server.server_address) as second:
                assert recv_all(second) == b"busy\n"
            release.set()
    assert server.statistics().rejected == 1


def test_max_connections_per_ip() -> None:
    release = threading.Event()

    class Hold(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"in\n")
            release.wait(IO_TIMEOUT)

    server = make(Hold, max_connections_per_ip=1)
    with serve_in_thread(server):
        with connect(server.server_address) as first:
            assert first.recv(10) == b"in\n"
            with connect(server.server_address) as same_ip:
                assert recv_all(same_ip) == b""
            with socket.create_connection(server.server_address, timeout=IO_TIMEOUT,
                                          source_address=("127.0.0.2", 0)) as other_ip:
                assert other_ip.recv(10) == b"in\n"
                release.set()
    assert server.statistics().rejected == 1


def test_idle_timeout_closes_a_silent_connection(caplog: pytest.LogCaptureFixture) -> None:
    with serve_in_thread(make(idle_timeout=0.1)) as server:
        with connect(server.server_address) as silent:
            assert recv_all(silent) == b""
        assert echo_once(server.server_address) == b"ping\n"
    assert any(isinstance(e, TimeoutError) for e in handler_errors(caplog))


class UnbufferedEcho(Echo):
    rbufsize = 0  # readline() reads a byte at a time: one deadline for the whole line


@pytest.mark.parametrize("handler", [Echo, UnbufferedEcho])
def test_read_timeout_stops_a_slowloris(caplog: pytest.LogCaptureFixture,
                                        handler: type) -> None:
    # No idle timeout: only the read timeout can end a request trickling in.
    with serve_in_thread(make(handler, read_timeout=0.3)) as server:
        with connect(server.server_address) as slow:
            closed = False
            for byte in b"GET /" * 40:  # 200 bytes, one per 20 ms: 4 s if unchecked
                try:
                    slow.send(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                time.sleep(0.02)  # the attack's pacing, not synchronisation
            else:
                closed = recv_all(slow) == b""
            assert closed
            assert echo_once(server.server_address) == b"ping\n"
    errors = handler_errors(caplog)
    assert any(isinstance(e, TimeoutError) and "read timeout" in str(e) for e in errors)


def test_write_timeout_ends_a_client_that_does_not_read(
        caplog: pytest.LogCaptureFixture) -> None:
    done = threading.Event()

    class Flood(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            try:
                self.wfile.write(b"x" * (64 << 20))
            finally:
                done.set()

    with serve_in_thread(make(Flood, write_timeout=0.2)) as server:
        with connect(server.server_address):  # never reads
            assert done.wait(IO_TIMEOUT)
    assert any(isinstance(e, TimeoutError) for e in handler_errors(caplog))


def test_connection_lifetime_ends_even_a_busy_client(caplog: pytest.LogCaptureFixture) -> None:
    with serve_in_thread(make(connection_lifetime=0.3)) as server:
        with connect(server.server_address) as client:
            replies = client.makefile("rb")
            with pytest.raises((AssertionError, ConnectionError)):
                for _ in range(200):  # 4 s of activity if unchecked
                    client.sendall(b"x\n")
                    assert replies.readline() == b"x\n"
                    time.sleep(0.02)  # pacing the client's activity
            replies.close()
    assert any("lifetime" in str(e) for e in handler_errors(caplog))


def test_max_line_length(caplog: pytest.LogCaptureFixture) -> None:
    with serve_in_thread(make(max_line_length=16)) as server:
        assert echo_once(server.server_address, b"x" * 15 + b"\n") == b"x" * 15 + b"\n"
        assert echo_once(server.server_address, b"y" * 100 + b"\n") == b""
    [error] = handler_errors(caplog)
    assert isinstance(error, LineTooLong) and isinstance(error, ValueError)


def test_limits_do_not_change_unlimited_servers() -> None:
    class Files(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()  # closing with unread data would reset the connection
            self.wfile.write(type(self.rfile).__name__.encode())

    with serve_in_thread(make(Files)) as server:
        assert echo_once(server.server_address) == b"BufferedReader"


def test_oversized_datagrams_are_dropped_logged_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    class Length(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"%d" % len(self.packet))

    for drop in (False, True):
        server = make(Length, sockserve.UDPServer, max_packet_size=100,
                      drop_oversized_packets=drop)
        with serve_in_thread(server):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(IO_TIMEOUT)
                client.sendto(b"x" * 500, server.server_address)
                if drop:
                    wait_for(lambda: server.statistics().oversized == 1, what="the drop")
                else:
                    assert client.recv(10) == b"100"  # the stdlib's truncation
                client.sendto(b"x" * 50, server.server_address)
                assert client.recv(10) == b"50"
    drops = [r.getMessage() for r in caplog.records if "max_packet_size" in r.getMessage()]
    assert len(drops) == 1 and drops[0].startswith("datagram from ('127.0.0.1', "), drops
    assert drops[0].endswith(" longer than max_packet_size (100 bytes): dropped"), drops


@pytest.mark.parametrize("size", [-1, 1.5])
def test_a_max_packet_size_that_is_no_size_is_refused_before_serving(size: Any) -> None:
    from sockserve import aio

    for server_class in (sockserve.UDPServer, aio.AsyncUDPServer):
        with make(sockserve.DatagramRequestHandler if server_class is sockserve.UDPServer
                  else aio.AsyncDatagramRequestHandler, server_class,
                  max_packet_size=size) as server:
            with pytest.raises(ValueError, match="max_packet_size"):
                server.serve_forever()


# -- the guarded rfile/wfile (any limit set) behave as socket.makefile()'s ------------

def limited(handler: type, **settings: Any) -> Any:
    settings.setdefault("idle_timeout", 30.0)  # any limit: the guarded files
    return serve_in_thread(make(handler, **settings))


def test_an_unbuffered_rfile_leaves_what_follows_a_line_in_the_socket() -> None:
    class Tunnel(sockserve.StreamRequestHandler):
        rbufsize = 0  # as http.server's CGI handler, which hands the rest to a script

        def handle(self) -> None:
            self.rfile.readline()
            self.request.sendall(self.request.recv(100))

    with limited(Tunnel, max_line_length=100) as server, connect(server.server_address) as c:
        c.sendall(b"CONNECT\nraw bytes")
        assert c.recv(100) == b"raw bytes"


def unread(sock: socket.socket) -> int:
    """How many bytes wait unread in *sock*'s receive queue."""
    return int.from_bytes(fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4), sys.byteorder)


def test_an_unbuffered_readline_takes_a_line_in_pieces_and_nothing_after_it() -> None:
    # It peeks for the newline and takes only up to it: a line that arrives in pieces
    # is put together, and what follows stays in the socket.
    ours, peer = socket.socketpair()
    with ours, peer:
        rfile, _ = guarded_files(ours, StreamLimits(idle_timeout=IO_TIMEOUT), 0, 0)
        lines: list[bytes] = []
        peer.sendall(b"ab")
        reader = threading.Thread(target=lambda: lines.append(rfile.readline()))
        reader.start()
        wait_for(lambda: unread(ours) == 0, what="the reader to take the first piece")
        peer.sendall(b"c\nabcdef\nrest")
        reader.join(IO_TIMEOUT)
        assert lines == [b"abc\n"]
        assert rfile.readline(3) == b"abc" and rfile.readline() == b"def\n"
        assert ours.recv(100) == b"rest"
        peer.sendall(b"no newline")
        peer.shutdown(socket.SHUT_WR)
        assert rfile.readline() == b"no newline" and rfile.readline() == b""


def test_an_unbuffered_rfile_over_tls_reads_a_line_and_nothing_after_it(
        ca: Any, server_ctx: ssl.SSLContext) -> None:
    # An SSLSocket takes no MSG_PEEK: the line is read a byte at a time, as the stdlib.
    class Tunnel(sockserve.StreamRequestHandler):
        rbufsize = 0

        def handle(self) -> None:
            line = self.rfile.readline()
            self.request.sendall(line.upper() + self.request.recv(100))

    with limited(Tunnel, ssl_context=server_ctx) as server, \
            connect(server.server_address) as raw, \
            client_ctx(ca).wrap_socket(raw, server_hostname="localhost") as client:
        client.sendall(b"connect\nraw bytes")
        reply = b""
        while len(reply) < len(b"CONNECT\nraw bytes") and (chunk := client.recv(100)):
            reply += chunk
        assert reply == b"CONNECT\nraw bytes"


def test_closing_the_socket_in_handle_still_sends_the_buffered_reply() -> None:
    class CloseEarly(sockserve.StreamRequestHandler):
        wbufsize = -1

        def handle(self) -> None:
            self.rfile.readline()
            self.wfile.write(b"reply\n")
            self.request.close()  # the files keep it open until finish() flushed

    with limited(CloseEarly) as server, connect(server.server_address) as client:
        client.sendall(b"q\n")
        assert recv_all(client) == b"reply\n"


def test_self_request_keeps_the_handlers_own_timeout_between_file_calls() -> None:
    seen: list[Any] = []

    class Direct(sockserve.StreamRequestHandler):
        timeout = 7.0

        def handle(self) -> None:
            self.rfile.readline()
            seen.append(self.request.gettimeout())
            self.wfile.write(b"ok\n")
            self.wfile.flush()
            seen.append(self.request.gettimeout())

    with limited(Direct, idle_timeout=0.5, write_timeout=0.25) as server, \
            connect(server.server_address) as client:
        client.sendall(b"q\n")
        assert recv_all(client) == b"ok\n"
    assert seen == [7.0, 7.0]


def test_peek_after_a_slow_pause_gets_a_fresh_read_deadline() -> None:
    result: list[Any] = []

    class Peek(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()  # starts a read deadline of 0.1 s for this call
            self.wfile.write(b"ok\n")
            self.wfile.flush()
            time.sleep(0.2)  # slow work between requests, longer than read_timeout
            try:
                result.append(self.rfile.peek(1)[:1])  # type: ignore[attr-defined]
            except OSError as exc:
                result.append(exc)

    with limited(Peek, read_timeout=0.1) as server, connect(server.server_address) as c:
        c.sendall(b"a\n")
        assert c.recv(10) == b"ok\n"
        c.sendall(b"b\n")
        assert recv_all(c) == b""
    assert result == [b"b"]


def test_nothing_goes_out_after_a_write_timed_out() -> None:
    # Part of the stream is lost: later bytes would arrive after a gap. And finish()
    # neither waits for the client again nor skips closing rfile.
    timed_out = threading.Event()
    after: list[Any] = []

    class Flood(sockserve.StreamRequestHandler):
        wbufsize = -1

        def handle(self) -> None:
            try:
                while True:
                    self.wfile.write(b"x" * 4096)
            except TimeoutError:
                timed_out.set()
            try:
                self.wfile.write(b"AFTER")
                self.wfile.flush()
            except TimeoutError as exc:
                after.append(exc)

        def finish(self) -> None:
            super().finish()
            after.append(self.rfile.closed)

    with limited(Flood, write_timeout=0.2) as server, connect(server.server_address) as c:
        assert timed_out.wait(IO_TIMEOUT)
        assert b"AFTER" not in recv_all(c)  # read only once the handler gave up
    assert [type(a) for a in after] == [TimeoutError, bool] and after[1] is True


@pytest.mark.parametrize("limit,rbufsize,reply", [
    (65536, -1, b"HTTP/1.0 414"),  # readline(65537): http.server judges (414, 431)
    (65536, 0, b"HTTP/1.0 414"),
    # Under a lower limit, readline(65537) past it raises LineTooLong: the connection
    # closes unanswered, rather than the request line be served cut short.
    (1000, -1, b""),
    (1000, 0, b""),
])
def test_http_server_under_a_line_limit(monkeypatch: pytest.MonkeyPatch, limit: int,
                                        rbufsize: int, reply: bytes,
                                        caplog: pytest.LogCaptureFixture) -> None:
    import importlib
    import sys
    monkeypatch.setitem(sys.modules, "socketserver", sockserve)
    monkeypatch.setitem(sys.modules, "http.server", None)  # put back as it was after
    del sys.modules["http.server"]
    http_server = importlib.import_module("http.server")
    assert issubclass(http_server.BaseHTTPRequestHandler, sockserve.StreamRequestHandler)
    handler = type("Handler", (http_server.BaseHTTPRequestHandler,), {"rbufsize": rbufsize})
    server = make(handler, max_line_length=limit)
    with serve_in_thread(server), connect(server.server_address) as client:
        client.sendall(b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n")
        answer = recv_all(client)
    assert answer.startswith(reply) and (reply or answer == b"")
    if not reply:
        assert any(isinstance(e, LineTooLong) for e in handler_errors(caplog))


def test_a_green_handlers_unbuffered_readline_peeks_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # GreenMixIn's handlers get a GreenSocket, which takes MSG_PEEK: a line is two
    # system calls there too, not one a byte.
    from sockserve.concurrency.green import GreenSocket
    calls: list[int] = []  # the flags of each read
    recv, recv_into = GreenSocket.recv, GreenSocket.recv_into

    def counting_recv(self: Any, bufsize: int, flags: int = 0) -> bytes:
        calls.append(flags)
        return recv(self, bufsize, flags)

    def counting_recv_into(self: Any, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        calls.append(flags)
        return recv_into(self, buffer, nbytes, flags)

    monkeypatch.setattr(GreenSocket, "recv", counting_recv)
    monkeypatch.setattr(GreenSocket, "recv_into", counting_recv_into)

    class Line(sockserve.StreamRequestHandler):
        rbufsize = 0

        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    server = type("Server", (sockserve.GreenTCPServer,), {"idle_timeout": IO_TIMEOUT})(
        ("127.0.0.1", 0), Line)
    with serve_in_thread(server), connect(server.server_address) as client:
        client.sendall(b"x" * 63 + b"\n")
        assert client.makefile("rb").readline() == b"x" * 63 + b"\n"
    assert socket.MSG_PEEK in calls and len(calls) <= 4, calls  # a peek and a take


def test_readline_on_a_closed_unbuffered_rfile_raises() -> None:
    class ReadAfterClose(sockserve.StreamRequestHandler):
        rbufsize = 0

        def handle(self) -> None:
            self.rfile.close()
            with pytest.raises(ValueError, match="closed"):
                self.rfile.readline()
            self.wfile.write(b"raised\n")

    with limited(ReadAfterClose) as server, connect(server.server_address) as client:
        client.sendall(b"line\n")
        assert client.makefile("rb").readline() == b"raised\n"


@pytest.mark.parametrize("limits", [{}, {"max_line_length": 1000}, {"idle_timeout": 60.0}])
def test_a_timeout_the_handler_sets_itself_outlives_its_file_calls(limits: Any) -> None:
    class OwnTimeoutLater(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(0.25)  # after setup() made the files
            self.rfile.readline()
            try:
                self.request.recv(1)
                self.wfile.write(b"data\n")
            except TimeoutError:
                self.wfile.write(b"timeout\n")

    with serve_in_thread(make(OwnTimeoutLater, **limits)) as server, \
            connect(server.server_address) as client:
        client.sendall(b"line\n")
        assert client.recv(100) == b"timeout\n"


def flood_in_thread(handler: Any, errors: list[Any]) -> threading.Thread:
    """Write more through *handler*'s wfile than a client that does not read takes, in
    a thread of its own (its OSError goes to *errors*); returns once the write has set
    its timeout on the socket."""
    def write() -> None:
        try:
            handler.wfile.write(b"x" * (64 << 20))
            handler.wfile.flush()
        except OSError as exc:
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    wait_for(lambda: handler.request.gettimeout() is not None, what="the write")
    return writer


def test_a_read_during_a_blocked_write_keeps_its_own_timeout() -> None:
    # rfile and wfile in two threads: neither takes the other's temporary timeout for
    # the handler's, and the socket ends with the handler's own (none).
    outcome: list[Any] = []

    class Duplex(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            writer = flood_in_thread(self, [])
            try:
                self.rfile.readline()
            except TimeoutError as exc:
                outcome.append(str(exc))
            writer.join(IO_TIMEOUT)
            outcome.append(self.request.gettimeout())

    with serve_in_thread(make(Duplex, idle_timeout=1.0, write_timeout=0.5)) as server, \
            connect(server.server_address) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        wait_for(lambda: len(outcome) == 2, what="the handler", timeout=IO_TIMEOUT * 2)
    assert outcome == ["idle timeout", None]


def test_a_read_with_a_lifetime_beside_a_blocked_write_keeps_the_handlers_timeout() -> None:
    # Timeouts computed from a deadline read back rounded (nanoseconds): that must not
    # look like a timeout the handler set.
    outcome: list[Any] = []

    class Duplex(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            writer = flood_in_thread(self, [])
            outcome.append(self.rfile.readline())
            self.request.shutdown(socket.SHUT_WR)  # ends the blocked write (EPIPE)
            writer.join(IO_TIMEOUT)
            outcome.append(self.request.gettimeout())

    with serve_in_thread(make(Duplex, connection_lifetime=60.0)) as server, \
            connect(server.server_address) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(b"line\n")
        wait_for(lambda: len(outcome) == 2, what="the handler", timeout=IO_TIMEOUT * 2)
    assert outcome == [b"line\n", None]


def test_a_read_without_a_limit_leaves_a_blocked_writes_timeout_alone() -> None:
    # Only write_timeout: the read has no limit, yet must not put the socket in
    # blocking mode under the write (whose next send() would then block unbounded).
    from sockserve._streams import FOREVER
    outcome: list[Any] = []

    class Duplex(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            writer = flood_in_thread(self, outcome)

            def read() -> None:
                try:
                    self.rfile.readline()
                except OSError:
                    pass  # the client has gone

            reader = threading.Thread(target=read)
            reader.start()
            wait_for(lambda: self.request.gettimeout() == FOREVER, what="the read")
            outcome.append("reading")
            writer.join(IO_TIMEOUT * 2)
            reader.join(IO_TIMEOUT * 2)

    with serve_in_thread(make(Duplex, write_timeout=1.0)) as server:
        with connect(server.server_address) as client:
            wait_for(lambda: outcome == ["reading"], what="the read to start")
            received = 0  # read a little, so that the write goes on, then stop
            while received < (4 << 20):
                received += len(client.recv(65536))
            wait_for(lambda: len(outcome) == 2, what="the write to time out",
                     timeout=IO_TIMEOUT * 2)
    assert isinstance(outcome[1], TimeoutError)


def test_a_timeout_the_handler_sets_during_a_file_call_is_kept() -> None:
    outcome: list[Any] = []
    timeout_set = threading.Event()

    class Handler(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            reader = threading.Thread(target=lambda: outcome.append(self.rfile.readline()))
            reader.start()
            wait_for(lambda: self.request.gettimeout() == 7.0, what="the read")
            self.request.settimeout(3.0)
            timeout_set.set()
            reader.join(IO_TIMEOUT)
            outcome.append(self.request.gettimeout())

    with serve_in_thread(make(Handler, idle_timeout=7.0)) as server, \
            connect(server.server_address) as client:
        assert timeout_set.wait(IO_TIMEOUT)
        client.sendall(b"line\n")
        wait_for(lambda: len(outcome) == 2, what="the handler")
    assert outcome == [b"line\n", 3.0]
