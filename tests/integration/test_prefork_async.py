"""PreForkMixIn with AsyncMixIn: async handlers served by pre-forked workers, each on
an event loop of its own, under the same supervisor as the sync workers."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import threading
from typing import Any

import pytest

import sockserve
from sockserve import _aio_replies, aio
from sockserve.stats import DrainReport
from sockserve.testing import serve_in_thread
from tests.helpers import (IO_TIMEOUT, connect, descriptors_on, fill_datagram_queue,
                           listening_inodes, listening_sockets, recv_all, socket_inodes,
                           wait_for)
from tests.integration.test_async import HAVE_UVLOOP, LOOPS, LoopName


@pytest.fixture(params=LOOPS)
def loop_name(request: pytest.FixtureRequest) -> LoopName:
    name: LoopName = request.param
    return name


class Lines(aio.AsyncStreamRequestHandler):
    """Replies to each line with the worker's pid until "bye"; "crash" kills the worker,
    "hold" answers "held" and waits for the next line before replying."""

    async def handle(self) -> None:
        while line := await self.reader.readline():
            if line == b"bye\n":
                return
            if line == b"crash\n":
                os._exit(3)
            if line == b"hold\n":
                self.writer.write(b"held\n")
                await self.writer.drain()
                await self.reader.readline()
            self.writer.write(b"%d\n" % os.getpid())
            await self.writer.drain()


def prefork(loop_name: LoopName, handler: type = Lines,
            base: type = sockserve.TCPServer, address: Any = ("127.0.0.1", 0),
            **settings: Any) -> Any:
    settings.setdefault("graceful_timeout", IO_TIMEOUT)
    settings["loop_factory"] = loop_name
    server_class = type("Server", (sockserve.PreForkMixIn, aio.AsyncMixIn, base), settings)
    return server_class(address, handler)


def ask(address: Any, line: bytes = b"pid\n", family: int = socket.AF_INET) -> bytes:
    with connect(address, family) as client:
        client.sendall(line + b"bye\n")
        return recv_all(client)


def test_workers_serve_async_handlers(loop_name: LoopName) -> None:
    with serve_in_thread(prefork(loop_name, workers=2)) as server:
        wait_for(server.is_serving, what="a worker serving")
        pids = {int(ask(server.server_address)) for _ in range(10)}
        wait_for(lambda: len(server.worker_pids()) == 2, what="two workers")
        assert os.getpid() not in pids
        assert pids <= set(server.worker_pids())
    stats = server.statistics().workers
    assert stats.workers == 0 and stats.crashed == 0 and stats.exited == 2


def test_unix_stream_workers(loop_name: LoopName, unix_path: str) -> None:
    server = prefork(loop_name, base=sockserve.UnixStreamServer, address=unix_path, workers=1)
    with serve_in_thread(server):
        assert ask(unix_path, family=socket.AF_UNIX).strip().isdigit()


def test_a_crashed_worker_is_replaced(loop_name: LoopName) -> None:
    with serve_in_thread(prefork(loop_name, workers=1)) as server:
        first = int(ask(server.server_address))
        assert ask(server.server_address, b"crash\n") == b""
        assert int(ask(server.server_address)) != first
        assert server.statistics().workers.crashed == 1


def test_shutdown_lets_the_request_in_flight_finish(loop_name: LoopName) -> None:
    server = prefork(loop_name, workers=1)
    with serve_in_thread(server):
        with connect(server.server_address) as client:
            client.sendall(b"hold\n")
            assert client.recv(100) == b"held\n"
            stopper = threading.Thread(target=server.shutdown)
            stopper.start()
            wait_for(lambda: server.statistics().workers.target == 0, what="stop to begin")
            client.sendall(b"go\nbye\n")
            assert recv_all(client).strip().isdigit()
            stopper.join(IO_TIMEOUT)
            assert not stopper.is_alive()
    stats = server.statistics().workers
    assert stats.exited == 1 and stats.crashed == 0


def test_max_requests_recycles_and_the_replacement_starts_at_once(loop_name: LoopName) -> None:
    with serve_in_thread(prefork(loop_name, workers=1, max_requests=1)) as server:
        with connect(server.server_address) as kept:
            replies = kept.makefile("rb")
            kept.sendall(b"pid\n")
            old = int(replies.readline())
            # The old worker keeps this connection, and a replacement accepts new ones.
            # (A loop may take a connection or two more in the passes its stop takes.)
            wait_for(lambda: len(server.worker_pids()) == 2, what="the replacement")
            assert ask(server.server_address).strip().isdigit()
            kept.sendall(b"pid\nbye\n")
            assert int(replies.readline()) == old
        assert server.statistics().workers.crashed == 0


def test_drain_reaches_the_workers_and_reports_their_connections(loop_name: LoopName) -> None:
    with serve_in_thread(prefork(loop_name, workers=1, graceful_timeout=60.0)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"hold\n")
            assert client.recv(100) == b"held\n"
            report = server.drain(0.2)  # not graceful_timeout: the worker cuts at 0.2 s
            assert recv_all(client) == b""
    assert report == DrainReport(open=1, finished=0, cut=1)
    assert server.statistics().workers.crashed == 0


def test_a_reload_refuses_no_connection(loop_name: LoopName) -> None:
    # A stopping worker leaves the shared socket to the others at once: a client that
    # connects meanwhile is served, never accepted and then dropped.
    with serve_in_thread(prefork(loop_name, workers=2)) as server:
        wait_for(lambda: len(server.worker_pids()) == 2, what="two workers")
        first = set(server.worker_pids())
        replies: list[bytes] = []
        server.reload()
        while first & set(server.worker_pids()) and len(replies) < 2000:
            replies.append(ask(server.server_address))
        replies += [ask(server.server_address) for _ in range(20)]
        assert not first & set(server.worker_pids()), "the reload did not end"
    assert all(reply.strip().isdigit() for reply in replies), replies
    assert server.statistics().workers.crashed == 0


def test_a_stopping_worker_strands_no_connection_on_its_own_socket(
        loop_name: LoopName) -> None:
    # Its own SO_REUSEPORT socket closes when it stops accepting: connections made
    # after that go to the other sockets of the group, not into a queue nobody reads.
    # (One that comes in the instant of the close is reset: docs/scaling.md.  So the
    # clients wait for it: the old worker's own socket gone, the replacement's there.)
    server = prefork(loop_name, workers=1, max_requests=1, reuse_port_per_worker=True)
    with serve_in_thread(server):
        port = server.server_address[1]
        wait_for(lambda: listening_sockets(port) == 2, what="the shared socket and one own")
        shared = os.fstat(server.socket.fileno()).st_ino
        with connect(server.server_address) as first:  # its last: the worker stops
            replies_to_first = first.makefile("rb")
            first.sendall(b"pid\nhold\n")
            old = int(replies_to_first.readline())
            assert replies_to_first.readline() == b"held\n"

            def old_closed_its_own_new_has_one() -> bool:
                listening = listening_inodes(port)
                return len(listening) == 2 and not (
                    listening - {shared}) & set(socket_inodes(old))

            wait_for(old_closed_its_own_new_has_one,
                     what="the old worker's own socket closed, the replacement's open")
            # Hashed over the sockets: all 20 missing the old worker's has odds 2**-20.
            replies = [ask(server.server_address) for _ in range(20)]
            first.sendall(b"go\nbye\n")
            assert recv_all(first).strip().isdigit()
    assert all(reply.strip().isdigit() for reply in replies), replies


def test_async_mixin_before_prefork_is_refused_rather_than_served_without_workers() -> None:
    with pytest.raises(TypeError, match="put PreForkMixIn before AsyncMixIn"):
        class Server(aio.AsyncMixIn, sockserve.PreForkMixIn, sockserve.TCPServer):
            pass


def test_a_drain_reaches_a_worker_already_recycling(loop_name: LoopName) -> None:
    # Recycled with a connection held: the supervisor's drain still cuts it at its
    # deadline (not graceful_timeout) and counts it.
    server = prefork(loop_name, workers=1, max_requests=1, graceful_timeout=60.0)
    with serve_in_thread(server), connect(server.server_address) as client:
        client.sendall(b"hold\n")  # its last request
        assert client.recv(100) == b"held\n"
        wait_for(lambda: len(server.worker_pids()) == 2, what="the replacement")
        report = server.drain(0.2)
        assert recv_all(client) == b""
    assert report == DrainReport(open=1, finished=0, cut=1)
    assert server.statistics().workers.crashed == 0


class SigtermAfterClose(asyncio.SelectorEventLoop):
    """asyncio's close() puts SIGTERM back to its default action: a SIGTERM right then
    (the supervisor's, PR_SET_PDEATHSIG, a process-group kill) must not kill a worker
    that is ending cleanly."""

    supervisor = os.getpid()

    def close(self) -> None:
        super().close()
        if os.getpid() != self.supervisor:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_as_a_workers_loop_closes_does_not_kill_it() -> None:
    server = prefork("asyncio", workers=1)
    server.loop_factory = SigtermAfterClose
    with serve_in_thread(server):
        wait_for(server.is_serving, what="a worker serving")
        assert ask(server.server_address).strip().isdigit()
    stats = server.statistics().workers
    assert stats.crashed == 0 and stats.exited == 1


class FloodsThenCleansUp(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        await self.reader.readline()
        self.writer.write(b"y" * (32 << 20))  # more than the client will read
        try:
            await self.reader.readline()
        finally:
            await asyncio.sleep(1.0)  # clean-up once cancelled: within CANCEL_TIMEOUT


def test_the_supervisor_waits_for_a_worker_closing_a_client_that_does_not_read() -> None:
    # The worker cuts at the deadline, cancels (up to 5 s), closes and then aborts the
    # connection (up to 5 s each): slow but bounded, and no crash.  One loop only: the
    # closing takes its full 5 s.
    server = prefork("uvloop" if HAVE_UVLOOP else "asyncio", FloodsThenCleansUp, workers=1,
                     graceful_timeout=0.2)
    with serve_in_thread(server), connect(server.server_address) as client:
        client.sendall(b"go\n")
        assert client.recv(1) == b"y"  # the handler is writing
        report = server.drain(0.2)
    assert report == DrainReport(open=1, finished=0, cut=1)
    assert server.statistics().workers.crashed == 0


class DatagramPid(aio.AsyncDatagramRequestHandler):
    """Replies with the worker's pid; ``hold <port>`` first connects to that TCP port on
    loopback (the test's: it sees the handler running) and waits there for a line."""

    async def handle(self) -> None:
        if self.packet.startswith(b"hold "):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", int(self.packet.split()[1]))
            try:
                await reader.readline()
            finally:
                writer.close()
        self.send(b"%d" % os.getpid())


def ask_datagram(address: Any, packet: bytes = b"pid") -> int:
    """The pid of the worker that answered *packet*, from a client on a new port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(IO_TIMEOUT)
        client.sendto(packet, address)
        return int(client.recv(100))


class HeldDatagram:
    """A ``hold`` datagram whose handler waits on a loopback connection the test
    accepts: ``release()`` lets it reply, and returns the pid it replied with."""

    def __init__(self, address: Any) -> None:
        self.control = socket.create_server(("127.0.0.1", 0))
        self.control.settimeout(IO_TIMEOUT)
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.settimeout(IO_TIMEOUT)
        self.client.sendto(b"hold %d" % self.control.getsockname()[1], address)
        self.handler, _ = self.control.accept()  # the handler runs

    def release(self) -> int:
        self.handler.sendall(b"go\n")
        return int(self.client.recv(100))

    def close(self) -> None:
        for sock in (self.handler, self.control, self.client):
            sock.close()


def test_workers_serve_async_datagram_handlers(loop_name: LoopName, unix_path: str) -> None:
    with serve_in_thread(prefork(loop_name, DatagramPid, sockserve.UDPServer,
                                 workers=2)) as server:
        wait_for(lambda: len(server.worker_pids()) == 2, what="two workers")
        pids = {ask_datagram(server.server_address) for _ in range(10)}
        assert pids <= set(server.worker_pids())
    server = prefork(loop_name, DatagramPid, sockserve.UnixDatagramServer, unix_path,
                     workers=1)
    with serve_in_thread(server), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(unix_path + ".client")
        client.settimeout(IO_TIMEOUT)
        client.sendto(b"pid", unix_path)
        assert int(client.recv(100)) in server.worker_pids()
    os.unlink(unix_path + ".client")
    assert server.statistics().workers.crashed == 0


def test_a_stopping_datagram_worker_leaves_new_datagrams_to_the_others_and_still_replies(
        loop_name: LoopName) -> None:
    # max_requests=2: the held datagram is the old worker's last.  It stops taking
    # datagrams from the shared socket (with uvloop only closing its transport does
    # that: its copy of the socket, one of three, goes), so every later one is the
    # replacement's (ask_datagram() raises if one goes unanswered); and its held
    # handler still gets its reply out.
    with serve_in_thread(prefork(loop_name, DatagramPid, sockserve.UDPServer,
                                 workers=1, max_requests=2)) as server:
        old = ask_datagram(server.server_address)
        assert descriptors_on(old, server.socket) == 3  # inherited, the loop's, replies'
        held = HeldDatagram(server.server_address)
        try:
            wait_for(lambda: descriptors_on(old, server.socket) == 2,
                     what="the old worker to stop reading")
            later = {ask_datagram(server.server_address) for _ in range(20)}
            assert held.release() == old
        finally:
            held.close()
        assert old not in later  # (each replacement recycles after 2 too)
        wait_for(lambda: old not in server.worker_pids(), what="the old worker to end")
    assert server.statistics().workers.crashed == 0


def test_a_drain_cuts_a_datagram_handler_at_its_deadline(loop_name: LoopName) -> None:
    with serve_in_thread(prefork(loop_name, DatagramPid, sockserve.UDPServer, workers=1,
                                 graceful_timeout=60.0)) as server:
        held = HeldDatagram(server.server_address)
        try:
            report = server.drain(0.2)
            assert held.handler.recv(10) == b""  # the handler's connection: cancelled
        finally:
            held.close()
    assert report == DrainReport(open=1, finished=0, cut=1)
    assert server.statistics().workers.crashed == 0


class BlocksItsLoop(aio.AsyncDatagramRequestHandler):
    """``block <port>``: connects to the test's port and waits there for a line without
    awaiting, so that nothing else runs on its worker's loop meanwhile; then, and for
    anything else, replies with the pid."""

    async def handle(self) -> None:
        if self.packet.startswith(b"block "):
            with socket.create_connection(("127.0.0.1", int(self.packet.split()[1])),
                                          timeout=IO_TIMEOUT) as control:
                control.recv(1)
        self.send(b"%d" % os.getpid())


def test_a_stopping_datagram_worker_strands_nothing_on_its_own_socket(
        loop_name: LoopName) -> None:
    # 20 datagrams from 20 ports wait while the old worker's loop is held by its last
    # request; hashed over the SO_REUSEPORT group, some wait on its own socket (all 20
    # missing it has odds of (2/3)**20 at most).  Once free, it stops: it must serve
    # what waits on its own socket before closing it, or those are lost.
    server = prefork(loop_name, BlocksItsLoop, sockserve.UDPServer, workers=1,
                     max_requests=2, reuse_port_per_worker=True)
    with serve_in_thread(server), socket.create_server(("127.0.0.1", 0)) as control:
        control.settimeout(IO_TIMEOUT)
        port = server.server_address[1]
        wait_for(lambda: listening_sockets(port, "udp") == 2, what="the shared and one own")
        ask_datagram(server.server_address)  # the first of its two requests
        with contextlib.ExitStack() as stack:
            last = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            last.sendto(b"block %d" % control.getsockname()[1], server.server_address)
            held, _ = control.accept()  # the old worker's loop is held
            stack.enter_context(held)
            clients = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                       for _ in range(20)]
            for client in clients:
                client.settimeout(IO_TIMEOUT)
                client.sendto(b"pid", server.server_address)
            held.sendall(b"go")
            for client in clients:
                assert int(client.recv(100)) > 0  # recv() raises if its datagram was lost
    assert server.statistics().workers.crashed == 0


class ThirtyReplies(aio.AsyncDatagramRequestHandler):
    """Waits on the test's loopback port, then sends 30 replies at once and says so."""

    async def handle(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(self.packet))
        try:
            await reader.readline()
            for n in range(30):
                self.send(b"%d" % n)
            writer.write(b"sent\n")
            await writer.drain()
        finally:
            writer.close()


def test_a_stopped_datagram_workers_replies_wait_for_room(
        loop_name: LoopName, unix_path: str) -> None:
    # After its worker stopped reading, a handler replies to a client whose receive
    # queue is full: the replies wait for room, none is lost.
    client_path = unix_path + ".c"
    server = prefork(loop_name, ThirtyReplies, sockserve.UnixDatagramServer, unix_path,
                     workers=1, max_requests=1)
    with serve_in_thread(server), socket.create_server(("127.0.0.1", 0)) as control, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        control.settimeout(IO_TIMEOUT)
        client.bind(client_path)
        client.settimeout(IO_TIMEOUT)
        wait_for(lambda: len(server.worker_pids()) == 1, what="a worker")
        old = server.worker_pids()[0]
        client.sendto(b"%d" % control.getsockname()[1], unix_path)  # its last request
        handler, _ = control.accept()
        with handler:
            wait_for(lambda: descriptors_on(old, server.socket) == 2,
                     what="the old worker to stop reading")
            filled = fill_datagram_queue(client_path)
            handler.sendall(b"go\n")
            assert handler.recv(100) == b"sent\n"  # all 30 wait
            received = [client.recv(100) for _ in range(filled + 30)]
    os.unlink(client_path)
    assert received == [b"fill"] * filled + [b"%d" % n for n in range(30)]


class CrashOnDrain(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        self.writer.write(b"held\n")
        await self.writer.drain()
        await self.server.wait_draining()
        os._exit(3)


def test_a_worker_that_crashes_during_a_drain_has_its_connections_counted_cut(
        loop_name: LoopName) -> None:
    with serve_in_thread(prefork(loop_name, CrashOnDrain, workers=1)) as server:
        with connect(server.server_address) as client:
            assert client.recv(100) == b"held\n"
            report = server.drain(IO_TIMEOUT)
            assert recv_all(client) == b""
    assert report == DrainReport(open=1, finished=0, cut=1)
    assert server.statistics().workers.crashed == 1


class Sleepy(aio.AsyncDatagramRequestHandler):
    """Replies with the worker's pid after a 0.1 s timer."""

    async def handle(self) -> None:
        await asyncio.sleep(0.1)
        self.send(b"%d" % os.getpid())


def test_workers_starting_and_stopping_leave_the_shared_socket_non_blocking(
        loop_name: LoopName) -> None:
    # O_NONBLOCK belongs to the open file, which the supervisor and every worker share,
    # and both loops rely on it (libuv reads until EAGAIN).  socket.dup() resets it for
    # a socket in blocking mode, as a datagram server's is: a worker that starts or
    # stops must not, or the others block in recvmsg() and their timers stop.
    server = prefork(loop_name, Sleepy, sockserve.UDPServer, workers=3)
    with serve_in_thread(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(IO_TIMEOUT)
        wait_for(lambda: len(server.worker_pids()) == 3 and all(
            descriptors_on(pid, server.socket) == 3 for pid in server.worker_pids()),
            what="three workers with their copies of the socket")
        server.set_workers(2)
        wait_for(lambda: len(server.worker_pids()) == 2, what="one worker stopped")
        flags = fcntl.fcntl(server.socket.fileno(), fcntl.F_GETFL)
        for _ in range(10):
            ask_datagram(server.server_address)
    assert flags & os.O_NONBLOCK


class FloodThenQuiet(aio.AsyncDatagramRequestHandler):
    """``flood``: 30 replies at once; anything else: none."""

    async def handle(self) -> None:
        if self.packet == b"flood":
            for n in range(30):
                self.send(b"%d" % n)


def test_replies_to_a_client_that_never_reads_do_not_keep_a_recycled_worker(
        loop_name: LoopName, unix_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The client's queue is full: its 30 replies wait, for CLOSE_TIMEOUT once serving
    # ends (set short here: the workers are forked from this process), then are dropped.
    monkeypatch.setattr(_aio_replies, "CLOSE_TIMEOUT", 0.2)
    server = prefork(loop_name, FloodThenQuiet, sockserve.UnixDatagramServer, unix_path,
                     workers=1, max_requests=2)
    with serve_in_thread(server), \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sleeper:
        sleeper.bind(unix_path + ".s")
        wait_for(lambda: len(server.worker_pids()) == 1, what="a worker")
        old = server.worker_pids()[0]
        fill_datagram_queue(unix_path + ".s")
        sleeper.sendto(b"flood", unix_path)  # request 1
        sleeper.sendto(b"quiet", unix_path)  # request 2: its last
        wait_for(lambda: old not in server.worker_pids(), what="the recycled worker to exit")
    os.unlink(unix_path + ".s")
    assert server.statistics().workers.crashed == 0


def test_a_recycled_worker_reports_what_the_drain_found_open(loop_name: LoopName) -> None:
    # max_requests=2: the worker recycles with two connections open; one ends before
    # the supervisor's drain reaches the worker, which then reports only the other.
    server = prefork(loop_name, workers=1, max_requests=2)
    with serve_in_thread(server):
        with connect(server.server_address) as first, connect(server.server_address) as second:
            first.sendall(b"pid\n")
            second.sendall(b"pid\n")
            first_pid, second_pid = first.recv(100), second.recv(100)
            assert first_pid == second_pid
            wait_for(lambda: len(server.worker_pids()) == 2, what="the replacement")
            first.sendall(b"bye\n")
            assert recv_all(first) == b""  # finished before the drain
            report = server.drain(0.2)
            assert recv_all(second) == b""
    assert report == DrainReport(open=1, finished=0, cut=1)
