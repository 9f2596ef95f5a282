"""The sync servers' options on the async servers, on asyncio and on uvloop: the access
list, connection limits, TLS, timeouts, the line limit, drain and statistics."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from sockserve import aio, tls
from sockserve.access import AccessList
from sockserve.address import bind_sockets
from sockserve.errors import LineTooLong
from sockserve.stats import DrainReport
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, client_ctx, client_hello, connect, recv_all, wait_for
from tests.integration.test_async import LOOPS, LoopName, run

LOCALHOST = ("127.0.0.1", 0)


@pytest.fixture(params=LOOPS)
def loop_name(request: pytest.FixtureRequest) -> LoopName:
    name: LoopName = request.param
    return name


class Recording(aio.AsyncTCPServer):
    """Records what reaches handle_error(), which still logs it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.errors: list[BaseException | None] = []
        self.errored = threading.Semaphore(0)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.errors.append(sys.exc_info()[1])
        self.errored.release()
        super().handle_error(request, client_address)

    def next_error(self) -> BaseException | None:
        assert self.errored.acquire(timeout=IO_TIMEOUT), "no error reached handle_error()"
        return self.errors.pop(0)


def make(loop_name: LoopName, handler: type, **settings: Any) -> Any:
    """A Recording server with *settings* as class attributes."""
    return type("Server", (Recording,), settings)(LOCALHOST, handler, loop_factory=loop_name)


