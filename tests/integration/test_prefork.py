"""PreForkMixIn: worker processes that accept, die and are replaced, recycle, stop."""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any

import pytest

import sockserve
from sockserve.address import bind_sockets
from sockserve.concurrency.prefork import SupervisorStatistics
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, connect, listening_sockets, recv_all, wait_for


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
        assert int(ask(unix_path, family=socket.AF_UNIX)) in server.worker_pids()


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
