"""ThreadingMixIn and ForkingMixIn: concurrency, cleanup, no leftovers."""

from __future__ import annotations

import gc
import os
import socket
import threading
import weakref
from typing import Any

import pytest

import sockserve
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, connect, recv_all, wait_for


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


@pytest.mark.parametrize("server_class", [sockserve.ThreadingTCPServer,
                                          sockserve.ForkingTCPServer])
def test_requests_are_served_concurrently(server_class: type[sockserve.TCPServer]) -> None:
    """Two clients that each wait for the other's request can only finish concurrently."""
    with serve_in_thread(server_class(("127.0.0.1", 0), Echo)) as server:
        first = connect(server.server_address)
        second = connect(server.server_address)
        with first, second:
            # The first handler is now blocked reading; the second must still be served.
            second.sendall(b"two\n")
            assert recv_all(second) == b"two\n"
            first.sendall(b"one\n")
            assert recv_all(first) == b"one\n"


def test_finished_request_threads_are_not_kept() -> None:
    """The server holds no Thread object once its request is done (memory stays flat)."""
    refs: list[weakref.ref[threading.Thread]] = []

    class Record(Echo):
        def handle(self) -> None:
            refs.append(weakref.ref(threading.current_thread()))
            super().handle()

    with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), Record)) as server:
        for n in range(50):
            with connect(server.server_address) as client:
                client.sendall(b"%d\n" % n)
                assert recv_all(client) == b"%d\n" % n
        for ref in refs:  # let each thread end; hold it only while joining
            thread = ref()
            if thread is not None:
                thread.join(IO_TIMEOUT)
            del thread
        gc.collect()
        assert [ref for ref in refs if ref() is not None] == []
        assert len(server._threads) == 0


def test_server_close_joins_running_threads() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    class Slow(sockserve.BaseRequestHandler):
        def handle(self) -> None:
            started.set()
            release.wait(IO_TIMEOUT)
            finished.append(True)

    class ReleasingOnClose(sockserve.TCPServer):
        def server_close(self) -> None:
            release.set()  # runs before ThreadingMixIn.server_close() joins
            super().server_close()

    class Server(sockserve.ThreadingMixIn, ReleasingOnClose):
        pass

    server = Server(("127.0.0.1", 0), Slow)
    with serve_in_thread(server):
        client = connect(server.server_address)
        assert started.wait(IO_TIMEOUT)
    client.close()
    assert finished == [True]