def connect_from(address: Any, source: str) -> socket.socket:
    """A client bound to *source* (any 127.x.y.z is a loopback address on Linux)."""
    sock = socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET)
    sock.settimeout(IO_TIMEOUT)
    try:
        sock.bind((source, 0))
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed *sock* (EOF or reset); reads what is left."""
    try:
        recv_all(sock)
    except ConnectionResetError:
        pass
    return True


class Echo(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.reader:
            self.writer.write(line)
            await self.writer.drain()


class WhoAmI(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        self.writer.write(repr(self.client_address).encode())


class TwoLines(aio.AsyncStreamRequestHandler):
    """A request in two parts, so that the test decides when it is in flight."""

    async def handle(self) -> None:
        await self.reader.readline()
        self.writer.write(b"started\n")
        self.writer.write((await self.reader.readline()).upper())


class Reply(aio.AsyncDatagramRequestHandler):
    async def handle(self) -> None:
        self.send(repr(self.client_address).encode())


# -- the access list and addresses -----------------------------------------------------

def test_access_list_closes_logs_and_counts(loop_name: LoopName,
                                            caplog: pytest.LogCaptureFixture) -> None:
    server = make(loop_name, WhoAmI)
    server.access_list = AccessList.from_strings(allow="127.0.0.0/8", deny="127.0.0.2")
    with caplog.at_level(logging.INFO, logger="sockserve.server"):
        with serve_in_thread(server):
            with connect_from(server.server_address, "127.0.0.2") as denied:
                assert recv_all(denied) == b""  # closed unanswered
            with connect_from(server.server_address, "127.0.0.3") as allowed:
                assert recv_all(allowed).startswith(b"('127.0.0.3'")
            # Rules swapped while serving apply to the next connection.
            server.access_list = AccessList.from_strings(deny="127.0.0.3")
            with connect_from(server.server_address, "127.0.0.3") as now_denied:
                assert recv_all(now_denied) == b""
    stats = server.statistics()
    assert (stats.accepted, stats.denied) == (3, 2)
    assert any("access denied" in r.getMessage() and "127.0.0.2" in r.getMessage()
               for r in caplog.records)


def test_access_list_composes_with_verify_request(loop_name: LoopName) -> None:
    class Picky(Recording):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            return bool(client_address[0] != "127.0.0.4")

    server = Picky(LOCALHOST, WhoAmI, loop_factory=loop_name)
    server.access_list = AccessList.from_strings(deny="127.0.0.5")
    with serve_in_thread(server):
        for source, served in (("127.0.0.4", False), ("127.0.0.5", False), ("127.0.0.6", True)):
            with connect_from(server.server_address, source) as client:
                assert (recv_all(client) != b"") is served
    assert server.statistics().denied == 2


def test_denied_datagrams_are_dropped(loop_name: LoopName) -> None:
    server = aio.AsyncUDPServer(LOCALHOST, Reply, loop_factory=loop_name)
    server.access_list = AccessList.from_strings(deny="127.0.0.7")
    with serve_in_thread(server), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as denied, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as allowed:
        denied.bind(("127.0.0.7", 0))
        allowed.bind(("127.0.0.1", 0))
        allowed.settimeout(IO_TIMEOUT)
        denied.sendto(b"x", server.server_address)
        allowed.sendto(b"y", server.server_address)
        # Datagrams are served in order: the one before has been dealt with.
        assert allowed.recv(100).startswith(b"('127.0.0.1'")
        denied.setblocking(False)
        with pytest.raises(BlockingIOError):
            denied.recv(100)
        server.access_list = None  # a change applies to the next datagram
        denied.settimeout(IO_TIMEOUT)
        denied.sendto(b"z", server.server_address)
        assert denied.recv(100).startswith(b"('127.0.0.7'")
    stats = server.statistics()
    assert (stats.accepted, stats.denied) == (3, 1)


def test_dual_stack_shows_ipv4_clients_as_ipv4(loop_name: LoopName) -> None:
    [stream] = bind_sockets("[::]:0")
    [dgram] = bind_sockets("udp://[::]:0")
    tcp_server = aio.AsyncTCPServer.from_socket(stream, WhoAmI)
    udp_server = aio.AsyncUDPServer.from_socket(dgram, Reply)
    for server in (tcp_server, udp_server):
        server.loop_factory = loop_name
        server.unmap_ipv4_clients = True
    with serve_in_thread(tcp_server), serve_in_thread(udp_server):
        with connect(("127.0.0.1", tcp_server.server_address[1])) as client:
            assert recv_all(client).startswith(b"('127.0.0.1', ")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(IO_TIMEOUT)
            client.sendto(b"x", ("127.0.0.1", udp_server.server_address[1]))
            # The handler sees an IPv4 pair; the reply still finds the client.
            assert client.recv(100).startswith(b"('127.0.0.1', ")


def test_datagram_size_limit_truncates_or_drops(loop_name: LoopName) -> None:
    class Length(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            self.send(b"%d" % len(self.packet))

    server = aio.AsyncUDPServer(LOCALHOST, Length, loop_factory=loop_name)
    server.max_packet_size = 10
    with serve_in_thread(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(IO_TIMEOUT)
        client.sendto(b"x" * 100, server.server_address)
        assert client.recv(10) == b"10"  # as the stdlib's recvfrom(max_packet_size)
        server.drop_oversized_packets = True
        client.sendto(b"x" * 100, server.server_address)
        client.sendto(b"x" * 5, server.server_address)
        assert client.recv(10) == b"5"
        server.max_packet_size = 1000
        client.sendto(b"x" * 100, server.server_address)
        assert client.recv(10) == b"100"
    assert server.statistics().oversized == 1


def test_a_unix_datagram_longer_than_the_loop_reads_whole_counts_as_oversized(
        loop_name: LoopName, unix_path: str) -> None:
    # The loops read at most 256,000 bytes of a datagram and do not say when one was
    # longer: one that fills that much may have been cut, so it is never handed over
    # as if whole under drop_oversized_packets.
    class Length(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            self.send(b"%d" % len(self.packet))

    server = aio.AsyncUnixDatagramServer(unix_path, Length, loop_factory=loop_name)
    server.max_packet_size = 400_000
    server.drop_oversized_packets = True
    with serve_in_thread(server), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(unix_path + ".c")
        client.settimeout(IO_TIMEOUT)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        client.sendto(b"z" * 300_000, unix_path)
        client.sendto(b"z" * 200_000, unix_path)
        assert client.recv(100) == b"200000"
        assert server.statistics().oversized == 1
    os.unlink(unix_path + ".c")


# -- connection limits --------------------------------------------------------------

def test_per_ip_limit_rejects_with_the_busy_reply(loop_name: LoopName,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    server = make(loop_name, Echo, max_connections_per_ip=1, busy_reply=b"busy\n")
    with caplog.at_level(logging.WARNING, logger="sockserve.server"), serve_in_thread(server):
        with connect_from(server.server_address, "127.0.0.1") as first:
            first.sendall(b"in\n")
            assert first.recv(10) == b"in\n"
            with connect_from(server.server_address, "127.0.0.1") as second:
                assert recv_all(second) == b"busy\n"
            with connect_from(server.server_address, "127.0.0.2") as other:
                other.sendall(b"other\n")
                assert other.recv(10) == b"other\n"
                stats = server.statistics()
        wait_for(lambda: server.statistics().connections == 0, what="connections closed")
        with connect_from(server.server_address, "127.0.0.1") as again:  # a slot is free
            again.sendall(b"again\n")
            assert again.recv(10) == b"again\n"
    assert (stats.accepted, stats.rejected, stats.connections) == (3, 1, 2)
    assert server.statistics().rejected == 1
    assert any(r.levelno == logging.WARNING and "max_connections_per_ip" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("overload", ["reject", "pause"])
def test_max_connections_rejects_with_either_overload_policy(loop_name: LoopName,
                                                            overload: str) -> None:
    # An event loop cannot pause accepting: "pause" rejects too (docs/async.md).
    server = make(loop_name, Echo, max_connections=1, overload=overload, busy_reply=b"busy\n")
    with serve_in_thread(server):
        with connect(server.server_address) as first:
            first.sendall(b"in\n")
            assert first.recv(10) == b"in\n"
            with connect(server.server_address) as second:
                assert recv_all(second) == b"busy\n"
            first.sendall(b"still\n")
            assert first.recv(10) == b"still\n"
        wait_for(lambda: server.statistics().connections == 0, what="connection closed")
        with connect(server.server_address) as third:  # the slot is free again
            third.sendall(b"third\n")
            assert third.recv(10) == b"third\n"
    stats = server.statistics()
    assert (stats.accepted, stats.rejected) == (3, 1)


# -- TLS ------------------------------------------------------------------------------

class TLSInfo(aio.AsyncStreamRequestHandler):
    """Echoes a line, then reports what the handler sees of the TLS session."""

    async def handle(self) -> None:
        line = await self.reader.readline()
        ssl_object = self.writer.get_extra_info("ssl_object")
        peer = self.writer.get_extra_info("peercert")
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        self.writer.write(line)
        self.writer.write(b"alpn=%s cn=%s socket=%s\n" % (
            (ssl_object.selected_alpn_protocol() or "-").encode(),
            subject.get("commonName", "-").encode(),
            type(self.request.getsockname()).__name__.encode()))


def tls_exchange(address: Any, ctx: ssl.SSLContext, line: bytes = b"hello\n") -> list[bytes]:
    with connect(address) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as conn:
        conn.sendall(line)
        with conn.makefile("rb") as replies:
            return replies.readlines()


def test_tls_round_trip_with_alpn_and_a_client_certificate(loop_name: LoopName,
                                                            ca: trustme.CA) -> None:
    cert = ca.issue_cert("localhost")
    with cert.private_key_and_cert_chain_pem.tempfile() as pem, \
            ca.cert_pem.tempfile() as ca_pem:
        ctx = tls.server_context(pem, client_cafile=ca_pem, verify_client="optional",
                                 alpn_protocols=["h2", "http/1.1"])
    server = make(loop_name, TLSInfo)
    server.ssl_context = ctx
    with serve_in_thread(server):
        with_cert = client_ctx(ca, alpn=["http/1.1"])
        ca.issue_cert("alice@example.test", common_name="alice").configure_cert(with_cert)
        assert tls_exchange(server.server_address, with_cert) == \
            [b"hello\n", b"alpn=http/1.1 cn=alice socket=tuple\n"]
        assert tls_exchange(server.server_address, client_ctx(ca)) == \
            [b"hello\n", b"alpn=- cn=- socket=tuple\n"]
    assert server.errors == []


def test_tls_a_silent_client_delays_nobody_and_times_out(
        loop_name: LoopName, ca: trustme.CA, server_ctx: ssl.SSLContext) -> None:
    server = make(loop_name, TLSInfo, handshake_timeout=0.5)
    server.ssl_context = server_ctx
    with serve_in_thread(server):
        with connect(server.server_address) as silent:  # connects, sends nothing
            wait_for(lambda: server.statistics().tls_in_progress == 1, what="handshake")
            assert tls_exchange(server.server_address, client_ctx(ca))[0] == b"hello\n"
            assert server.statistics().tls_in_progress == 1
            assert closed_by_server(silent)  # at the handshake deadline
        wait_for(lambda: server.statistics().tls_timed_out == 1, what="timeout counted")
        stats = server.statistics()
    assert (stats.tls_failed, stats.tls_in_progress) == (0, 0)


def test_tls_failures_are_counted_and_serving_goes_on(
        loop_name: LoopName, ca: trustme.CA, server_ctx: ssl.SSLContext,
        caplog: pytest.LogCaptureFixture) -> None:
    server = make(loop_name, TLSInfo)
    server.ssl_context = server_ctx
    with caplog.at_level(logging.INFO, logger="sockserve.tls"), serve_in_thread(server):
        with connect(server.server_address) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert closed_by_server(plain)
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_exchange(server.server_address, client_ctx(trustme.CA()))  # unknown CA
        wait_for(lambda: server.statistics().tls_failed == 2, what="failures counted")
        assert tls_exchange(server.server_address, client_ctx(ca))[0] == b"hello\n"
    assert server.statistics().tls_timed_out == 0
    assert any("handshake failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("how", ["close", "reset", "hello then reset"])
def test_tls_clients_gone_before_their_handshake_are_counted_and_free_their_slot(
        loop_name: LoopName, ca: trustme.CA, server_ctx: ssl.SSLContext, how: str) -> None:
    # A first client holds the loop (in verify_request()) while three more connect and
    # go away, so the loop finds them gone as it takes them.  uvloop's start_tls() then
    # gave back a closed transport, and each connection kept its slot for ever,
    # uncounted: max_connections filled up with port scans.  Reset before the loop
    # asked for its address, a client was dropped uncounted too.
    holding, loop_free = threading.Event(), threading.Event()

    class Server(Recording):
        max_connections = 4

        def verify_request(self, request: Any, client_address: Any) -> bool:
            if not loop_free.is_set():
                holding.set()
                loop_free.wait(IO_TIMEOUT)
            return True

    server = Server(LOCALHOST, TLSInfo, loop_factory=loop_name)
    server.ssl_context = server_ctx
    with serve_in_thread(server):
        with connect(server.server_address):
            assert holding.wait(IO_TIMEOUT)
            for _ in range(3):
                with connect(server.server_address) as client:
                    if how == "hello then reset":
                        client.sendall(client_hello(ca))
                    if how != "close":
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
        loop_free.set()  # the holder has gone too: four handshakes fail
        wait_for(lambda: server.statistics().tls_failed == 4, what="four failures counted")
        assert server.statistics().connections == 0
        assert tls_exchange(server.server_address, client_ctx(ca))[0] == b"hello\n"
    assert server.errors == []


def test_a_tls_client_rejected_before_its_handshake_gets_no_plaintext_busy_reply(
        loop_name: LoopName, ca: trustme.CA, server_ctx: ssl.SSLContext) -> None:
    # It would read it as a broken TLS record; it is closed without it, as in the
    # sync servers.
    server = make(loop_name, TLSInfo, max_connections=1, busy_reply=b"busy\n")
    server.ssl_context = server_ctx
    with serve_in_thread(server):
        with connect(server.server_address) as first:
            first_tls = client_ctx(ca).wrap_socket(first, server_hostname="localhost")
            wait_for(lambda: server.statistics().connections == 1, what="the first admitted")
            with connect(server.server_address) as second:
                assert recv_all(second) == b""
            first_tls.close()
        assert server.statistics().rejected == 1


def test_tls_certificates_reload_for_new_connections(
        loop_name: LoopName, ca: trustme.CA, server_ctx: ssl.SSLContext) -> None:
    other_ca = trustme.CA()
    with other_ca.issue_cert("localhost").private_key_and_cert_chain_pem.tempfile() as pem:
        new_ctx = tls.server_context(pem)
    server = make(loop_name, TLSInfo)
    server.ssl_context = server_ctx
    with serve_in_thread(server):
        assert tls_exchange(server.server_address, client_ctx(ca))[0] == b"hello\n"
        server.ssl_context = new_ctx
        assert tls_exchange(server.server_address, client_ctx(other_ca))[0] == b"hello\n"
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_exchange(server.server_address, client_ctx(ca))


def test_tls_over_unix_sockets(loop_name: LoopName, ca: trustme.CA,
                               server_ctx: ssl.SSLContext, unix_path: str) -> None:
    server = aio.AsyncUnixStreamServer(unix_path, Echo, loop_factory=loop_name)
    server.ssl_context = server_ctx
    with serve_in_thread(server), connect(unix_path, socket.AF_UNIX) as raw:
        with client_ctx(ca).wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(b"unix\n")
            assert conn.recv(10) == b"unix\n"


def test_datagram_servers_refuse_tls(loop_name: LoopName, server_ctx: ssl.SSLContext) -> None:
    with aio.AsyncUDPServer(LOCALHOST, Reply, loop_factory=loop_name) as server:
        server.ssl_context = server_ctx
        with pytest.raises(TypeError, match="DTLS"):
            server.serve_forever()


# -- timeouts and the line limit -------------------------------------------------------

def test_idle_timeout_closes_a_silent_client_and_others_are_served(loop_name: LoopName) -> None:
    server = make(loop_name, Echo, idle_timeout=0.3)
    with serve_in_thread(server):
        with connect(server.server_address) as silent, \
                connect(server.server_address) as busy:
            # A client that keeps talking is never idle for 0.3 s (pacing: 50 ms).
            while not select.select([silent], [], [], 0.05)[0]:
                busy.sendall(b"x\n")
                assert busy.recv(10) == b"x\n"
            assert recv_all(silent) == b""
            error = server.next_error()
            busy.sendall(b"still\n")
            assert busy.recv(10) == b"still\n"
    assert isinstance(error, TimeoutError) and str(error) == "idle timeout"


def test_read_timeout_ends_a_slowloris_client(loop_name: LoopName) -> None:
    server = make(loop_name, Echo, idle_timeout=IO_TIMEOUT, read_timeout=0.3)
    with serve_in_thread(server), connect(server.server_address) as slow:
        started = time.monotonic()
        try:
            # One byte every 50 ms, never a whole line (pacing, not synchronisation).
            while not select.select([slow], [], [], 0.05)[0]:
                slow.sendall(b"x")
        except OSError:
            pass  # reset: the server has closed already
        assert closed_by_server(slow)
        assert time.monotonic() - started < IO_TIMEOUT
        error = server.next_error()
    assert isinstance(error, TimeoutError) and str(error) == "read timeout"


def test_write_timeout_ends_a_client_that_does_not_read(loop_name: LoopName) -> None:
    class Flood(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            while True:
                self.writer.write(b"z" * 65536)
                await self.writer.drain()

    server = make(loop_name, Flood, write_timeout=0.3)
    with serve_in_thread(server), connect(server.server_address) as client:
        error = server.next_error()  # the client never reads
        assert closed_by_server(client)  # aborted: nothing stays buffered for it
    assert isinstance(error, TimeoutError) and str(error) == "write timeout"


def test_connection_lifetime_ends_waiting_and_busy_handlers(loop_name: LoopName) -> None:
    class Hold(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            line = await self.reader.readline()
            self.writer.write(line)
            if line == b"sleep\n":
                await asyncio.sleep(IO_TIMEOUT * 2)  # not reading: the transport is closed
            else:
                await self.reader.readline()  # nothing more comes: TimeoutError here

    server = make(loop_name, Hold, connection_lifetime=0.3)
    with serve_in_thread(server):
        for line in (b"wait\n", b"sleep\n"):
            with connect(server.server_address) as client:
                started = time.monotonic()
                client.sendall(line)
                assert recv_all(client) == line
                assert time.monotonic() - started < IO_TIMEOUT
        error = server.next_error()
    assert isinstance(error, TimeoutError) and str(error) == "connection lifetime exceeded"
    assert server.errors == []  # the sleeping handler was cancelled at shutdown


def test_the_handler_timeout_and_the_server_timeouts_take_the_shorter(
        loop_name: LoopName) -> None:
    class Patient(Echo):
        timeout = 0.3

    server = make(loop_name, Patient, idle_timeout=IO_TIMEOUT * 2)
    with serve_in_thread(server), connect(server.server_address) as client:
        assert recv_all(client) == b""  # the handler's own 0.3 s
        error = server.next_error()
    assert isinstance(error, TimeoutError) and "0.3" in str(error)


def test_max_line_length_is_the_default_readline_limit(loop_name: LoopName) -> None:
    class Lines(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            if await self.reader.readline(limit=100) == b"explicit\n":  # a limit given wins
                self.writer.write(await self.reader.readline(limit=100))
            async for line in self.reader:
                self.writer.write(line)

    server = make(loop_name, Lines, max_line_length=8)
    with serve_in_thread(server):
        with connect(server.server_address) as client:
            client.sendall(b"first\nshort\n" + b"z" * 50 + b"\nnever\n")
            assert recv_all(client) == b"short\n"
        error = server.next_error()
        with connect(server.server_address) as client:
            client.sendall(b"explicit\n" + b"y" * 50 + b"\n")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"y" * 50 + b"\n"
    assert isinstance(error, aio.LineTooLongError) and isinstance(error, LineTooLong)


# -- drain and stopping -----------------------------------------------------------------

def drain_in_thread(server: Any, timeout: float | None,
                    **kwargs: Any) -> tuple[threading.Thread, list[DrainReport]]:
    reports: list[DrainReport] = []
    thread = threading.Thread(target=lambda: reports.append(server.drain(timeout, **kwargs)))
    thread.start()
    return thread, reports


def test_drain_lets_in_flight_requests_finish(loop_name: LoopName) -> None:
    server = make(loop_name, TwoLines)
    with serve_in_thread(server):
        clients = [connect(server.server_address) for _ in range(3)]
        try:
            for client in clients:
                client.sendall(b"one\n")
                assert client.recv(10) == b"started\n"
            assert server.statistics().connections == 3
            drainer, reports = drain_in_thread(server, IO_TIMEOUT)
            assert server.draining.wait(IO_TIMEOUT)
            for client in clients:
                client.sendall(b"two\n")
                assert recv_all(client) == b"TWO\n"  # nothing in flight is lost
            drainer.join(IO_TIMEOUT)
            assert not drainer.is_alive() and not server.is_serving()
        finally:
            for client in clients:
                client.close()
    assert reports == [DrainReport(open=3, finished=3, cut=0)]
    assert server.statistics().connections == 0


def test_drain_cuts_stuck_handlers_at_the_deadline(loop_name: LoopName) -> None:
    calls: list[str] = []

    class Stuck(TwoLines):
        async def finish(self) -> None:
            calls.append("finish")

    server = make(loop_name, Stuck)
    with serve_in_thread(server), connect(server.server_address) as client:
        client.sendall(b"one\n")
        assert client.recv(10) == b"started\n"
        started = time.monotonic()
        report = server.drain(0.3)  # the second line never comes
        assert time.monotonic() - started < IO_TIMEOUT
        assert recv_all(client) == b""
    assert report == DrainReport(open=1, finished=0, cut=1)
    assert calls == ["finish"] and server.errors == []  # cancelled, not failed


def test_handlers_can_await_draining_and_finish_early(loop_name: LoopName) -> None:
    class KeepAlive(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            draining = asyncio.ensure_future(self.server.wait_draining())
            try:
                while True:
                    read = asyncio.ensure_future(self.reader.readline())
                    await asyncio.wait({read, draining}, return_when=asyncio.FIRST_COMPLETED)
                    if not read.done():
                        read.cancel()
                        self.writer.write(b"bye\n")
                        return
                    if not read.result():
                        return
                    self.writer.write(read.result())
            finally:
                draining.cancel()

    server = make(loop_name, KeepAlive)
    with serve_in_thread(server), connect(server.server_address) as client:
        client.sendall(b"hi\n")
        assert client.recv(10) == b"hi\n"
        report = server.drain(IO_TIMEOUT)
        assert recv_all(client) == b"bye\n"
    assert report == DrainReport(open=1, finished=1, cut=0)


def test_drain_async_inside_a_running_loop(loop_name: LoopName) -> None:
    refused: list[str] = []

    class Handler(TwoLines):
        async def setup(self) -> None:
            try:
                await self.server.drain_async(0)  # would wait for this very handler
            except RuntimeError as exc:
                refused.append(str(exc))
            try:
                self.server.drain(0)  # would block the loop
            except RuntimeError as exc:
                refused.append(str(exc))

    async def main() -> DrainReport:
        async with aio.AsyncTCPServer(LOCALHOST, Handler) as server:
            serving = asyncio.create_task(server.serve())
            await asyncio.wait_for(server.wait_serving(), IO_TIMEOUT)
            reader, writer = await asyncio.open_connection(*server.server_address)
            writer.write(b"one\n")
            assert await asyncio.wait_for(reader.readline(), IO_TIMEOUT) == b"started\n"
            drain = asyncio.create_task(server.drain_async(IO_TIMEOUT))
            await asyncio.wait_for(server.wait_draining(), IO_TIMEOUT)
            writer.write(b"two\n")
            assert await asyncio.wait_for(reader.read(), IO_TIMEOUT) == b"TWO\n"
            report: DrainReport = await asyncio.wait_for(drain, IO_TIMEOUT)
            await asyncio.wait_for(serving, IO_TIMEOUT)
            writer.close()
            await writer.wait_closed()
        return report

    assert run(loop_name, main()) == DrainReport(open=1, finished=1, cut=0)
    assert len(refused) == 2 and "own connection" in refused[0] and "drain_async" in refused[1]


def test_drain_with_backlog_serves_clients_waiting_in_the_kernel(loop_name: LoopName) -> None:
    blocked, release = threading.Event(), threading.Event()

    class Blocking(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            line = await self.reader.readline()
            if line == b"block\n":
                blocked.set()
                release.wait(IO_TIMEOUT)  # blocks the loop on purpose: nothing is accepted
            self.writer.write(line)

    server = make(loop_name, Blocking)
    with serve_in_thread(server), connect(server.server_address) as first:
        first.sendall(b"block\n")
        assert blocked.wait(IO_TIMEOUT)
        with connect(server.server_address) as waiting:  # in the backlog: the loop is blocked
            waiting.sendall(b"late\n")
            drainer, reports = drain_in_thread(server, IO_TIMEOUT, backlog=True)
            assert server.draining.wait(IO_TIMEOUT)  # the loop has been told
            release.set()
            assert recv_all(first) == b"block\n"
            assert recv_all(waiting) == b"late\n"
            drainer.join(IO_TIMEOUT)
    assert reports and reports[0].cut == 0 and reports[0].finished >= 1


def test_stop_now_cuts_a_drain_short(loop_name: LoopName) -> None:
    server = make(loop_name, TwoLines)
    with serve_in_thread(server), connect(server.server_address) as client:
        client.sendall(b"one\n")
        assert client.recv(10) == b"started\n"
        drainer, reports = drain_in_thread(server, 60)
        assert server.draining.wait(IO_TIMEOUT)
        server.stop_now()  # the runner's second SIGTERM
        drainer.join(IO_TIMEOUT)
        assert not drainer.is_alive()
        assert recv_all(client) == b""
    assert reports == [DrainReport(open=1, finished=0, cut=1)]


def test_stop_now_while_serving_cuts_connections_and_serving_goes_on(
        loop_name: LoopName) -> None:
    server = make(loop_name, Echo)
    with serve_in_thread(server):
        with connect(server.server_address) as client:
            client.sendall(b"a\n")
            assert client.recv(10) == b"a\n"
            server.stop_now()
            assert recv_all(client) == b""
        with connect(server.server_address) as client:
            client.sendall(b"b\n")
            assert client.recv(10) == b"b\n"


def test_server_close_with_drain_timeout_never_hangs_on_idle_clients(
        loop_name: LoopName) -> None:
    # Through serve_in_thread(): shutdown() then server_close().
    server = make(loop_name, Echo, drain_timeout=0.3)
    with connect(server.server_address) as idle:
        started = time.monotonic()
        with serve_in_thread(server):
            idle.sendall(b"hi\n")
            assert idle.recv(10) == b"hi\n"
            started = time.monotonic()
        assert time.monotonic() - started < IO_TIMEOUT
        assert recv_all(idle) == b""
    # server_close() while serve_forever() runs in another thread: a drain.
    server = make(loop_name, Echo, drain_timeout=0.3)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        with connect(server.server_address) as idle:
            idle.sendall(b"hi\n")
            assert idle.recv(10) == b"hi\n"
            started = time.monotonic()
            server.server_close()
            assert time.monotonic() - started < IO_TIMEOUT
            assert recv_all(idle) == b""
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive()
    finally:
        server.shutdown()
        server.server_close()


RUNNER_SCRIPT = """
import logging, sys
from sockserve import aio, runner
from tests.integration.test_async_hardening import TwoLines

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
server = aio.AsyncTCPServer(("127.0.0.1", 0), TwoLines, loop_factory=sys.argv[1])
print("port", server.server_address[1], flush=True)
print("report", runner.run(server, drain_timeout=float(sys.argv[2])), flush=True)
"""


@pytest.mark.parametrize("second_signal", [False, True])
def test_the_runner_drains_an_async_server_on_sigterm(loop_name: LoopName,
                                                      second_signal: bool) -> None:
    root = Path(__file__).resolve().parents[2]
    deadline = "60" if second_signal else str(IO_TIMEOUT)
    with subprocess.Popen([sys.executable, "-c", RUNNER_SCRIPT, loop_name, deadline],
                          cwd=root, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        try:
            port = int(proc.stdout.readline().split()[1])
            with connect(("127.0.0.1", port)) as client:
                client.sendall(b"one\n")
                assert client.recv(10) == b"started\n"
                proc.send_signal(signal.SIGTERM)
                while "connections open, deadline" not in proc.stdout.readline():
                    pass  # the server logs when its drain begins
                if second_signal:
                    proc.send_signal(signal.SIGTERM)  # stop now: the request is cut
                    assert recv_all(client) == b""
                else:
                    client.sendall(b"two\n")
                    assert recv_all(client) == b"TWO\n"
            output = proc.communicate(timeout=IO_TIMEOUT * 2)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0
    cut = int(second_signal)
    assert f"report DrainReport(open=1, finished={1 - cut}, cut={cut})" in output


def test_statistics_count_open_connections(loop_name: LoopName) -> None:
    server = make(loop_name, Echo)
    with serve_in_thread(server):
        with connect(server.server_address) as a, connect(server.server_address) as b:
            for client in (a, b):
                client.sendall(b"x\n")
                assert client.recv(10) == b"x\n"
            stats = server.statistics()
    assert (stats.accepted, stats.connections, stats.denied, stats.rejected) == (2, 2, 0, 0)
    assert server.statistics().connections == 0


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - before:
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive(), f"{thread} still running"


def test_several_addresses_in_one_stream_server(loop_name: LoopName) -> None:
    socks = bind_sockets("127.0.0.1:0") + bind_sockets("127.0.0.2:0")
    server = aio.AsyncTCPServer.from_sockets(socks, WhoAmI)
    server.loop_factory = loop_name
    addresses = server.server_addresses
    with serve_in_thread(server):
        for address in addresses:
            with connect(address) as client:
                assert recv_all(client).startswith(b"('127.0.0.")
    for address in addresses:  # stopped: every listener closed
        with pytest.raises(ConnectionRefusedError):
            connect(address).close()


def test_several_addresses_in_one_datagram_server(loop_name: LoopName) -> None:
    class Where(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            self.send(repr(self.request[1].getsockname()).encode())

    socks = bind_sockets("udp://127.0.0.1:0") + bind_sockets("udp://127.0.0.2:0")
    server = aio.AsyncUDPServer.from_sockets(socks, Where)
    server.loop_factory = loop_name
    with serve_in_thread(server):
        for address in server.server_addresses:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(IO_TIMEOUT)
                client.sendto(b"?", address)
                reply, sender = client.recvfrom(100)
                assert sender == address  # answered from the socket it was sent to
                assert reply == repr(address).encode()
        server.max_packet_size = 1  # a change reaches every socket's endpoint
        server.drop_oversized_packets = True
        for address in server.server_addresses:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"too long", address)
        wait_for(lambda: server.statistics().oversized == 2, what="both datagrams dropped")
