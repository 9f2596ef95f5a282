"""PreForkMixIn: worker processes that accept, die and are replaced, recycle, stop."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve.address import bind_sockets
from sockserve.concurrency.prefork import Supervisor, SupervisorStatistics
from sockserve.stats import DrainReport
from sockserve.testing import serve_in_thread
from tests.helpers import (IO_TIMEOUT, blocked_sending, client_ctx, connect, fill_datagram_queue,
                           listening_sockets, recv_all, wait_for)


class Pid(sockserve.StreamRequestHandler):
    """Replies with the serving process's pid; "crash" kills the worker."""

    def handle(self) -> None:
        line = self.rfile.readline()
        if line == b"crash\n":
            os._exit(3)
        if line == b"stop all\n":
            self.server.shutdown()
        self.wfile.write(b"%d\n" % os.getpid())


def prefork(handler: type = Pid, server_class: type = sockserve.PreForkTCPServer,
            address: Any = ("127.0.0.1", 0), **settings: Any) -> Any:
    settings.setdefault("graceful_timeout", IO_TIMEOUT)
    return type("Server", (server_class,), settings)(address, handler)


def workers(server: sockserve.PreForkMixIn) -> SupervisorStatistics:
    stats = server.statistics().workers
    assert stats is not None
    return stats


def ask(address: Any, line: bytes = b"pid\n", family: int = socket.AF_INET) -> bytes:
    with connect(address, family) as client:
        client.sendall(line)
        return recv_all(client)


def answered_by_a_worker(server: sockserve.PreForkMixIn, reply: bytes) -> None:
    """*reply* (a pid) came from one of *server*'s workers; a new worker may answer
    before the supervisor's thread has recorded its fork, so this waits for that."""
    pid = int(reply)
    wait_for(lambda: pid in server.worker_pids(), what=f"worker {pid} among the workers")


def test_workers_serve_and_the_supervisor_does_not() -> None:
    with serve_in_thread(prefork(workers=2)) as server:
        pids = {int(ask(server.server_address)) for _ in range(10)}
        wait_for(lambda: len(server.worker_pids()) == 2, what="two workers")
        assert os.getpid() not in pids
        assert pids <= set(server.worker_pids())
    stats = workers(server)
    assert stats.workers == 0 and stats.crashed == 0 and stats.exited == 2


def test_a_crashed_worker_is_replaced() -> None:
    with serve_in_thread(prefork(workers=1)) as server:
        first = int(ask(server.server_address))
        assert ask(server.server_address, b"crash\n") == b""
        # The next request waits in the backlog until the replacement accepts it.
        second = int(ask(server.server_address))
        assert second != first
        stats = workers(server)
        assert stats.crashed == 1 and stats.spawned == 2


def test_max_requests_recycles_workers() -> None:
    with serve_in_thread(prefork(workers=1, max_requests=3)) as server:
        pids = [int(ask(server.server_address)) for _ in range(7)]
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]
    assert workers(server).exited >= 2