def pid_is_zombie_child(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return False


def test_forked_children_are_reaped() -> None:
    class ReportPid(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"%d\n" % os.getpid())

    pids = []
    with serve_in_thread(sockserve.ForkingTCPServer(("127.0.0.1", 0), ReportPid)) as server:
        for _ in range(5):
            with connect(server.server_address) as client:
                pids.append(int(recv_all(client)))
    assert os.getpid() not in pids and len(set(pids)) == 5
    assert not server.active_children
    assert [pid for pid in pids if pid_is_zombie_child(pid)] == []
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


class ReplyThenCloseOnly(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"bye\n")
        self.wfile.flush()


class ClosesOnly(sockserve.ForkingMixIn, sockserve.TCPServer):
    def shutdown_request(self, request: socket.socket) -> None:
        self.close_request(request)  # no SHUT_WR, as an override may do


class ReplyThenExit(ReplyThenCloseOnly):
    def handle(self) -> None:
        super().handle()
        os._exit(0)  # a crash, a kill: the child never shuts the connection down


@pytest.mark.parametrize("server_class,handler", [
    (ClosesOnly, ReplyThenCloseOnly), (sockserve.ForkingTCPServer, ReplyThenExit)])
def test_a_forked_childs_client_sees_the_end_when_the_child_is_done(
        server_class: type, handler: type) -> None:
    # The parent keeps no descriptor of a child's connection (it counts it by pid), so
    # the client sees the end at once, not once the parent reaps the child.
    server = server_class(("127.0.0.1", 0), handler)
    with serve_in_thread(server, poll_interval=None), connect(server.server_address) as c:
        c.sendall(b"hi\n")
        assert recv_all(c) == b"bye\n"


class Upper(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


class OneChildAtATime(sockserve.ForkingTCPServer):
    max_connections = 1  # overload "pause": a child's exit makes room
    timeout = IO_TIMEOUT


def test_forking_at_max_connections_serves_the_next_client_once_the_child_exits() -> None:
    # Nothing announces a child's exit: the paused loop reaps while it waits.
    timeouts: list[bool] = []

    class Server(OneChildAtATime):
        def handle_timeout(self) -> None:
            timeouts.append(True)

    with Server(("127.0.0.1", 0), Upper) as server:
        one_after_another(server, handle_request=True)
        assert not timeouts
    with serve_in_thread(OneChildAtATime(("127.0.0.1", 0), Upper), poll_interval=None) \
            as server:
        one_after_another(server)


def one_after_another(server: Any, *, handle_request: bool = False) -> None:
    """Three clients, each once the one before has its reply (and sees the end)."""
    for word in (b"one", b"two", b"three"):
        with connect(server.server_address) as client:
            client.sendall(word + b"\n")
            if handle_request:
                server.handle_request()
            assert recv_all(client) == word.upper() + b"\n"


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfds (Linux 5.3+)")
def test_cutting_a_forked_childs_connection_never_signals_a_reaped_pid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps them
    try:
        with sockserve.ForkingTCPServer(("127.0.0.1", 0), Upper) as server:
            with connect(server.server_address) as client:
                client.sendall(b"x\n")
                server.handle_request()
                assert recv_all(client) == b"X\n"
            (pid,) = list(server.active_children or ())
            wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the child reaped")
            killed: list[int] = []
            monkeypatch.setattr(os, "kill", lambda target, signum: killed.append(target))
            server.stop_now()  # the pid may be another process's by now
            assert killed == []
    finally:
        signal.signal(signal.SIGCHLD, previous)


class OnePerClient(sockserve.ForkingTCPServer):
    max_connections_per_ip = 1
    timeout = IO_TIMEOUT


def test_forking_per_ip_limit_frees_a_clients_place_as_its_connection_ends() -> None:
    # The child says so (a pipe) before the client sees the end, so the client's next
    # connection finds the place free, even before the child has exited.
    with OnePerClient(("127.0.0.1", 0), Upper) as server:
        one_after_another(server, handle_request=True)
        assert server.statistics().rejected == 0
    with serve_in_thread(OnePerClient(("127.0.0.1", 0), Upper), poll_interval=None) \
            as server:
        one_after_another(server)


def test_a_drain_ends_a_forked_child_whatever_sigterm_handler_it_inherited() -> None:
    import signal

    class Waits(sockserve.StreamRequestHandler):
        timeout = IO_TIMEOUT  # the test's client socket is the child's too: bound it

        def handle(self) -> None:
            self.wfile.write(b"in\n")
            self.wfile.flush()
            self.rfile.readline()  # the client sends nothing

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server = sockserve.ForkingTCPServer(("127.0.0.1", 0), Waits)
        with serve_in_thread(server), connect(server.server_address) as client:
            assert client.recv(3) == b"in\n"
            report = server.drain(0.2)
            client.settimeout(IO_TIMEOUT / 2)  # shorter than a surviving child's
            assert client.recv(1) == b""
        assert report.cut == 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_handle_request_leaves_a_serve_forever_started_meanwhile_its_waker() -> None:
    class Server(sockserve.TCPServer):
        timeout = 0.5  # handle_request() returns through handle_timeout()

    server = Server(("127.0.0.1", 0), Upper)
    try:
        waiting = threading.Thread(target=server.handle_request)
        waiting.start()
        wait_for(lambda: server._BaseServer__waker is not None,  # type: ignore[attr-defined]
                 what="handle_request() to wait")
        loop = threading.Thread(target=server.serve_forever, args=(None,))
        loop.start()
        wait_for(server.is_serving, what="serve_forever()")
        waiting.join(IO_TIMEOUT)
        server.shutdown()  # would wait for ever if the loop's waker were gone
        loop.join(IO_TIMEOUT)
        assert not loop.is_alive()
    finally:
        server.server_close()


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfds (Linux 5.3+)")
def test_a_child_reaped_before_its_pidfd_is_opened_is_never_signalled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    real_open = os.pidfd_open

    def late_open(pid: int, *args: Any) -> int:  # the kernel reaps it first
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the child reaped")
        return real_open(pid, *args)

    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        monkeypatch.setattr(os, "pidfd_open", late_open)
        with sockserve.ForkingTCPServer(("127.0.0.1", 0), Upper) as server:
            with connect(server.server_address) as client:
                client.sendall(b"x\n")
                server.handle_request()
                assert recv_all(client) == b"X\n"
            killed: list[int] = []
            monkeypatch.setattr(os, "kill", lambda target, signum: killed.append(target))
            server.stop_now()
            assert killed == []
    finally:
        signal.signal(signal.SIGCHLD, previous)


class LingeringClose(sockserve.ForkingTCPServer):
    """shutdown_request() as an HTTP server may write it: wait for the client's end."""

    def shutdown_request(self, request: socket.socket) -> None:
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(IO_TIMEOUT * 4)
            while request.recv(4096):
                pass
        except OSError:
            pass
        self.close_request(request)


class Hello(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"hi\n")


def test_a_forked_child_still_in_its_shutdown_request_counts_and_is_cut() -> None:
    server = LingeringClose(("127.0.0.1", 0), Hello)
    with serve_in_thread(server), connect(server.server_address) as client:
        assert client.recv(3) == b"hi\n"
        assert client.recv(1) == b""  # SHUT_WR: the child lingers in shutdown_request()
        report = server.drain(0.2)
        (pid,) = list(server.active_children or ())
        wait_for(lambda: process_state(pid) in ("Z", None), what="the child ended by the cut")
    assert (report.finished, report.cut) == (0, 1)


def process_state(pid: int) -> str | None:
    """The state letter of process *pid* ("Z": ended, not yet reaped), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def test_forked_children_never_wait_on_a_full_done_pipe() -> None:
    server = sockserve.ForkingTCPServer(("127.0.0.1", 0), Upper)
    server.timeout = IO_TIMEOUT
    try:
        with connect(server.server_address) as client:
            client.sendall(b"a\n")
            server.handle_request()
            assert recv_all(client) == b"A\n"
        assert server._sockserve_done_pipe is not None
        write_end = server._sockserve_done_pipe[1]
        try:
            while True:  # what ~16k earlier children leave if the parent never reads
                os.write(write_end, b"\0" * 4096)
        except BlockingIOError:
            pass
        with connect(server.server_address) as client:
            client.sendall(b"b\n")
            server.handle_request()
            assert recv_all(client) == b"B\n"
    finally:
        server.server_close()
