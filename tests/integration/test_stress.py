"""Long runs, outside the default suite: ``python3 dev.py test -m stress``."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import threading
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

import sockserve
from sockserve import aio
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, connect, recv_all
from tests.integration.test_async import LOOPS, LoopName
from tests.integration.test_pool import DatagramEcho, Echo

REQUESTS = 100_000


class Tiny(sockserve.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"k")


@pytest.mark.stress
@pytest.mark.timeout(600)
def test_threading_server_memory_stays_flat_over_100k_requests() -> None:
    def run(count: int) -> None:
        for _ in range(count):
            with connect(server.server_address) as client:
                client.shutdown(socket.SHUT_WR)
                assert client.recv(1) == b"k"

    with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), Tiny)) as server:
        run(5_000)  # warm up: caches, the allocator's arenas
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            run(REQUESTS)
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        # A Thread object (with its locks and dict) is over 1 KiB: keeping them would
        # add 100+ MiB here.
        assert after - before < 256 * 1024, (before, after)


def short_then_persistent(address: Any, n: int, round_: int, exchanges: int) -> None:
    """One round of an echo client: a short connection, then a persistent one."""
    with connect(address) as short:
        short.sendall(b"%d %d\n" % (n, round_))
        short.shutdown(socket.SHUT_WR)
        assert recv_all(short) == b"%d %d\n" % (n, round_)
    with connect(address) as persistent:
        replies = persistent.makefile("rb")
        for i in range(exchanges):
            persistent.sendall(b"%d\n" % i)
            assert replies.readline() == b"%d\n" % i
        replies.close()


def run_clients(count: int, client: Callable[[int], None]) -> None:
    """``client(n)`` for n in range(*count*), each on its own thread; all must end,
    and none may fail."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            client(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(IO_TIMEOUT * 20)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


@pytest.mark.stress
@pytest.mark.timeout(600)
def test_thread_pool_under_mixed_load_loses_nothing_and_stays_bounded() -> None:
    # 16 clients, each doing 20 rounds of a short connection and a persistent one with
    # 10 exchanges, against 8 workers and a queue of 64 ("pause"): everything is
    # echoed, the pool never has more than 8 threads, and no connection is rejected.
    class Server(sockserve.ThreadPoolTCPServer):
        max_workers = 8
        max_queue = 64
        request_queue_size = 128

    def client(n: int) -> None:
        for round_ in range(20):
            short_then_persistent(server_address, n, round_, 10)

    with serve_in_thread(Server(("127.0.0.1", 0), Echo)) as server:
        server_address = server.server_address
        run_clients(16, client)
        pool = server.statistics().pool
        assert pool is not None and pool.workers <= 8
    stats = server.statistics()  # closed: every handler has returned
    assert stats.pool is not None and stats.pool.completed == 16 * 20 * 2
    assert stats.rejected == 0


