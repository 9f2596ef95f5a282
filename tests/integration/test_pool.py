"""ThreadPoolMixIn: bounded threads, overload policies, resizing, nothing lost."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import pytest

import sockserve
from sockserve.address import bind_sockets
from sockserve.concurrency.pool import PoolStatistics
from sockserve.stats import DrainReport
from sockserve.testing import serve_in_thread
from tests.helpers import (IO_TIMEOUT, client_ctx, client_hello, connect, fill_datagram_queue,
                           recv_all, wait_for)


class Gate:
    """Handlers block in ``enter()`` until ``release()``; counts how many ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entered = threading.Semaphore(0)
        self.released = threading.Event()
        self.running = 0
        self.max_running = 0

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.entered.release()
        assert self.released.wait(IO_TIMEOUT)
        with self.lock:
            self.running -= 1

    def wait_entered(self, count: int) -> None:
        for _ in range(count):
            assert self.entered.acquire(timeout=IO_TIMEOUT), "handler did not start"


def gated_echo(gate: Gate) -> type[sockserve.StreamRequestHandler]:
    class Handler(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            gate.enter()
            self.wfile.write(line)
    return Handler


def pool_server(handler: type, *, address: Any = ("127.0.0.1", 0),
                server_class: type = sockserve.ThreadPoolTCPServer,
                **settings: Any) -> sockserve.ThreadPoolTCPServer:
    server_type = type("Server", (server_class,), settings)
    server: sockserve.ThreadPoolTCPServer = server_type(address, handler)
    return server


def pool_stats(server: sockserve.ThreadPoolMixIn) -> PoolStatistics:
    stats = server.statistics().pool
    assert stats is not None
    return stats


def worker_threads(server: sockserve.ThreadPoolMixIn) -> list[threading.Thread]:
    prefix = f"{type(server).__name__}-worker"
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class DatagramEcho(sockserve.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def test_tcp_echo() -> None:
    with serve_in_thread(pool_server(Echo)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"a\nb\n")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"a\nb\n"
    assert pool_stats(server).completed == 1  # closing waited for the worker


def test_unix_stream_and_datagram_echo(unix_path: str) -> None:
    with serve_in_thread(pool_server(Echo, address=unix_path,
                                     server_class=sockserve.ThreadPoolUnixStreamServer)):
        with connect(unix_path, socket.AF_UNIX) as client:
            client.sendall(b"unix\n")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"unix\n"
    dgram_path, client_path = unix_path + ".d", unix_path + ".c"
    with serve_in_thread(pool_server(DatagramEcho, address=dgram_path,
                                     server_class=sockserve.ThreadPoolUnixDatagramServer)):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.bind(client_path)
            client.settimeout(IO_TIMEOUT)
            client.sendto(b"dgram", dgram_path)
            assert client.recv(100) == b"dgram"


def test_udp_echo_many_packets() -> None:
    with serve_in_thread(pool_server(DatagramEcho, server_class=sockserve.ThreadPoolUDPServer,
                                     max_workers=4)) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(IO_TIMEOUT)
            for n in range(100):
                client.sendto(b"%d" % n, server.server_address)
                assert client.recv(100) == b"%d" % n


def test_pause_policy_bounds_threads_and_loses_nothing() -> None:
    gate = Gate()
    server = pool_server(gated_echo(gate), max_workers=2, max_queue=1, request_queue_size=16)
    clients: list[socket.socket] = []
    with serve_in_thread(server):
        try:
            for n in range(8):
                clients.append(connect(server.server_address))
                clients[-1].sendall(b"%d\n" % n)
            gate.wait_entered(2)
            stats = pool_stats(server)
            assert stats.busy == 2 and stats.queued <= 1
            assert len(worker_threads(server)) == 2
            gate.released.set()
            replies = [recv_all(c) for c in clients]
        finally:
            for c in clients:
                c.close()
    assert replies == [b"%d\n" % n for n in range(8)]
    assert gate.max_running == 2
    assert server.statistics().rejected == 0
    assert pool_stats(server).completed == 8


@pytest.mark.parametrize("busy_reply, expected", [(b"busy\n", b"busy\n"), (None, b"")])
def test_reject_policy_answers_busy_and_counts(busy_reply: bytes | None,
                                               expected: bytes) -> None:
    gate = Gate()
    server = pool_server(gated_echo(gate), max_workers=1, max_queue=0, overload="reject",
                         busy_reply=busy_reply)
    with serve_in_thread(server):
        with connect(server.server_address) as first:
            first.sendall(b"first\n")
            gate.wait_entered(1)
            with connect(server.server_address) as second:
                assert recv_all(second) == expected
            assert server.statistics().rejected == 1
            gate.released.set()
            assert recv_all(first) == b"first\n"


def held_datagram_echo(release: threading.Event) -> type[sockserve.DatagramRequestHandler]:
    """Echoes each datagram; b"hold" only once *release* is set."""
    class Hold(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            if self.packet == b"hold":
                assert release.wait(IO_TIMEOUT)
            self.wfile.write(self.packet)
    return Hold


def test_reject_policy_for_datagrams() -> None:
    release = threading.Event()
    server = pool_server(held_datagram_echo(release), server_class=sockserve.ThreadPoolUDPServer,
                         max_workers=1, max_queue=0, overload="reject", busy_reply=b"busy")
    with serve_in_thread(server):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(IO_TIMEOUT)
            client.sendto(b"hold", server.server_address)
            client.sendto(b"next", server.server_address)
            assert client.recv(100) == b"busy"
            release.set()
            assert client.recv(100) == b"hold"
    assert server.statistics().rejected == 1


def test_a_busy_reply_to_a_datagram_client_that_does_not_read_never_blocks_the_loop(
        unix_path: str) -> None:
    # Its receive queue is full: the busy reply is dropped, and the loop serves on.
    release = threading.Event()
    server = pool_server(held_datagram_echo(release),
                         server_class=sockserve.ThreadPoolUnixDatagramServer,
                         address=unix_path, max_workers=1, max_queue=0, overload="reject",
                         busy_reply=b"busy")
    with serve_in_thread(server), \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sleeper, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as asker:
        sleeper.bind(unix_path + ".s")
        asker.bind(unix_path + ".a")
        asker.settimeout(IO_TIMEOUT)
        asker.sendto(b"hold", unix_path)  # takes the only worker
        wait_for(lambda: pool_stats(server).busy == 1, what="the worker held")
        fill_datagram_queue(unix_path + ".s")
        for _ in range(3):
            sleeper.sendto(b"more", unix_path)  # rejected; no room for the busy reply
        wait_for(lambda: server.statistics().rejected == 3, what="three rejected")
        asker.sendto(b"next", unix_path)
        assert asker.recv(100) == b"busy"  # the loop still serves
        release.set()
        assert asker.recv(100) == b"hold"
    for name in (".s", ".a"):
        os.unlink(unix_path + name)


def test_resize_while_serving() -> None:
    gate = Gate()
    server = pool_server(gated_echo(gate), max_workers=1, max_queue=0)
    clients: list[socket.socket] = []
    with serve_in_thread(server):
        try:
            for n in range(3):
                clients.append(connect(server.server_address))
                clients[-1].sendall(b"%d\n" % n)
            gate.wait_entered(1)
            server.set_max_workers(3)  # the two waiting clients now get a worker each
            gate.wait_entered(2)
            assert gate.running == 3
            server.set_max_workers(1)
            gate.released.set()
            assert [recv_all(c) for c in clients] == [b"0\n", b"1\n", b"2\n"]
        finally:
            for c in clients:
                c.close()
        # Surplus workers leave after their request; one stays, idle.
        for thread in worker_threads(server):
            thread.join(0.2)
        assert len(worker_threads(server)) == 1
        assert pool_stats(server).max_workers == 1


def test_handler_errors_are_logged_and_workers_survive(caplog: pytest.LogCaptureFixture) -> None:
    class Boom(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            if self.rfile.readline() == b"boom\n":
                raise RuntimeError("on purpose")
            self.wfile.write(b"ok\n")

    with serve_in_thread(pool_server(Boom, max_workers=1)) as server:
        for line, expected in [(b"boom\n", b""), (b"fine\n", b"ok\n"), (b"boom\n", b"")]:
            with connect(server.server_address) as client:
                client.sendall(line)
                assert recv_all(client) == expected
    errors = [r for r in caplog.records if r.name == "sockserve.server"]
    assert len(errors) == 2 and all(r.exc_info for r in errors)


def test_server_close_waits_for_queued_requests() -> None:
    gate = Gate()
    server = pool_server(gated_echo(gate), max_workers=1, max_queue=4)
    clients = []
    for n in range(3):
        clients.append(connect(server.server_address))
        clients[-1].sendall(b"%d\n" % n)
    try:
        # handle_request() accepts and queues without a serving loop.
        for _ in range(3):
            server.handle_request()
        gate.wait_entered(1)
        gate.released.set()
        server.server_close()  # must run the two queued requests before returning
        assert pool_stats(server).completed == 3
        assert [recv_all(c) for c in clients] == [b"0\n", b"1\n", b"2\n"]
    finally:
        for c in clients:
            c.close()


def test_bad_settings_are_refused() -> None:
    with pool_server(Echo, overload="drop") as server:
        with pytest.raises(ValueError, match="overload"):
            server.process_request(None, None)
    with pool_server(Echo, max_workers=0) as server:
        with pytest.raises(ValueError, match="max_workers"):
            server.pool


def run_concurrently(count: int, action: Callable[[int], bytes]) -> list[bytes]:
    results: list[bytes] = [b""] * count
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, action(n)))
               for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(IO_TIMEOUT * 2)
    return results


def test_many_clients_never_more_threads_than_max_workers() -> None:
    seen: list[int] = []

    class Count(Echo):
        def handle(self) -> None:
            seen.append(len(worker_threads(self.server)))
            super().handle()

    server = pool_server(Count, max_workers=4, max_queue=8, request_queue_size=128)

    def one(n: int) -> bytes:
        with connect(server.server_address) as client:
            client.sendall(b"%d\n" % n)
            client.shutdown(socket.SHUT_WR)
            return recv_all(client)

    with serve_in_thread(server):
        results = run_concurrently(60, one)
    assert results == [b"%d\n" % n for n in range(60)]
    assert max(seen) <= 4



# -- the serving loop never waits for the pool ----------------------------------------

def stop_in_thread(server: sockserve.ThreadPoolTCPServer) -> threading.Thread:
    """shutdown() in a thread, so that a test can tell when it does not return."""
    stopper = threading.Thread(target=server.shutdown)
    stopper.start()
    return stopper


def test_two_listeners_ready_at_once_take_only_the_room_there_is() -> None:
    gate = Gate()
    socks = bind_sockets("127.0.0.1:0") + bind_sockets("127.0.0.1:0")
    server_type: Any = type("Server", (sockserve.ThreadPoolTCPServer,),
                            {"max_workers": 1, "max_queue": 0})
    server = server_type.from_sockets(socks, gated_echo(gate))
    first, second = (connect(address) for address in server.server_addresses)
    try:
        first.sendall(b"1\n")
        second.sendall(b"2\n")  # both wait in their backlogs before the loop starts
        with serve_in_thread(server):
            gate.wait_entered(1)
            stopper = stop_in_thread(server)  # the loop must not be stuck in submit()
            stopper.join(IO_TIMEOUT)
            assert not stopper.is_alive(), "the serving loop waits for a pool slot"
            assert server.statistics().accepted == 1  # the other one stayed in its backlog
            gate.released.set()
    finally:
        gate.released.set()
        first.close()
        second.close()


def test_shrinking_the_pool_does_not_stall_the_loop() -> None:
    gate = Gate()
    server = pool_server(gated_echo(gate), max_workers=2, max_queue=0)
    with serve_in_thread(server):
        with connect(server.server_address) as held:
            held.sendall(b"held\n")
            gate.wait_entered(1)
            server.set_max_workers(1)  # full now: the loop stops accepting
            with connect(server.server_address) as waiting:
                waiting.sendall(b"waiting\n")
                stopper = stop_in_thread(server)
                stopper.join(IO_TIMEOUT)
                assert not stopper.is_alive(), "the serving loop waits for a pool slot"
                gate.released.set()
                assert recv_all(held) == b"held\n"


def test_draining_the_backlog_of_a_full_pool_keeps_its_deadline() -> None:
    entered = threading.Semaphore(0)

    class Persistent(Echo):
        def setup(self) -> None:
            super().setup()
            entered.release()

    server = pool_server(Persistent, max_workers=1, max_queue=0)
    with serve_in_thread(server):
        with connect(server.server_address) as held:
            assert entered.acquire(timeout=IO_TIMEOUT)
            with connect(server.server_address) as in_backlog:
                in_backlog.sendall(b"late\n")
                reports: list[DrainReport] = []
                drainer = threading.Thread(
                    target=lambda: reports.append(server.drain(0.2, backlog=True)))
                drainer.start()
                drainer.join(IO_TIMEOUT)
                assert not drainer.is_alive(), "drain() overran its deadline"
                # Both connections were cut at the deadline; the one from the backlog
                # was taken in and, queued past the limit, is served once a worker is
                # free: it reads the end of its connection.
                assert reports[0].cut == 2
                assert recv_all(held) == b""
                assert recv_all(in_backlog) in (b"", b"late\n")


def test_tls_busy_reply_is_sent_over_tls(ca: Any, server_ctx: ssl.SSLContext,
                                         caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate()
    server = pool_server(gated_echo(gate), max_workers=1, max_queue=0, overload="reject",
                         busy_reply=b"busy\n", ssl_context=server_ctx)
    client_context = client_ctx(ca)
    with serve_in_thread(server):
        with client_context.wrap_socket(connect(server.server_address),
                                        server_hostname="127.0.0.1") as first:
            first.sendall(b"first\n")
            gate.wait_entered(1)
            with client_context.wrap_socket(connect(server.server_address),
                                            server_hostname="127.0.0.1") as second:
                assert second.recv(100) == b"busy\n"
            gate.released.set()
            assert first.recv(100) == b"first\n"
    assert server.statistics().rejected == 1
    assert not [r for r in caplog.records if r.exc_info], "the busy reply raised"


def test_a_pool_slot_freed_while_a_handshake_waits_resumes_accepting(
        ca: Any, server_ctx: ssl.SSLContext) -> None:
    # max_workers 2: one busy handler and one client in its TLS handshake (it has sent
    # part of its ClientHello) fill the pool's room, so the loop pauses.  When the
    # handler ends, the loop must be woken at once (not after poll_interval, here
    # never, nor after the handshake timeout).
    gate = Gate()
    server = pool_server(gated_echo(gate), max_workers=2, max_queue=0,
                         ssl_context=server_ctx, handshake_timeout=60.0)
    client_context = client_ctx(ca)
    with serve_in_thread(server, poll_interval=None):
        with client_context.wrap_socket(connect(server.server_address),
                                        server_hostname="127.0.0.1") as busy, \
                connect(server.server_address) as slow:
            slow.sendall(client_hello(ca)[:10])
            busy.sendall(b"busy\n")
            gate.wait_entered(1)
            wait_for(lambda: server.statistics().tls_in_progress == 1, what="the handshake")
            gate.released.set()
            assert recv_all(busy) == b"busy\n"
            with client_context.wrap_socket(connect(server.server_address),
                                            server_hostname="127.0.0.1") as third:
                third.sendall(b"third\n")
                assert third.recv(100) == b"third\n"


def test_server_close_answers_queued_datagrams_before_closing_the_socket() -> None:
    release = threading.Event()
    entered = threading.Event()

    class Hold(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            if self.packet == b"hold":
                entered.set()
                assert release.wait(IO_TIMEOUT)
            self.wfile.write(self.packet)

    server = pool_server(Hold, server_class=sockserve.ThreadPoolUDPServer, max_workers=1,
                         max_queue=4)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(IO_TIMEOUT)
        with serve_in_thread(server):
            client.sendto(b"hold", server.server_address)
            assert entered.wait(IO_TIMEOUT)
            for packet in (b"q1", b"q2"):
                client.sendto(packet, server.server_address)
            wait_for(lambda: pool_stats(server).queued == 2, what="two queued datagrams")
            server.shutdown()
            closer = threading.Thread(target=server.server_close)
            closer.start()
            release.set()
            closer.join(IO_TIMEOUT)
        assert [client.recv(100) for _ in range(3)] == [b"hold", b"q1", b"q2"]