def test_graceful_stop_finishes_the_request_in_flight() -> None:
    class TwoLines(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            self.wfile.write(b"started\n")
            self.wfile.write(self.rfile.readline().upper())

    server = prefork(TwoLines, workers=1)
    with serve_in_thread(server):
        client = connect(server.server_address)
        with client:
            client.sendall(b"one\n")
            assert client.makefile("rb").readline() == b"started\n"
            stopper = threading.Thread(target=server.shutdown)
            stopper.start()
            wait_for(lambda: workers(server).target == 0, what="stop to begin")
            client.sendall(b"two\n")
            assert recv_all(client) == b"TWO\n"
            stopper.join(IO_TIMEOUT)
            assert not stopper.is_alive()
    stats = workers(server)
    assert stats.exited == 1 and stats.crashed == 0


def test_stuck_worker_is_killed_after_the_graceful_timeout() -> None:
    class Stuck(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"stuck\n")
            self.rfile.read()  # until the client closes: never, during the test

    server = prefork(Stuck, workers=1, graceful_timeout=0.2)
    with connect(server.server_address) as client:
        with serve_in_thread(server):
            assert client.makefile("rb").readline() == b"stuck\n"
        stats = workers(server)
        assert stats.crashed == 1 and stats.workers == 0


def test_shutdown_from_a_workers_handler_stops_the_whole_server() -> None:
    server = prefork(workers=2)
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    try:
        assert ask(server.server_address, b"stop all\n").strip().isdigit()
        loop.join(IO_TIMEOUT)
        assert not loop.is_alive()
    finally:
        server.server_close()
    assert workers(server).workers == 0


def test_set_workers_grows_and_shrinks() -> None:
    with serve_in_thread(prefork(workers=1)) as server:
        ask(server.server_address)
        server.set_workers(3)
        wait_for(lambda: len(server.worker_pids()) == 3, what="three workers")
        server.set_workers(1)
        wait_for(lambda: len(server.worker_pids()) == 1, what="one worker")
        assert ask(server.server_address).strip().isdigit()
    assert workers(server).crashed == 0
    with pytest.raises(ValueError):
        server.set_workers(0)


def test_udp_and_unix_workers(unix_path: str) -> None:
    class DatagramPid(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"%d" % os.getpid())

    with serve_in_thread(prefork(DatagramPid, sockserve.PreForkUDPServer)) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(IO_TIMEOUT)
            client.sendto(b"x", server.server_address)
            assert int(client.recv(100)) != os.getpid()
    with serve_in_thread(prefork(Pid, sockserve.PreForkUnixStreamServer, unix_path)):
        assert int(ask(unix_path, family=socket.AF_UNIX)) != os.getpid()
    assert not os.path.exists(unix_path)  # removed by the supervisor, not a worker


def test_workers_with_a_thread_pool_each() -> None:

    class Hold(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            # Two requests held open at once in one worker process: only a pool can.
            self.wfile.write(b"%d %d\n" % (os.getpid(), threading.get_ident()))
            self.rfile.readline()

    class Server(sockserve.PreForkMixIn, sockserve.ThreadPoolMixIn, sockserve.TCPServer):
        workers = 1
        max_workers = 4
        graceful_timeout = IO_TIMEOUT

    with serve_in_thread(Server(("127.0.0.1", 0), Hold)) as server:
        first, second = connect(server.server_address), connect(server.server_address)
        with first, second:
            a = first.makefile("rb").readline().split()
            b = second.makefile("rb").readline().split()
            assert a[0] == b[0] and a[1] != b[1]  # same worker, two threads
            first.sendall(b"done\n")
            second.sendall(b"done\n")


def test_reload_replaces_every_worker_one_at_a_time() -> None:
    with serve_in_thread(prefork(workers=3)) as server:
        wait_for(lambda: len(server.worker_pids()) == 3, what="three workers")
        old = set(server.worker_pids())
        server.reload()
        wait_for(lambda: not old & set(server.worker_pids())
                 and len(server.worker_pids()) == 3, what="all replaced")
        assert int(ask(server.server_address)) not in old
    stats = workers(server)
    assert stats.spawned == 6  # three replacements and stats.crashed == 0


def test_each_worker_listens_on_its_own_reuse_port_socket_too() -> None:
    with serve_in_thread(prefork(workers=2, reuse_port_per_worker=True)) as server:
        port = server.server_address[1]
        wait_for(lambda: listening_sockets(port) == 3, what="the shared socket and two own")
        # The kernel spreads connections over the three sockets by a hash of the
        # client's address: 50 clients all missing one worker has odds of (2/3)**50.
        pids = {int(ask(server.server_address)) for _ in range(50)}
        assert pids == set(server.worker_pids())


def test_udp_workers_with_reuse_port_sockets() -> None:
    class DatagramPid(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"%d" % os.getpid())

    server = prefork(DatagramPid, sockserve.PreForkUDPServer, workers=2,
                     reuse_port_per_worker=True)
    with serve_in_thread(server):
        port = server.server_address[1]
        wait_for(lambda: listening_sockets(port, "udp") == 3, what="three UDP sockets")
        pids = set()
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:  # a new port
                client.settimeout(IO_TIMEOUT)
                client.sendto(b"pid", server.server_address)
                pids.add(int(client.recv(100)))
        assert pids == set(server.worker_pids())


def test_a_recycled_worker_serves_what_waits_on_its_own_socket() -> None:
    # Connections the kernel queued on a worker's own socket die with that socket, so
    # a stopping worker accepts and serves them first.
    class Held(Pid):
        def handle(self) -> None:
            if self.rfile.readline() == b"hold\n":
                self.wfile.write(b"held\n")
                self.rfile.readline()
            self.wfile.write(b"%d\n" % os.getpid())

    with serve_in_thread(prefork(Held, workers=1, max_requests=1, request_queue_size=64,
                                 reuse_port_per_worker=True)) as server:
        port = server.server_address[1]
        wait_for(lambda: listening_sockets(port) == 2, what="the shared socket and one own")
        with connect(server.server_address) as first:
            first.sendall(b"hold\n")
            assert first.recv(100) == b"held\n"
            # Hashed over two sockets: all 20 missing the worker's own has odds 2**-20.
            waiting = [connect(server.server_address) for _ in range(20)]
            try:
                for client in waiting:
                    client.sendall(b"pid\n")
                first.sendall(b"go\n")
                worker = int(recv_all(first))
                replies = [recv_all(client) for client in waiting]
            finally:
                for client in waiting:
                    client.close()
    assert all(reply.strip().isdigit() for reply in replies), replies
    # Those on its own socket were served by the worker before it went; those on the
    # shared socket by its replacement.
    assert worker in {int(reply) for reply in replies}


def test_reuse_port_per_worker_leaves_unix_sockets_shared(unix_path: str) -> None:
    server = prefork(server_class=sockserve.PreForkUnixStreamServer, address=unix_path,
                     workers=2, reuse_port_per_worker=True)
    with serve_in_thread(server):
        answered_by_a_worker(server, ask(unix_path, family=socket.AF_UNIX))


def test_worker_cpu_affinity_spreads_workers_and_replacements_over_the_cpus() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    expected = sorted((allowed * 2)[:2])  # two CPUs, or one CPU twice

    def cpus_of_workers(server: sockserve.PreForkMixIn) -> list[int] | None:
        try:
            sets = [os.sched_getaffinity(pid) for pid in server.worker_pids()]
        except OSError:  # a worker exited between the two calls
            return None
        if len(sets) != 2 or any(len(cpus) != 1 for cpus in sets):
            return None  # not started, or not pinned yet
        return sorted(cpu for cpus in sets for cpu in cpus)

    with serve_in_thread(prefork(workers=2, worker_cpu_affinity=True)) as server:
        wait_for(lambda: cpus_of_workers(server) == expected, what="workers pinned apart")
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in server.worker_pids()
                 and cpus_of_workers(server) == expected, what="the replacement on the freed CPU")
        assert int(ask(server.server_address)) in server.worker_pids()


def test_own_reuse_port_sockets_keep_a_dual_stack_socket_dual_stack() -> None:
    try:
        [sock] = bind_sockets("[::]:0", reuse_port=True)
    except OSError as exc:
        pytest.skip(f"no IPv6 here: {exc}")
    if sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
        sock.close()
        pytest.skip("no dual-stack sockets here")
    class Server(sockserve.PreForkTCPServer):
        workers = 2
        reuse_port_per_worker = True
        graceful_timeout = IO_TIMEOUT

    server = Server.from_socket(sock, Pid)
    port = server.server_address[1]
    with serve_in_thread(server):
        wait_for(lambda: listening_sockets(port) == 3, what="the shared socket and two own")
        # IPv4 clients reach the workers' own IPv6 sockets too: 50 missing one worker
        # has odds of (2/3)**50.
        pids = {int(ask(("127.0.0.1", port))) for _ in range(50)}
        assert pids == set(server.worker_pids())


# -- failures around the workers ----------------------------------------------------

def test_a_failed_fork_is_retried_and_the_server_keeps_serving(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_fork = os.fork
    forks = []

    def fork_failing_once() -> int:
        forks.append(1)
        if len(forks) == 2:  # the replacement's fork: the process limit, say
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_fork()

    monkeypatch.setattr(os, "fork", fork_failing_once)
    with serve_in_thread(prefork(workers=1)) as server:
        first = int(ask(server.server_address))
        assert ask(server.server_address, b"crash\n") == b""
        second = int(ask(server.server_address))  # waits in the backlog for the retry
        assert second != first
        assert len(forks) == 3
    # serve_in_thread() raises what serve_forever() raised: nothing did.


def test_a_worker_reaped_by_someone_else_counts_as_a_crash() -> None:
    # With SIGCHLD ignored the kernel reaps children itself and waitpid() cannot say
    # how a worker ended: it counts as a crash, so that a worker that cannot start is
    # replaced after the back-off delay, not in a fork storm.
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        supervisor = Supervisor(lambda place: os._exit(3), target=1)
        pid = supervisor.spawn()
        wait_for(lambda: not process_exists(pid), what="the worker to end and be reaped")
        supervisor.reap()
        stats = supervisor.statistics()
        assert stats.crashed == 1 and stats.exited == 0
        supervisor.fill()
        assert supervisor.statistics().spawned == 1  # not at once: backing off
    finally:
        signal.signal(signal.SIGCHLD, previous)
        supervisor.stop(IO_TIMEOUT)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_worker_forked_while_the_parent_holds_its_pool_lock_still_serves() -> None:
    # statistics() in the supervisor makes a pool there; a worker forked while another
    # thread holds the pool's lock must not inherit it held (and hang at its first
    # request).
    server_class = type("Server", (sockserve.PreForkMixIn, sockserve.ThreadPoolMixIn,
                                   sockserve.TCPServer), {})
    with serve_in_thread(prefork(server_class=server_class, workers=1)) as server:
        first = int(ask(server.server_address))
        server.statistics()  # makes the supervisor's pool
        with server.pool._lock:
            assert ask(server.server_address, b"crash\n") == b""
            wait_for(lambda: server.worker_pids() not in ([], [first]),
                     what="the replacement worker")
        assert int(ask(server.server_address)) != first


def test_workers_end_when_the_supervisor_is_killed() -> None:
    code = (
        "import os, sys, sockserve\n"
        "class Server(sockserve.PreForkTCPServer):\n"
        "    workers = 2\n"
        "    def service_actions(self):\n"
        "        if len(self.worker_pids()) == 2 and not self.told:\n"
        "            self.told = True\n"
        "            print(*self.worker_pids(), flush=True)\n"
        "    told = False\n"
        "Server(('127.0.0.1', 0), sockserve.StreamRequestHandler).serve_forever(0.05)\n"
    )
    worker_pids: list[int] = []
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) as supervisor:
        try:
            assert supervisor.stdout is not None
            worker_pids = [int(pid) for pid in supervisor.stdout.readline().split()]
            assert len(worker_pids) == 2
            supervisor.kill()
            supervisor.wait(IO_TIMEOUT)
            wait_for(lambda: not any(process_exists(pid) for pid in worker_pids),
                     what="the orphaned workers to stop")
        finally:
            supervisor.kill()
            for pid in worker_pids:
                if process_exists(pid):
                    os.kill(pid, signal.SIGKILL)


def test_datagram_workers_wait_for_room_to_reply(unix_path: str) -> None:
    # A client that reads slower than it is answered: its receive queue is full, and
    # the worker's reply must wait for room (as in a plain UnixDatagramServer), not
    # fail with EAGAIN because the shared socket is non-blocking.
    class TwoReplies(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            self.socket.sendto(b"a" + self.packet, self.client_address)
            self.wfile.write(b"b" + self.packet)

    client_path = unix_path + ".c"
    server = prefork(TwoReplies, sockserve.PreForkUnixDatagramServer, unix_path, workers=1)
    with serve_in_thread(server), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(client_path)
        client.settimeout(IO_TIMEOUT)
        filled = fill_datagram_queue(client_path)
        requests = [b"%d" % n for n in range(8)]
        for request in requests:
            client.sendto(request, unix_path)
        wait_for(lambda: len(server.worker_pids()) == 1, what="a worker")
        worker = server.worker_pids()[0]
        wait_for(lambda: blocked_sending(worker), what="the worker to wait for room")
        received = [client.recv(100) for _ in range(filled + 2 * len(requests))]
    assert received[:filled] == [b"fill"] * filled
    assert sorted(received[filled:]) == sorted(p + r for r in requests for p in (b"a", b"b"))


def test_every_listening_socket_is_non_blocking_while_workers_serve() -> None:
    # Workers are all woken for a new connection and one wins accept(); a loser must
    # get EAGAIN, not block in accept() where its SIGTERM cannot reach it.  Whether a
    # loser exists at all is up to the kernel's timing, so this checks the cause.
    socks = bind_sockets("127.0.0.1:0") + bind_sockets("127.0.0.1:0")
    server_type: Any = type("Server", (sockserve.PreForkTCPServer,), {"workers": 2})
    server = server_type.from_sockets(socks, Pid)
    with serve_in_thread(server):
        wait_for(lambda: len(server.worker_pids()) == 2, what="two workers")
        assert [s.getblocking() for s in (server.socket, *server.extra_sockets)] == [False] * 2
        assert int(ask(server.server_addresses[1])) in server.worker_pids()


def test_drain_reaches_the_workers_and_reports_their_connections(
        caplog: pytest.LogCaptureFixture) -> None:
    class Hold(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"held\n")
            self.rfile.read()  # until the client closes or the drain cuts it

    with serve_in_thread(prefork(Hold, workers=1, graceful_timeout=60.0)) as server, \
            caplog.at_level(logging.INFO, logger="sockserve.server"):
        with connect(server.server_address) as client:
            assert client.recv(100) == b"held\n"
            report = server.drain(0.2)  # not graceful_timeout: the workers cut at 0.2 s
            assert recv_all(client) == b""
    assert report == DrainReport(open=1, finished=0, cut=1)
    assert workers(server).crashed == 0
    # The supervisor's own log line: it has no connections, its workers do.
    assert any(r.getMessage().endswith(": 1 workers and their connections, deadline 0.2 s")
               for r in caplog.records)


@pytest.mark.parametrize("mixin", [sockserve.ThreadPoolMixIn, sockserve.ThreadingMixIn])
def test_a_worker_that_crashes_during_a_drain_has_its_connections_counted_cut(
        mixin: type) -> None:
    # It never sends its counts: the supervisor counts what it had open when the
    # drain reached it as cut, rather than report nothing open.
    class CrashOnDrain(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"held\n")
            self.wfile.flush()
            if self.server.draining.wait(IO_TIMEOUT):
                os._exit(3)

    server_class = type("Server", (sockserve.PreForkMixIn, mixin, sockserve.TCPServer), {})
    with serve_in_thread(prefork(CrashOnDrain, server_class, workers=1)) as server:
        with connect(server.server_address) as first, connect(server.server_address) as second:
            assert first.recv(100) == b"held\n" and second.recv(100) == b"held\n"
            report = server.drain(IO_TIMEOUT)
            assert recv_all(first) == b"" and recv_all(second) == b""
    assert report == DrainReport(open=2, finished=0, cut=2)
    assert workers(server).crashed == 1


def test_a_stop_signal_starts_the_drain_while_the_code_it_interrupts_holds_threadings_locks(
        ) -> None:
    # SIGTERM's Python-level handler runs on the worker's main thread, between two
    # bytecodes of whatever that thread does; the worker's stop thread, not the
    # handler, starts the drain.  Here a serial handler holds the locks threading takes
    # to start a thread (threading.enumerate() holds the first; joining a thread, the
    # second, before 3.13) when the drain reaches its worker: the drain still begins.
    class HoldThreadingsLocks(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"held\n")
            with contextlib.ExitStack() as stack:
                for name in ("_active_limbo_lock", "_shutdown_locks_lock"):
                    if hasattr(threading, name):  # remade by the fork: looked up here
                        stack.enter_context(getattr(threading, name))
                drained = self.server.draining.wait(IO_TIMEOUT)
            self.wfile.write(b"drained\n" if drained else b"not drained\n")

    with serve_in_thread(prefork(HoldThreadingsLocks, workers=1)) as server:
        with connect(server.server_address) as client:
            assert client.recv(100) == b"held\n"
            report = server.drain(IO_TIMEOUT)
            assert recv_all(client) == b"drained\n"
    assert report == DrainReport(open=1, finished=1, cut=0)
    assert workers(server).crashed == 0


def test_a_drain_reaches_a_worker_whose_handler_is_in_a_call_that_holds_off_signals(
        tmp_path: Path) -> None:
    # Python runs a signal's handler only once the main thread is back in bytecode,
    # and os.system() keeps waiting for its child through signals.  The worker's stop
    # thread hears SIGTERM at once (signal.set_wakeup_fd), so the drain begins and its
    # deadline cuts the connection while the handler is still in that call.
    release = tmp_path / "release"
    os.mkfifo(release)

    class InSystem(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"held\n")
            os.system(f"cat {release} > /dev/null")  # until the test opens the FIFO

    def release_handler() -> None:
        try:  # cat reads EOF and ends (no reader: it has ended)
            os.close(os.open(release, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    reports: list[DrainReport] = []
    with serve_in_thread(prefork(InSystem, workers=1)) as server:
        drainer = threading.Thread(target=lambda: reports.append(server.drain(0.2)))
        try:
            with connect(server.server_address) as client:
                assert client.recv(100) == b"held\n"
                drainer.start()
                assert recv_all(client) == b""  # cut at 0.2 s, the handler still waiting
        finally:
            release_handler()  # however the test ends: the worker can then end
            if drainer.ident is not None:
                drainer.join(IO_TIMEOUT)
    assert reports == [DrainReport(open=1, finished=0, cut=1)]


@pytest.mark.parametrize("supervisor_handler", [False, True])
def test_a_process_a_workers_handler_forks_has_its_own_signals(
        supervisor_handler: bool) -> None:
    # Not the worker's: its SIGTERM ends it, and is no stop request for the worker.  Nor
    # the supervisor's: a program's own SIGTERM handler that shuts the server down (a
    # stdlib pattern) must not run in it, or the helper's end would end the server.
    class ForkAndTerminate(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            child = os.fork()
            if child == 0:
                time.sleep(IO_TIMEOUT)  # SIGTERM's default action ends it before
                os._exit(7)
            os.kill(child, signal.SIGTERM)
            _, status = os.waitpid(child, 0)
            self.wfile.write(b"%d %d\n" % (os.getpid(), os.WTERMSIG(status)
                                           if os.WIFSIGNALED(status) else 0))

    server = prefork(ForkAndTerminate, workers=1)
    previous = signal.getsignal(signal.SIGTERM)
    if supervisor_handler:
        signal.signal(signal.SIGTERM, lambda signum, frame: threading.Thread(
            target=server.shutdown).start())
    try:
        with serve_in_thread(server):
            first_worker, killed_by = ask(server.server_address).split()
            assert int(killed_by) == signal.SIGTERM
            second_worker, _ = ask(server.server_address).split()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert second_worker == first_worker  # the worker was not stopped
    assert workers(server).spawned == 1


def test_a_worker_stuck_in_a_handler_is_killed_when_a_reload_replaces_it() -> None:
    # Its handler ignores the cut (it waits on nothing the socket can end): after
    # graceful_timeout the worker is killed, so it cannot hold the rotation up for ever.
    class Stuck(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"%d\n" % os.getpid())
            threading.Event().wait()

    server = prefork(Stuck, workers=1, graceful_timeout=0.5)
    with serve_in_thread(server), connect(server.server_address) as client:
        stuck = int(client.recv(100))
        server.reload()
        wait_for(lambda: stuck not in server.worker_pids(), what="the stuck worker gone")
        assert workers(server).crashed == 1  # killed
        with connect(server.server_address) as another:
            answered_by_a_worker(server, another.recv(100))  # the replacement serves


class HoldAndTell(sockserve.StreamRequestHandler):
    """Says "held", then "stopping" once its worker drains; reads until cut."""

    def handle(self) -> None:
        self.wfile.write(b"held\n")
        if self.server.draining.wait(IO_TIMEOUT):
            self.wfile.write(b"stopping\n")
        self.rfile.read()


@pytest.mark.parametrize("mixin", [sockserve.ThreadingMixIn, sockserve.ThreadPoolMixIn])
def test_a_replaced_worker_still_stopping_is_drained_and_counted(mixin: type) -> None:
    # reload(): the old worker stops on its own drain_timeout (60 s); the supervisor's
    # drain then reaches it, cuts at its own deadline, and gets its counts.
    server_class = type("Server", (sockserve.PreForkMixIn, mixin, sockserve.TCPServer), {})
    server = prefork(HoldAndTell, server_class, workers=1, drain_timeout=60.0)
    with serve_in_thread(server):
        with connect(server.server_address) as client:
            assert client.recv(100) == b"held\n"
            server.reload()
            assert client.recv(100) == b"stopping\n"  # the old worker is stopping
            report = server.drain(0.2)
            assert recv_all(client) == b""
    assert report == DrainReport(open=1, finished=0, cut=1)


def test_server_close_while_serving_stops_the_loop_before_the_workers() -> None:
    # Otherwise the loop, still running, replaces the stopped workers on a closed socket.
    server = prefork(workers=2)
    loop = threading.Thread(target=server.serve_forever, args=(0.05,))
    loop.start()
    try:
        wait_for(lambda: len(server.worker_pids()) == 2, what="two workers")
        server.server_close()
        loop.join(IO_TIMEOUT)
        assert not loop.is_alive()
        assert server.worker_pids() == []
        assert workers(server).spawned == 2
    finally:
        server.shutdown()
        loop.join(IO_TIMEOUT)


def test_a_worker_holds_no_handle_on_its_siblings() -> None:
    class PidfdCount(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            fds = os.listdir("/proc/self/fd")
            count = sum(fd_target(fd) == "anon_inode:[pidfd]" for fd in fds)
            self.wfile.write(b"%d\n" % count)

    # One request per worker: all but the first are forked beside siblings.
    with serve_in_thread(prefork(PidfdCount, workers=3, max_requests=1)) as server:
        assert [ask(server.server_address) for _ in range(4)] == [b"0\n"] * 4


def fd_target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # closed meanwhile (listdir's own descriptor)
        return ""


def test_a_connection_in_its_tls_handshake_is_served_when_its_worker_recycles(
        ca: Any, server_ctx: ssl.SSLContext) -> None:
    # The slow client is accepted first but sends its ClientHello only after the fast
    # one's request has made the worker recycle: the stopping worker completes the
    # handshake and serves it.
    server = prefork(workers=1, max_requests=1, ssl_context=server_ctx,
                     _sockserve_handshake_grace_on_stop=IO_TIMEOUT)  # no race with CI
    context = client_ctx(ca)
    with serve_in_thread(server):
        with connect(server.server_address) as slow_raw, \
                context.wrap_socket(connect(server.server_address),
                                    server_hostname="127.0.0.1") as fast:
            fast.sendall(b"pid\n")
            first = int(recv_all(fast))
            with context.wrap_socket(slow_raw, server_hostname="127.0.0.1") as slow:
                slow.sendall(b"pid\n")
                assert int(recv_all(slow)) == first  # the same, recycling worker


def test_a_drain_longer_than_graceful_timeout_is_not_cut_short() -> None:
    class Hold(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"held\n")
            self.rfile.read()

    with serve_in_thread(prefork(Hold, workers=1, graceful_timeout=0.1)) as server:
        with connect(server.server_address) as client:
            assert client.recv(100) == b"held\n"
            report = server.drain(0.5)  # the workers get 0.5 s, not 0.1, then exit
            assert recv_all(client) == b""
    assert report == DrainReport(open=1, finished=0, cut=1)
    assert workers(server).crashed == 0


def test_drain_on_the_supervising_thread_says_it_cannot_wait() -> None:
    errors: list[BaseException] = []

    class Server(sockserve.PreForkTCPServer):
        workers = 1

        def service_actions(self) -> None:
            if self.worker_pids() and not errors:
                try:
                    self.drain(1.0)
                except RuntimeError as exc:
                    errors.append(exc)

    with serve_in_thread(Server(("127.0.0.1", 0), Pid)) as server:
        wait_for(lambda: bool(errors), what="the drain attempt")
        answered_by_a_worker(server, ask(server.server_address))
    assert "another thread" in str(errors[0])


def test_workers_start_without_ctypes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ctypes", None)  # a Python built without it
    with serve_in_thread(prefork(workers=1)) as server:
        answered_by_a_worker(server, ask(server.server_address))
    assert workers(server).crashed == 0


def test_a_drain_without_timeout_waits_for_the_workers_connections() -> None:
    class Echo(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                self.wfile.write(line)

    # graceful_timeout 0: only the drain's own "no timeout" keeps the worker alive.
    server = prefork(Echo, workers=1, graceful_timeout=0.0)
    with serve_in_thread(server):
        # After the fork: a worker forked later would hold a copy of the client's end.
        wait_for(lambda: len(server.worker_pids()) == 1, what="the worker")
        with connect(server.server_address) as client:
            client.sendall(b"one\n")
            assert client.recv(100) == b"one\n"
            reports: list[DrainReport] = []
            drainer = threading.Thread(target=lambda: reports.append(server.drain(None)))
            drainer.start()
            wait_for(server.draining.is_set, what="the drain")
            wait_for(lambda: workers(server).target == 0, what="the workers told to stop")
            client.sendall(b"two\n")  # the worker still serves its connection
            assert client.recv(100) == b"two\n"
        drainer.join(IO_TIMEOUT)
        assert not drainer.is_alive()
    assert reports == [DrainReport(open=1, finished=1, cut=0)]
    assert workers(server).crashed == 0


class Lines(Pid):
    """Replies with the worker's pid to every line until "bye" (not until the client
    closes: workers forked after the client connected hold a copy of its socket)."""

    def handle(self) -> None:
        for line in self.rfile:
            if line == b"bye\n":
                return
            self.wfile.write(b"%d\n" % os.getpid())


def one_request_workers() -> Any:
    """One pre-forked worker with a pool, recycled after every request, serving Lines."""
    class Server(sockserve.PreForkMixIn, sockserve.ThreadPoolMixIn, sockserve.TCPServer):
        workers = 1
        max_requests = 1
        graceful_timeout = IO_TIMEOUT

    return Server(("127.0.0.1", 0), Lines)


def test_a_recycling_worker_is_replaced_while_it_finishes_its_connections() -> None:
    with serve_in_thread(one_request_workers()) as server:
        with connect(server.server_address) as kept:
            replies = kept.makefile("rb")
            kept.sendall(b"pid\n")
            old = int(replies.readline())
            # The old worker has served its last request but keeps that connection: a
            # replacement already accepts new ones.
            with connect(server.server_address) as new:
                new.sendall(b"pid\n")
                assert int(new.makefile("rb").readline()) != old
                new.sendall(b"bye\n")
            kept.sendall(b"pid\nbye\n")
            assert int(replies.readline()) == old
    stats = workers(server)
    assert stats.crashed == 0 and stats.exited >= 1


class UpperLines(sockserve.MessageRequestHandler):
    def handle_message(self, message: bytes) -> bytes | None:
        return b"%d %s" % (os.getpid(), message.upper())


def test_a_recycling_evented_worker_answers_the_connection_it_accepted_last() -> None:
    class Server(sockserve.PreForkMixIn, sockserve.EventedMixIn, sockserve.TCPServer):
        workers = 1
        max_requests = 1
        graceful_timeout = IO_TIMEOUT

    with serve_in_thread(Server(("127.0.0.1", 0), UpperLines)) as server:
        pids = []
        for word in (b"a", b"b", b"c"):
            with connect(server.server_address) as client:
                client.sendall(word + b"\n")
                pid, reply = recv_all(client).split()
                assert reply == word.upper()
                pids.append(int(pid))
    assert len(set(pids)) == 3  # each worker served one connection, then recycled
    assert workers(server).crashed == 0




def test_an_evented_worker_drains_to_the_supervisors_deadline() -> None:
    class Greeting(UpperLines):
        def setup(self) -> None:
            self.request.send(b"hello\n")  # so the client knows it was accepted

    class Server(sockserve.PreForkMixIn, sockserve.EventedMixIn, sockserve.TCPServer):
        workers = 1
        graceful_timeout = IO_TIMEOUT
        stop_grace = 0.05  # what a worker would use without the drain's deadline

    with serve_in_thread(Server(("127.0.0.1", 0), Greeting)) as server:
        with connect(server.server_address) as silent:
            assert silent.recv(100) == b"hello\n"
            report = server.drain(0.5)
            assert recv_all(silent) == b""
    assert report == DrainReport(open=1, finished=0, cut=1)


def test_a_new_worker_takes_no_signal_before_its_handlers_are_in_place() -> None:
    read_end, write_end = os.pipe()

    def report_mask(place: Any) -> None:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        os.write(write_end, b",".join(b"%d" % s for s in sorted(blocked)))
        os._exit(0)

    supervisor = Supervisor(report_mask, target=1)
    try:
        pid = supervisor.spawn()
        os.close(write_end)
        with os.fdopen(read_end, "rb") as mask:
            blocked = {int(s) for s in mask.read().split(b",") if s}
        os.waitpid(pid, 0)
    finally:
        supervisor.kill_all()
        supervisor.reap()  # closes its pidfd
    assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2, signal.SIGTTIN,
            signal.SIGTTOU} <= blocked


def test_a_reload_does_not_wait_for_a_recycled_worker_to_finish() -> None:
    with serve_in_thread(one_request_workers()) as server:
        with connect(server.server_address) as kept:
            kept.sendall(b"pid\n")
            recycled = int(kept.makefile("rb").readline())  # it lingers with this one
            wait_for(lambda: len(server.worker_pids()) == 2, what="its replacement")
            (fresh,) = set(server.worker_pids()) - {recycled}
            server.reload()
            wait_for(lambda: fresh not in server.worker_pids() and
                     len(server.worker_pids()) == 2, what="the fresh one replaced")
            assert recycled in server.worker_pids()
            kept.sendall(b"bye\n")