def unanswered_datagrams(address: Any, n: int, reply: Callable[[bytes], bytes]) -> int:
    """Client *n* sends 2,000 datagrams, 20 in flight, and counts those whose expected
    reply (``reply(payload)``) never came: a lost or a wrong reply leaves one behind
    (recv() then times out)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        wanted = set()
        try:
            for i in range(2_000):
                payload = b"%d:%d" % (n, i)
                sock.sendto(payload, address)
                wanted.add(reply(payload))
                if len(wanted) >= 20:
                    wanted.discard(sock.recv(100))
            while wanted:
                wanted.discard(sock.recv(100))
        except TimeoutError:
            pass
        return len(wanted)


@pytest.mark.stress
@pytest.mark.timeout(600)
def test_udp_thread_pool_answers_every_datagram() -> None:
    # 8 clients, 2,000 datagrams each, 20 in flight per client: every one answered.
    class Server(sockserve.ThreadPoolUDPServer):
        max_workers = 16
        max_queue = 1024

    missing: list[int] = []
    with serve_in_thread(Server(("127.0.0.1", 0), DatagramEcho)) as server:
        run_clients(8, lambda n: missing.append(
            unanswered_datagrams(server.server_address, n, lambda payload: payload)))
        stats = server.statistics()
    assert missing == [0] * 8
    assert stats.pool is not None and stats.pool.workers <= 16


@pytest.mark.stress
@pytest.mark.timeout(600)
def test_async_datagram_workers_answer_every_datagram_in_a_fresh_context() -> None:
    # 8 clients, 2,000 datagrams each, 20 in flight per client.  Every 7th handler
    # waits (keeping its worker while the next datagrams go to others), every 5th
    # sets a context variable (ending its worker): every reply must still report
    # the variable unset, as a fresh context has it.
    var: contextvars.ContextVar[bytes] = contextvars.ContextVar("var", default=b"unset")

    class Mixed(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            number = int(self.packet.split(b":")[1])
            seen = var.get()
            if number % 7 == 0:
                await asyncio.sleep(0)
            if number % 5 == 0:
                var.set(b"set")
            self.send(self.packet + b"=" + seen)

    missing: list[int] = []
    with serve_in_thread(aio.AsyncUDPServer(("127.0.0.1", 0), Mixed)) as server:
        run_clients(8, lambda n: missing.append(
            unanswered_datagrams(server.server_address, n, lambda p: p + b"=unset")))
        stats = server.statistics()
    assert missing == [0] * 8
    assert stats.accepted == 8 * 2_000


class SlowEveryFifth(aio.AsyncDatagramRequestHandler):
    """Echoes; every 5th datagram after a wait, so that handlers are still running
    when their worker stops reading and must reply after it."""

    async def handle(self) -> None:
        if int(self.packet.split(b":")[1]) % 5 == 0:
            await asyncio.sleep(0.002)
        self.send(self.packet)


@pytest.mark.stress
@pytest.mark.timeout(600)
@pytest.mark.parametrize("loop_name", LOOPS)
def test_recycling_async_datagram_workers_lose_nothing(loop_name: LoopName) -> None:
    # 8 clients, 2,000 datagrams each, 20 in flight per client, to two workers that
    # are replaced every 300 datagrams or so (about 50 times): every datagram answered.
    class Server(sockserve.PreForkMixIn, aio.AsyncMixIn, sockserve.UDPServer):
        workers = 2
        max_requests = 300
        graceful_timeout = IO_TIMEOUT

    missing: list[int] = []
    server = Server(("127.0.0.1", 0), SlowEveryFifth, loop_factory=loop_name)
    with serve_in_thread(server):
        run_clients(8, lambda n: missing.append(
            unanswered_datagrams(server.server_address, n, lambda payload: payload)))
    stats = server.statistics().workers
    assert missing == [0] * 8
    assert stats is not None and stats.crashed == 0
    # (A worker may serve a batch past its 300 that the loop had already read.)
    assert stats.spawned >= 2 + 8 * 2_000 // 600


@pytest.mark.stress
@pytest.mark.timeout(600)
def test_green_server_under_mixed_load_loses_nothing_on_two_threads() -> None:
    # 32 clients, each doing 20 rounds of a short connection, a persistent one with
    # 20 exchanges and one 256 KiB message (replies larger than the socket buffers
    # while the client is still sending): everything echoed, two server threads.
    big = bytes(range(11, 256)) * 1070  # no newline inside: one line of 256 KiB

    class Server(sockserve.GreenTCPServer):
        request_queue_size = 256

    def client(n: int) -> None:
        for round_ in range(20):
            short_then_persistent(server_address, n, round_, 20)
            with connect(server_address) as bulk:
                sender = threading.Thread(target=bulk.sendall, args=(big + b"\n",))
                sender.start()
                received = bulk.makefile("rb").readline()
                sender.join(IO_TIMEOUT)
                assert received == big + b"\n"

    threads_before = threading.active_count()
    with serve_in_thread(Server(("127.0.0.1", 0), Echo)) as server:
        server_address = server.server_address
        run_clients(32, client)
        server_threads = threading.active_count() - threads_before
    assert server_threads == 2  # the serving loop and the hub
    assert server.statistics().connections == 0
