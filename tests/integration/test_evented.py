"""EventedMixIn: framed handlers on the serving loop, no thread per connection."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import sockserve
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, client_ctx, connect, recv_all, unread_bytes, wait_for


@contextlib.contextmanager
def serving(server: Any) -> Iterator[Any]:
    """``serve_forever()`` in a thread, for a test that stops it itself (a drain);
    closes the server and joins the thread on exit."""
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    try:
        yield server
        loop.join(IO_TIMEOUT)
        assert not loop.is_alive()
    finally:
        server.server_close()


class Upper(sockserve.MessageRequestHandler):
    def handle_message(self, message: bytes) -> bytes | None:
        if message == b"quit\n":
            self.close()
            return b"bye\n"
        if message == b"boom\n":
            raise RuntimeError("on purpose")
        return message.upper()


class Length(sockserve.MessageRequestHandler):
    framing = "length"

    def handle_message(self, message: bytes) -> bytes | None:
        return message[::-1]


def test_lines_served_in_order_across_reads() -> None:
    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), Upper)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"one\ntw")
            client.sendall(b"o\nquit\nignored\n")
            assert recv_all(client) == b"ONE\nTWO\nbye\n"


def test_many_idle_connections_cost_no_threads() -> None:
    class Server(sockserve.EventedTCPServer):
        request_queue_size = 512  # 300 connections at once: no SYN retransmissions

    threads_before = threading.active_count()
    with serve_in_thread(Server(("127.0.0.1", 0), Upper)) as server:
        clients = [connect(server.server_address) for _ in range(300)]
        try:
            for n, client in enumerate(clients):
                client.sendall(b"c%d\n" % n)
            for n, client in enumerate(clients):
                assert client.makefile("rb").readline() == b"C%d\n" % n
            assert threading.active_count() == threads_before + 1  # the serving thread
            assert server.statistics().connections == 300
        finally:
            for client in clients:
                client.close()


def test_length_prefixed_messages() -> None:
    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), Length)) as server:
        with connect(server.server_address) as client:
            client.sendall(struct.pack(">I", 3) + b"abc" + struct.pack(">I", 2) + b"xy")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == struct.pack(">I", 3) + b"cba" + struct.pack(">I", 2) + b"yx"


def test_a_failing_handler_ends_only_its_connection(caplog: pytest.LogCaptureFixture) -> None:
    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), Upper)) as server:
        with connect(server.server_address) as good, connect(server.server_address) as bad:
            bad.sendall(b"boom\n")
            assert recv_all(bad) == b""
            good.sendall(b"still\n")
            assert good.makefile("rb").readline() == b"STILL\n"
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records)


def test_too_long_a_line_is_an_error_not_memory() -> None:
    class Small(Upper):
        max_message_size = 16

    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), Small)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"ok\n" + b"x" * 100)
            assert recv_all(client) == b"OK\n"


def test_slow_reader_is_paused_not_buffered_without_bound() -> None:
    big = b"y" * 60_000 + b"\n"

    class Big(sockserve.MessageRequestHandler):
        def handle_message(self, message: bytes) -> bytes | None:
            return big

    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), Big)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"go\n" * 200)  # 12 MB of replies requested; we read none yet
            with client.makefile("rb") as replies:
                for _ in range(200):
                    assert replies.readline() == big


def test_drain_ends_connections_between_messages() -> None:
    server = sockserve.EventedTCPServer(("127.0.0.1", 0), Upper)
    with serving(server):
        with connect(server.server_address) as client:
            client.sendall(b"a\n")
            assert client.makefile("rb").readline() == b"A\n"
            report = server.drain(IO_TIMEOUT)
            assert recv_all(client) == b""
    assert (report.finished, report.cut) == (1, 0)


def test_other_handlers_are_refused() -> None:
    with sockserve.EventedTCPServer(("127.0.0.1", 0), sockserve.StreamRequestHandler) as server:
        with socket.socket() as unused, pytest.raises(TypeError, match="MessageRequestHandler"):
            server.process_request(unused, ("127.0.0.1", 1))


def test_datagram_servers_are_refused_before_serving() -> None:
    class EventedUDP(sockserve.EventedMixIn, sockserve.UDPServer):
        pass

    class Upper(sockserve.MessageRequestHandler):
        def handle_message(self, message: bytes) -> bytes:
            return message.upper()

    with EventedUDP(("127.0.0.1", 0), Upper) as server:
        server.timeout = 0.01  # else it would wait for a request
        with pytest.raises(TypeError, match="stream"):
            server.handle_request()
        with pytest.raises(TypeError, match="stream"):
            server.serve_forever()


def test_evented_workers_under_prefork() -> None:
    class Server(sockserve.PreForkMixIn, sockserve.EventedMixIn, sockserve.TCPServer):
        workers = 2
        graceful_timeout = IO_TIMEOUT

    with serve_in_thread(Server(("127.0.0.1", 0), Upper)) as server:
        for word in (b"a", b"b", b"c"):
            with connect(server.server_address) as client:
                client.sendall(word + b"\nquit\n")
                assert recv_all(client) == word.upper() + b"\nbye\n"
    workers = server.statistics().workers
    assert workers is not None and workers.crashed == 0


class StopOnSetup(Upper):
    """Stops the server as soon as the connection is accepted: its first message has
    not been read when the loop ends."""

    def setup(self) -> None:
        self.server.shutdown()  # on the loop's own thread: returns at once


def test_a_connection_accepted_as_the_loop_stops_gets_its_first_reply() -> None:
    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), StopOnSetup)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"first\n")
            assert recv_all(client) == b"FIRST\n"  # served, then ended between messages


def test_a_message_waiting_unread_at_the_stop_is_served() -> None:
    stop_handled = threading.Event()

    class StopOnRequest(Upper):
        def handle_message(self, message: bytes) -> bytes | None:
            if message != b"stop\n":
                return super().handle_message(message)
            self.server.shutdown()
            stop_handled.set()
            # Hold the loop until the other client's next message is in its socket:
            # the loop stops without having read it.
            others = [c.sock for c in self.server._evented_connections if c.handler is not self]
            select.select(others, [], [], IO_TIMEOUT)
            return b"stopping\n"

    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), StopOnRequest)) as server:
        with connect(server.server_address) as other, connect(server.server_address) as stopper:
            other.sendall(b"one\n")
            assert other.makefile("rb").readline() == b"ONE\n"
            stopper.sendall(b"stop\n")
            assert stop_handled.wait(IO_TIMEOUT)
            other.sendall(b"two\n")
            assert recv_all(stopper) == b"stopping\n"
            assert recv_all(other) == b"TWO\n"


def test_a_message_still_incomplete_after_the_stop_grace_ends_its_connection() -> None:
    class Server(sockserve.EventedTCPServer):
        stop_grace = 0.1

    with serve_in_thread(Server(("127.0.0.1", 0), StopOnSetup)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"no end of line")
            assert recv_all(client) == b""
    assert server.statistics().connections == 0


def test_drain_waits_for_a_message_in_progress() -> None:
    server = sockserve.EventedTCPServer(("127.0.0.1", 0), Upper)
    with serving(server):
        with connect(server.server_address) as client:
            client.sendall(b"a\n")
            assert client.makefile("rb").readline() == b"A\n"
            client.sendall(b"hal")  # in the middle of a message
            wait_for(lambda: server._evented_connections and
                     next(iter(server._evented_connections)).framer.pending,
                     what="half a message read")
            reports: list[Any] = []
            drainer = threading.Thread(target=lambda: reports.append(server.drain(IO_TIMEOUT)))
            drainer.start()
            assert server.draining.wait(IO_TIMEOUT)
            client.sendall(b"f\n")
            assert recv_all(client) == b"HALF\n"
            drainer.join(IO_TIMEOUT)
    assert reports and (reports[0].finished, reports[0].cut) == (1, 0)


def test_drain_with_backlog_serves_the_connections_waiting_in_the_kernel() -> None:
    go = threading.Event()

    class Blocking(Upper):
        def handle_message(self, message: bytes) -> bytes | None:
            if message == b"block\n":
                go.wait(IO_TIMEOUT)  # holds the loop: the next client waits in the backlog
            return super().handle_message(message)

    server = sockserve.EventedTCPServer(("127.0.0.1", 0), Blocking)
    with serving(server):
        try:
            with connect(server.server_address) as first:
                first.sendall(b"block\n")
                wait_for(lambda: server.statistics().connections == 1, what="the first accepted")
                with connect(server.server_address) as waiting:
                    waiting.sendall(b"late\n")
                    reports: list[Any] = []
                    drainer = threading.Thread(
                        target=lambda: reports.append(server.drain(IO_TIMEOUT, backlog=True)))
                    drainer.start()
                    assert server.draining.wait(IO_TIMEOUT)
                    go.set()
                    assert recv_all(first) == b"BLOCK\n"
                    assert recv_all(waiting) == b"LATE\n"
                    drainer.join(IO_TIMEOUT)
        finally:
            go.set()
    assert reports and (reports[0].finished, reports[0].cut) == (2, 0)
    assert server.statistics().connections == 0


def test_a_tls_handshake_in_progress_at_the_stop_is_completed_and_served(
        ca: Any, server_ctx: ssl.SSLContext) -> None:
    class StopOnRequest(Upper):
        def handle_message(self, message: bytes) -> bytes | None:
            if message == b"stop\n":
                self.server.shutdown()  # on the loop's thread: returns at once
            return super().handle_message(message)

    class Server(sockserve.EventedTCPServer):
        stop_grace = IO_TIMEOUT  # no race with a slow CI machine
        _sockserve_handshake_grace_on_stop = IO_TIMEOUT

    server = Server(("127.0.0.1", 0), StopOnRequest)
    server.ssl_context = server_ctx
    context = client_ctx(ca)
    with serve_in_thread(server):
        # The slow client is accepted first but sends its ClientHello only once the
        # fast one has stopped the loop.
        with connect(server.server_address) as slow_raw, \
                context.wrap_socket(connect(server.server_address),
                                    server_hostname="127.0.0.1") as fast:
            fast.sendall(b"stop\n")
            assert fast.makefile("rb").readline() == b"STOP\n"
            with context.wrap_socket(slow_raw, server_hostname="127.0.0.1") as slow:
                slow.sendall(b"late\n")
                assert recv_all(slow) == b"LATE\n"
            assert recv_all(fast) == b""  # ended between messages


class Big(sockserve.MessageRequestHandler):
    """"big": a reply far larger than any socket buffer; "boom": an error."""

    size = 16 * 1024 * 1024

    def handle_message(self, message: bytes) -> bytes | None:
        if message == b"boom\n":
            raise RuntimeError("on purpose")
        return b"b" * (self.size - 1) + b"\n" if message == b"big\n" else message.upper()


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size and (chunk := sock.recv(1 << 20)):
        data += chunk
    return bytes(data)


def test_a_reply_larger_than_the_socket_buffers_arrives_whole_over_tls(
        ca: Any, server_ctx: ssl.SSLContext) -> None:
    server = sockserve.EventedTCPServer(("127.0.0.1", 0), Big)
    server.ssl_context = server_ctx
    with serve_in_thread(server):
        with client_ctx(ca).wrap_socket(connect(server.server_address),
                                        server_hostname="127.0.0.1") as client:
            client.sendall(b"big\nsmall\n")
            assert read_exactly(client, Big.size + 6) == b"b" * (Big.size - 1) + b"\nSMALL\n"


def test_a_tls_record_split_across_reads_is_waited_for(
        ca: Any, server_ctx: ssl.SSLContext) -> None:
    server = sockserve.EventedTCPServer(("127.0.0.1", 0), Upper)
    server.ssl_context = server_ctx
    with serve_in_thread(server):
        # A TLS client over memory buffers: the test decides how records are cut.
        raw = connect(server.server_address)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_ctx(ca).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
        with raw:
            def pump_until(step: Any) -> Any:
                while True:
                    try:
                        return step()
                    except ssl.SSLWantReadError:
                        raw.sendall(outgoing.read())
                        incoming.write(raw.recv(65536) or b"")

            pump_until(tls.do_handshake)
            raw.sendall(outgoing.read())
            tls.write(b"split\n")
            record = outgoing.read()
            raw.sendall(record[:3])
            # The server reads the first three bytes on their own before the rest come.
            wait_for(lambda: unread_bytes(server.server_address, raw.getsockname()) == 0,
                     what="the server to read the first part")
            raw.sendall(record[3:])
            assert pump_until(lambda: tls.read(100)) == b"SPLIT\n"


def test_replies_a_client_does_not_read_stay_bounded_and_none_is_lost() -> None:
    class Sized(sockserve.MessageRequestHandler):
        def handle_message(self, message: bytes) -> bytes | None:
            return message.strip() * 6000 + b"\n"  # 60 kB

    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), Sized)) as server:
        with connect(server.server_address) as client:
            requests = [b"%09d\n" % n for n in range(500)]  # 30 MB of replies
            client.sendall(b"".join(requests))  # one read; the replies are not read yet
            wait_for(lambda: any(c.held for c in server._evented_connections),
                     what="messages held back")
            connection = next(iter(server._evented_connections))
            assert len(connection.output) < 256 * 1024 + 60_001  # the buffer's bound
            assert len(connection.held) > 100  # not served while replies pile up
            client.shutdown(socket.SHUT_WR)
            replies = recv_all(client).splitlines(keepends=True)
    assert replies == [request.strip() * 6000 + b"\n" for request in requests]


def test_a_failing_message_ends_the_connection_after_the_earlier_replies() -> None:
    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), Big)) as server:
        with socket.socket() as client:
            # A small window: most of the reply waits in the server when "boom" comes.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.settimeout(IO_TIMEOUT)
            client.connect(server.server_address)
            client.sendall(b"big\nboom\nnever\n")
            assert recv_all(client) == b"b" * (Big.size - 1) + b"\n"


def test_a_handler_that_closes_its_socket_leaves_the_server_serving() -> None:
    class Closer(Upper):
        def handle_message(self, message: bytes) -> bytes | None:
            if message == b"close\n":
                self.request.close()
                return None
            return super().handle_message(message)

    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), Closer)) as server:
        with connect(server.server_address) as closing:
            closing.sendall(b"close\n")
            assert recv_all(closing) == b""
        with connect(server.server_address) as other:
            other.sendall(b"still\n")
            assert other.makefile("rb").readline() == b"STILL\n"
            # Only this one is open (once it closes too, the count drops to 0).
            wait_for(lambda: server.statistics().connections == 1,
                     what="the closed one released")


def test_setup_failing_or_closing_ends_the_connection_and_keeps_nothing() -> None:
    finished = []
    accepted = iter(range(100))

    class Picky(Upper):
        def setup(self) -> None:
            if next(accepted) % 2:
                raise RuntimeError("on purpose")
            self.close()

        def finish(self) -> None:
            finished.append(self.client_address)

    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), Picky)) as server:
        for _ in range(4):
            with connect(server.server_address) as client:
                assert recv_all(client) == b""  # without sending anything first
        wait_for(lambda: server.statistics().connections == 0, what="all released")
        assert not server._evented_connections
    assert len(finished) == 2  # the ones that closed in setup(), not those that failed


def test_an_empty_reply_is_a_message_too() -> None:
    class Empty(sockserve.MessageRequestHandler):
        framing = "length"

        def handle_message(self, message: bytes) -> bytes | None:
            return b""

    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), Empty)) as server:
        with connect(server.server_address) as client:
            client.sendall(struct.pack(">I", 2) + b"hi")
            assert read_exactly(client, 4) == struct.pack(">I", 0)


def test_a_client_that_resets_mid_reply_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), Big)) as server:
        client = connect(server.server_address)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.sendall(b"big\n")
        assert client.recv(10)  # the reply has begun
        client.close()  # with unread data and linger 0: a reset
        wait_for(lambda: server.statistics().connections == 0, what="the reset seen")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_drain_cuts_a_silent_connection_at_its_deadline() -> None:
    server = sockserve.EventedTCPServer(("127.0.0.1", 0), Upper)
    with serving(server):
        with connect(server.server_address) as silent:
            wait_for(lambda: server.statistics().connections == 1, what="it accepted")
            report = server.drain(0.2)  # returns at the deadline, not when it speaks
            assert recv_all(silent) == b""
    assert (report.open, report.finished, report.cut) == (1, 0, 1)


def test_a_client_that_keeps_sending_does_not_hold_up_the_stop() -> None:
    class Server(sockserve.EventedTCPServer):
        stop_grace = 0.2

    server = Server(("127.0.0.1", 0), Upper)
    done = threading.Event()

    def chatter(client: socket.socket) -> None:
        replies = client.makefile("rb")
        try:
            for _ in range(1_000_000):  # bounded; ends when the server closes
                if done.is_set():
                    return
                client.sendall(b"more\n")
                if not replies.readline():
                    return
        except OSError:
            return

    with serving(server), connect(server.server_address) as client:
        talking = threading.Thread(target=chatter, args=(client,))
        talking.start()
        try:
            wait_for(lambda: server.statistics().connections == 1, what="it accepted")
            stopper = threading.Thread(target=server.shutdown)
            stopper.start()
            stopper.join(IO_TIMEOUT)
            assert not stopper.is_alive()  # ended at stop_grace, not when the client stops
        finally:
            done.set()
            talking.join(IO_TIMEOUT)


def test_a_handler_that_closes_its_socket_in_setup_leaves_nothing() -> None:
    class CloseAtOnce(Upper):
        def setup(self) -> None:
            self.request.close()

    with serve_in_thread(sockserve.EventedTCPServer(("127.0.0.1", 0), CloseAtOnce)) as server:
        with connect(server.server_address) as client:
            assert recv_all(client) == b""
        wait_for(lambda: server.statistics().connections == 0, what="released")
        assert not server._evented_connections
