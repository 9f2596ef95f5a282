"""The stdlib's own socketserver scenarios, run against ``socketserver`` and ``sockserve``.

Every scenario of CPython's Lib/test/test_socketserver.py (and a few the stdlib's users
rely on without it testing them) is written once and runs on both modules through the
``module`` fixture: whatever the stdlib does, sockserve must do too.  Where sockserve
differs on purpose (docs/compatibility.md, "Deliberate differences"), the test checks
each module's own behaviour and its name says what differs.
"""

# The servers and handlers below are built on whichever module the fixture picked.
# mypy: allow-subclassing-any

from __future__ import annotations

import contextlib
import errno
import gc
import importlib
import inspect
import io
import logging
import os
import select
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, connect, recv_all

# The stdlib polls for shutdown() every poll_interval; keep that short so that stopping
# a stdlib server costs milliseconds (sockserve is woken at once whatever the interval).
POLL_INTERVAL = 0.02

# Every concrete server, in the stdlib's order; ForkingUnix* exist in the stdlib from 3.12.
SERVER_NAMES = [
    "TCPServer", "ThreadingTCPServer", "ForkingTCPServer",
    "UDPServer", "ThreadingUDPServer", "ForkingUDPServer",
    "UnixStreamServer", "ThreadingUnixStreamServer", "ForkingUnixStreamServer",
    "UnixDatagramServer", "ThreadingUnixDatagramServer", "ForkingUnixDatagramServer",
]
INET_SERVER_NAMES = [name for name in SERVER_NAMES if "Unix" not in name]


@pytest.fixture(params=["socketserver", "sockserve"])
def module(request: pytest.FixtureRequest) -> Any:
    """The module under test: the stdlib's socketserver, then sockserve."""
    return importlib.import_module(request.param)


def is_stdlib(module: Any) -> bool:
    return module is socketserver


def server_class(module: Any, name: str) -> Any:
    """``module.<name>``, or skip where this Python's stdlib does not have it."""
    cls = getattr(module, name, None)
    if cls is None:
        pytest.skip(f"{module.__name__}.{name} does not exist on Python "
                    f"{sys.version_info[0]}.{sys.version_info[1]}")
    return cls


def address_for(cls: Any, unix_path: str) -> Any:
    return unix_path if cls.address_family == socket.AF_UNIX else ("127.0.0.1", 0)


def is_forking(module: Any, server: object) -> bool:
    return isinstance(server, getattr(module, "ForkingMixIn", ()))


def serving(server: Any) -> contextlib.AbstractContextManager[Any]:
    return serve_in_thread(server, poll_interval=POLL_INTERVAL)


def echo_handler(base: Any) -> Any:
    """A handler on *base* (stream or datagram) that sends back the first line."""

    class Echo(base):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    return Echo


@contextlib.contextmanager
def datagram_client(family: int, unix_path: str) -> Iterator[socket.socket]:
    """A datagram client with a timeout; an AF_UNIX one is bound so replies can reach it."""
    client_path = unix_path + ".client"
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.settimeout(IO_TIMEOUT)
        if family == socket.AF_UNIX:
            client.bind(client_path)
        try:
            yield client
        finally:
            if family == socket.AF_UNIX:
                os.unlink(client_path)


# -- every server class, a real round trip ---------------------------------------------


@pytest.mark.parametrize("name", SERVER_NAMES)
def test_echo_round_trip(module: Any, name: str, unix_path: str) -> None:
    cls = server_class(module, name)
    stream = cls.socket_type == socket.SOCK_STREAM
    handler = echo_handler(module.StreamRequestHandler if stream
                           else module.DatagramRequestHandler)
    server = cls(address_for(cls, unix_path), handler)
    assert server.server_address == server.socket.getsockname()
    with serving(server):
        for n in range(3):
            line = b"hello world %d\n" % n
            if stream:
                with connect(server.server_address, cls.address_family) as client:
                    client.sendall(line)
                    assert recv_all(client) == line
            else:
                with datagram_client(cls.address_family, unix_path) as client:
                    client.sendto(line, server.server_address)
                    assert client.recv(100) == line
    assert server.socket.fileno() == -1
    if is_forking(module, server):
        assert not server.active_children  # bpo-31151: server_close() waits for children


# -- hooks: which are called, in which order, in which process -------------------------


class HookLog:
    """Hook calls appended to a file, so that forked children can report theirs too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.touch()

    def record(self, name: str) -> None:
        with open(self.path, "a") as f:  # one short O_APPEND write: never interleaved
            f.write(f"{os.getpid()} {name}\n")

    def calls(self, *, in_parent: bool) -> list[str]:
        me = str(os.getpid())
        lines = [line.split() for line in self.path.read_text().splitlines()]
        return [name for pid, name in lines if (pid == me) == in_parent]


def recording_server(base: Any, log: HookLog, *, accept: bool = True) -> Any:
    """*base* with every request hook recorded, then run as the base class runs it."""

    class Recording(base):
        def get_request(self) -> Any:
            log.record("get_request")
            return super().get_request()

        def verify_request(self, request: Any, client_address: Any) -> bool:
            log.record("verify_request")
            return bool(super().verify_request(request, client_address)) and accept

        def process_request(self, request: Any, client_address: Any) -> None:
            log.record("process_request")
            super().process_request(request, client_address)

        def finish_request(self, request: Any, client_address: Any) -> None:
            log.record("finish_request")
            super().finish_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            log.record("shutdown_request")
            super().shutdown_request(request)

        def close_request(self, request: Any) -> None:
            log.record("close_request")
            super().close_request(request)

        def handle_error(self, request: Any, client_address: Any) -> None:
            log.record("handle_error")  # and print or log nothing

        def handle_timeout(self) -> None:
            log.record("handle_timeout")
            super().handle_timeout()

    return Recording


def recording_handler(module: Any, log: HookLog, outcome: str) -> Any:
    class Handler(module.BaseRequestHandler):
        def setup(self) -> None:
            log.record("setup")

        def handle(self) -> None:
            log.record("handle")
            if outcome == "handler_raises":
                raise ValueError("handler failed on purpose")
            if outcome == "handler_exits":
                raise SystemExit(3)

        def finish(self) -> None:
            log.record("finish")

    return Handler


def expected_calls(outcome: str, forking: bool) -> tuple[list[str], list[str]]:
    """The hook calls (in the parent, in the forked child) that the stdlib makes."""
    if outcome == "rejected":  # bpo-26309: shutdown_request() even when not verified
        return ["get_request", "verify_request", "shutdown_request", "close_request"], []
    accepted = ["get_request", "verify_request", "process_request"]
    served = ["finish_request", "setup", "handle", "finish"]
    if outcome == "handler_raises":
        served.append("handle_error")  # an Exception goes to handle_error() ...
    served += ["shutdown_request", "close_request"]  # ... SystemExit does not
    if forking:
        return accepted + ["close_request"], served  # the parent closes its copy
    return accepted + served, []


@pytest.mark.parametrize("outcome", ["served", "handler_raises", "handler_exits", "rejected"])
@pytest.mark.parametrize("name", INET_SERVER_NAMES)
def test_hook_call_order(module: Any, name: str, outcome: str, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    cls = server_class(module, name)
    log = HookLog(tmp_path / "hooks")
    server = recording_server(cls, log, accept=outcome != "rejected")(
        ("127.0.0.1", 0), recording_handler(module, log, outcome))
    server.timeout = IO_TIMEOUT  # a lost request shows up as a handle_timeout call
    forking, threading_ = is_forking(module, server), isinstance(server, module.ThreadingMixIn)
    thread_exits: list[type[BaseException]] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_exits.append(args.exc_type))
    stream = cls.socket_type == socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, cls.socket_type) as client, server:
        client.settimeout(IO_TIMEOUT)
        if stream:
            client.connect(server.server_address)
        else:
            client.sendto(b"request", server.server_address)
        if outcome == "handler_exits" and not (forking or threading_):
            with pytest.raises(SystemExit):
                server.handle_request()
        else:
            server.handle_request()
    # server_close() joined the request thread or reaped the child: the log is complete.
    parent, child = expected_calls(outcome, forking)
    assert log.calls(in_parent=True) == parent
    assert log.calls(in_parent=False) == child
    assert thread_exits == ([SystemExit] if outcome == "handler_exits" and threading_ else [])


@pytest.mark.parametrize("timeout_on", ["server", "socket", "socket_shorter_than_server"])
@pytest.mark.parametrize("name", ["TCPServer", "UDPServer", "ForkingTCPServer"])
def test_handle_request_times_out_and_calls_handle_timeout(
        module: Any, name: str, timeout_on: str, tmp_path: Path) -> None:
    log = HookLog(tmp_path / "hooks")
    cls = recording_server(server_class(module, name), log)
    with cls(("127.0.0.1", 0), module.BaseRequestHandler) as server:
        if timeout_on == "server":
            server.timeout = 0.01
        else:  # the pre-2.6 way, still honoured; the shorter of the two wins
            server.socket.settimeout(0.01)
            server.timeout = 60 if timeout_on == "socket_shorter_than_server" else None
        started = time.monotonic()
        assert server.handle_request() is None
        assert time.monotonic() - started < IO_TIMEOUT
    assert log.calls(in_parent=True) == ["handle_timeout"]


@pytest.mark.parametrize("how", ["timeout_zero", "non_blocking_socket"])
def test_handle_request_with_zero_timeout_serves_a_pending_request(module: Any, how: str) -> None:
    """``timeout = 0`` (or a non-blocking socket) makes handle_request() a poll."""
    served: list[bool] = []
    timeouts: list[bool] = []

    class Handler(module.BaseRequestHandler):
        def handle(self) -> None:
            served.append(True)

    class Server(module.TCPServer):
        def handle_timeout(self) -> None:
            timeouts.append(True)

    with Server(("127.0.0.1", 0), Handler) as server:
        if how == "timeout_zero":
            server.timeout = 0
        else:
            server.socket.setblocking(False)
        with connect(server.server_address):
            assert select.select([server], [], [], IO_TIMEOUT)[0]  # the request is pending
            server.handle_request()
    assert (served, timeouts) == ([True], [])


def test_verify_request_false_closes_without_running_the_handler(module: Any) -> None:
    ran: list[bool] = []

    class Handler(module.StreamRequestHandler):
        def handle(self) -> None:
            ran.append(True)

    class Picky(module.TCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            return False

    with serving(Picky(("127.0.0.1", 0), Handler)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"anyone there?\n")
            assert recv_all(client) == b""
    assert ran == []


def test_handler_errors_go_to_handle_error_and_the_server_keeps_serving(module: Any) -> None:
    class Server(module.ThreadingTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append(sys.exc_info()[0])

    class Handler(module.StreamRequestHandler):
        def handle(self) -> None:
            if self.rfile.readline() == b"boom\n":
                raise ValueError("handler failed on purpose")
            self.wfile.write(b"fine\n")

    errors: list[type[BaseException] | None] = []
    with serving(Server(("127.0.0.1", 0), Handler)) as server:
        for line, reply in [(b"boom\n", b""), (b"ok\n", b"fine\n")]:
            with connect(server.server_address) as client:
                client.sendall(line)
                assert recv_all(client) == reply
    assert errors == [ValueError]


# -- server life cycle ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["TCPServer", "UDPServer", "ThreadingTCPServer",
                                  "ForkingTCPServer", "UnixStreamServer"])
def test_context_manager_closes_the_socket(module: Any, name: str, unix_path: str) -> None:
    cls = server_class(module, name)
    with cls(address_for(cls, unix_path), module.BaseRequestHandler) as server:
        assert server.socket.fileno() >= 0
    assert server.socket.fileno() == -1
    server.server_close()  # closing twice is harmless


@pytest.mark.parametrize("name", ["TCPServer", "UDPServer", "UnixStreamServer"])
def test_bind_and_activate_false_lets_the_caller_set_up_the_socket(
        module: Any, name: str, unix_path: str) -> None:
    cls = server_class(module, name)
    stream = cls.socket_type == socket.SOCK_STREAM
    handler = echo_handler(module.StreamRequestHandler if stream
                           else module.DatagramRequestHandler)
    address = address_for(cls, unix_path)
    with cls(address, handler, bind_and_activate=False) as server:
        assert server.server_address == address  # not bound yet: nothing read back
        assert server.socket.getsockname() in [("0.0.0.0", 0), ""]
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        if cls.address_family == socket.AF_INET:
            assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert server.server_address == server.socket.getsockname()
        if stream:
            with connect(server.server_address, cls.address_family) as client:
                client.sendall(b"late\n")
                server.handle_request()
                assert recv_all(client) == b"late\n"
        else:
            with datagram_client(cls.address_family, unix_path) as client:
                client.sendto(b"late\n", server.server_address)
                server.handle_request()
                assert client.recv(100) == b"late\n"


def test_failed_bind_closes_the_socket(module: Any) -> None:
    """bpo-22435: the socket was leaked when server_bind() or server_activate() failed."""
    sockets: list[socket.socket] = []

    class Server(module.TCPServer):
        def server_close(self) -> None:
            sockets.append(self.socket)
            super().server_close()

    for _ in range(20):
        with pytest.raises(OverflowError):
            Server(("127.0.0.1", -1), module.StreamRequestHandler)
    assert [s.fileno() for s in sockets] == [-1] * 20


def test_shutdown_stops_serve_forever_started_just_before(module: Any) -> None:
    """bpo-2302: shutdown() right after the serving thread starts always ends the loop."""
    servers = [module.TCPServer(("127.0.0.1", 0), module.StreamRequestHandler)
               for _ in range(10)]
    threads = [threading.Thread(target=s.serve_forever, args=(POLL_INTERVAL,)) for s in servers]
    try:
        for thread, server in zip(threads, servers):
            thread.start()
            server.shutdown()
        for thread in threads:
            thread.join(IO_TIMEOUT)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        for server in servers:
            server.server_close()


def test_serve_forever_runs_again_after_shutdown(module: Any) -> None:
    server = module.TCPServer(("127.0.0.1", 0), echo_handler(module.StreamRequestHandler))
    for run in range(2):
        thread = threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL,))
        thread.start()
        try:
            with connect(server.server_address) as client:
                client.sendall(b"run %d\n" % run)
                assert recv_all(client) == b"run %d\n" % run
        finally:
            server.shutdown()
            thread.join(IO_TIMEOUT)
        assert not thread.is_alive()
    server.server_close()


def test_shutdown_from_a_request_thread_stops_serve_forever(module: Any) -> None:
    class Stopper(module.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"stopping\n")
            self.server.shutdown()

    with module.ThreadingTCPServer(("127.0.0.1", 0), Stopper) as server:
        thread = threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL,))
        thread.start()
        with connect(server.server_address) as client:
            assert recv_all(client) == b"stopping\n"
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive()


def test_code_reaching_into_private_loop_state_still_works(module: Any) -> None:
    """Old code sets the name-mangled flag to stop, or calls _handle_request_noblock()."""
    server = module.TCPServer(("127.0.0.1", 0), echo_handler(module.StreamRequestHandler))
    with server:
        assert isinstance(server._BaseServer__is_shut_down, threading.Event)
        with connect(server.server_address) as client:
            client.sendall(b"noblock\n")
            assert select.select([server], [], [], IO_TIMEOUT)[0]
            server._handle_request_noblock()
            assert recv_all(client) == b"noblock\n"
        thread = threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL,))
        thread.start()
        server._BaseServer__shutdown_request = True
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive()


# -- ThreadingMixIn and ForkingMixIn ----------------------------------------------------


@pytest.mark.parametrize(("block_on_close", "daemon_threads", "joined"), [
    (True, False, True), (True, True, False), (False, False, False)])
def test_threading_server_close_joins_only_non_daemon_threads_when_blocking(
        module: Any, block_on_close: bool, daemon_threads: bool, joined: bool) -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []
    request_threads: list[threading.Thread] = []

    class Slow(module.BaseRequestHandler):
        def handle(self) -> None:
            request_threads.append(threading.current_thread())
            started.set()
            release.wait(IO_TIMEOUT)
            finished.append(True)

    class ReleasingOnClose(module.TCPServer):
        def server_close(self) -> None:
            if joined:  # let the handler end, right before ThreadingMixIn joins it
                release.set()
            super().server_close()

    class Server(module.ThreadingMixIn, ReleasingOnClose):
        pass

    Server.block_on_close, Server.daemon_threads = block_on_close, daemon_threads
    server = Server(("127.0.0.1", 0), Slow)
    with connect(server.server_address):
        server.handle_request()
        assert started.wait(IO_TIMEOUT)
        server.server_close()
        assert finished == ([True] if joined else [])  # not joined: still in handle()
        release.set()
        [thread] = request_threads
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive() and thread.daemon == daemon_threads
    assert finished == [True]


def process_request_thread_without_super(server: Any, request: Any, client_address: Any) -> None:
    """process_request_thread() as subclasses rewrite it: the stdlib's body, no super()."""
    try:
        server.finish_request(request, client_address)
    except Exception:
        server.handle_error(request, client_address)
    finally:
        server.shutdown_request(request)


@pytest.mark.parametrize(("module", "override"), [
    ("socketserver", False), ("sockserve", False), ("socketserver", True),
    ("sockserve", True),
], indirect=["module"])
def test_threading_server_does_not_keep_finished_threads(module: Any, override: bool) -> None:
    """bpo-37193, also for subclasses that override process_request_thread()."""
    refs: list[weakref.ref[threading.Thread]] = []

    class Handler(module.BaseRequestHandler):
        def handle(self) -> None:
            refs.append(weakref.ref(threading.current_thread()))

    class Server(module.ThreadingTCPServer):
        if override:
            process_request_thread = process_request_thread_without_super

    with Server(("127.0.0.1", 0), Handler) as server:
        for _ in range(10):
            with connect(server.server_address):
                server.handle_request()
            thread = refs[-1]()
            if thread is not None:
                thread.join(IO_TIMEOUT)  # ended before the next request comes
            del thread
        gc.collect()
        # The stdlib drops dead threads when the next one starts: only the last is left.
        assert len([ref for ref in refs if ref() is not None]) <= 1


def test_threading_server_close_joins_threads_still_in_an_overridden_process_request_thread(
        module: Any) -> None:
    after_request, release = threading.Event(), threading.Event()
    finished: list[bool] = []
    request_threads: list[threading.Thread] = []

    class ReleasingOnClose(module.TCPServer):
        def server_close(self) -> None:
            release.set()  # runs before ThreadingMixIn.server_close() joins
            super().server_close()

    class Server(module.ThreadingMixIn, ReleasingOnClose):
        def process_request_thread(self, request: Any, client_address: Any) -> None:
            super().process_request_thread(request, client_address)
            request_threads.append(threading.current_thread())
            after_request.set()
            release.wait(IO_TIMEOUT)  # e.g. closing this thread's database connection
            finished.append(True)

    server = Server(("127.0.0.1", 0), module.BaseRequestHandler)
    try:
        with connect(server.server_address):
            server.handle_request()
            assert after_request.wait(IO_TIMEOUT)
            server.server_close()
            # The override's own clean-up ran before server_close() returned.
            assert finished == [True]
    finally:
        server.server_close()
        for thread in request_threads:
            thread.join(IO_TIMEOUT)


def test_finished_thread_stdlib_kept_until_next_request_sockserve_dropped_at_once(
        module: Any) -> None:
    request_threads: list[threading.Thread] = []

    class Handler(module.BaseRequestHandler):
        def handle(self) -> None:
            request_threads.append(threading.current_thread())

    with module.ThreadingTCPServer(("127.0.0.1", 0), Handler) as server:
        with connect(server.server_address):
            server.handle_request()
        request_threads[0].join(IO_TIMEOUT)
        assert len(server._threads) == (1 if is_stdlib(module) else 0)


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")


@needs_fork
@pytest.mark.parametrize("block_on_close", [True, False])
def test_forking_server_close_waits_for_children_when_blocking(
        module: Any, block_on_close: bool) -> None:
    class ReportPidThenWait(module.StreamRequestHandler):
        timeout = IO_TIMEOUT  # a child never outlives a broken test for long

        def handle(self) -> None:
            self.wfile.write(b"%d\n" % os.getpid())
            self.rfile.readline()

    class ReleasingOnClose(module.TCPServer):
        def server_close(self) -> None:
            if block_on_close:  # the child ends once it reads this line
                client.sendall(b"bye\n")
            super().server_close()

    class Server(module.ForkingMixIn, ReleasingOnClose):
        pass

    Server.block_on_close = block_on_close
    server = Server(("127.0.0.1", 0), ReportPidThenWait)
    with connect(server.server_address) as client:
        server.handle_request()
        pid = int(client.makefile("rb").readline())
        server.server_close()
        if block_on_close:
            assert not server.active_children
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # already reaped
        else:
            assert server.active_children == {pid}  # still waiting for our line
            client.sendall(b"bye\n")
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


@needs_fork
def test_forking_server_leaves_other_children_alone(module: Any) -> None:
    """bpo-1540386: collect_children() must not reap a child the application forked."""
    other = os.fork()
    if other == 0:
        os._exit(72)
    try:
        server = module.ForkingTCPServer(("127.0.0.1", 0), module.StreamRequestHandler)
        with connect(server.server_address), server:
            server.handle_request()
            server.collect_children()
        assert not server.active_children
    finally:
        _, status = os.waitpid(other, 0)
    assert os.waitstatus_to_exitcode(status) == 72


# -- request handlers -------------------------------------------------------------------


def test_finish_runs_when_handle_raises_but_not_when_setup_raises(module: Any) -> None:
    calls: list[str] = []

    class Handler(module.BaseRequestHandler):
        def setup(self) -> None:
            calls.append("setup")
            if self.request == "bad setup":
                raise RuntimeError("setup failed")

        def handle(self) -> None:
            calls.append("handle")
            raise KeyError("handle failed")

        def finish(self) -> None:
            calls.append("finish")

    with pytest.raises(KeyError):
        Handler("bad handle", ("127.0.0.1", 1), None)
    with pytest.raises(RuntimeError):
        Handler("bad setup", ("127.0.0.1", 1), None)
    assert calls == ["setup", "handle", "finish", "setup"]


def test_stream_handler_files_and_options(module: Any) -> None:
    seen: dict[str, Any] = {}

    class Handler(module.StreamRequestHandler):
        timeout = 3.5
        rbufsize = 0

        def handle(self) -> None:
            seen["wfile is buffered io"] = isinstance(self.wfile, io.BufferedIOBase)
            seen["same fileno"] = self.wfile.fileno() == self.request.fileno()
            seen["raw rfile"] = isinstance(self.rfile, io.RawIOBase)
            seen["connection"] = self.connection is self.request
            seen["timeout"] = self.connection.gettimeout()

    with module.TCPServer(("127.0.0.1", 0), Handler) as server:
        with connect(server.server_address):
            server.handle_request()
    assert seen == {"wfile is buffered io": True, "same fileno": True, "raw rfile": True,
                    "connection": True, "timeout": 3.5}


def test_unbuffered_wfile_sends_at_once_and_whole_despite_signals(module: Any) -> None:
    """write() returns the length and the data is on the wire before handle() returns;
    a large write interrupted by a signal is not cut short (PEP 475)."""
    big = 16 * 1024 * 1024
    results: dict[str, Any] = {}
    interrupted = threading.Event()
    errors: list[BaseException] = []

    class Handler(module.StreamRequestHandler):
        timeout = IO_TIMEOUT

        def handle(self) -> None:
            results["first write"] = self.wfile.write(b"write data\n")
            results["client said"] = self.rfile.readline()  # needs the line to be sent
            results["big write"] = self.wfile.write(b"\0" * big)

    def client_side() -> None:
        try:
            with connect(server.server_address) as client, client.makefile("rb") as reader:
                results["first line"] = reader.readline()
                client.sendall(b"client response\n")
                reader.read(100)  # the server is now sending the big chunk
                while not interrupted.is_set():
                    signal.pthread_kill(main_thread, signal.SIGUSR1)
                    interrupted.wait(1)
                results["received"] = len(reader.read())
        except BaseException as exc:
            errors.append(exc)

    main_thread = threading.get_ident()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: interrupted.set())
    try:
        with module.TCPServer(("127.0.0.1", 0), Handler) as server:
            client = threading.Thread(target=client_side)
            client.start()
            server.handle_request()
            client.join(IO_TIMEOUT)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not client.is_alive() and errors == []
    assert results == {"first write": 11, "first line": b"write data\n",
                       "client said": b"client response\n", "big write": big,
                       "received": big - 100}


def test_buffered_wfile_is_sent_by_finish(module: Any) -> None:
    written, checked = threading.Event(), threading.Event()

    class Handler(module.StreamRequestHandler):
        wbufsize = 1 << 16
        disable_nagle_algorithm = True

        def handle(self) -> None:
            for word in (b"a", b"b", b"c"):
                self.wfile.write(word)
            assert self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            written.set()
            checked.wait(IO_TIMEOUT)

    with serving(module.TCPServer(("127.0.0.1", 0), Handler)) as server:
        with connect(server.server_address) as client:
            assert written.wait(IO_TIMEOUT)
            assert select.select([client], [], [], 0)[0] == []  # nothing sent yet
            checked.set()
            assert recv_all(client) == b"abc"


def test_datagram_reply_is_one_datagram_sent_in_finish(module: Any) -> None:
    written, checked = threading.Event(), threading.Event()
    seen: list[Any] = []

    class Handler(module.DatagramRequestHandler):
        def handle(self) -> None:
            seen.append((self.packet, self.socket is self.server.socket))
            if self.rfile.read() == b"talk":
                self.wfile.write(b"a")
                self.wfile.write(b"b")
            written.set()
            checked.wait(IO_TIMEOUT)

    with serving(module.UDPServer(("127.0.0.1", 0), Handler)) as server:
        with datagram_client(socket.AF_INET, "") as client:
            client.sendto(b"talk", server.server_address)
            assert written.wait(IO_TIMEOUT)
            assert select.select([client], [], [], 0)[0] == []  # nothing sent yet
            checked.set()
            assert client.recv(100) == b"ab"
            client.sendto(b"silence", server.server_address)  # nothing written:
            assert client.recv(100) == b""  # an empty datagram all the same
    assert seen == [(b"talk", True), (b"silence", True)]


def test_datagram_longer_than_max_packet_size_is_truncated(module: Any) -> None:
    class Length(module.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"%d" % len(self.packet))

    with serving(module.UDPServer(("127.0.0.1", 0), Length)) as server:
        with datagram_client(socket.AF_INET, "") as client:
            client.sendto(b"x" * 10000, server.server_address)
            assert client.recv(100) == b"%d" % module.UDPServer.max_packet_size == b"8192"


# -- deliberate differences: each module's own behaviour --------------------------------


def test_handle_error_default_stdlib_prints_sockserve_logs(
        module: Any, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    class Boom(module.BaseRequestHandler):
        def handle(self) -> None:
            raise ValueError("handler failed on purpose")

    with caplog.at_level(logging.ERROR), module.TCPServer(("127.0.0.1", 0), Boom) as server:
        with connect(server.server_address) as client:
            server.handle_request()
            client_address = client.getsockname()
    records = [r for r in caplog.records if r.name.startswith("sockserve")]
    if is_stdlib(module):
        err = capsys.readouterr().err
        assert f"Exception occurred during processing of request from {client_address}" in err
        assert "ValueError: handler failed on purpose" in err
        assert records == []
    else:
        [record] = records
        assert record.name == "sockserve.server" and record.levelno == logging.ERROR
        assert str(client_address) in record.getMessage()
        assert record.exc_info is not None and record.exc_info[0] is ValueError


def test_shutdown_before_serve_forever_stdlib_blocks_sockserve_returns(module: Any) -> None:
    with module.TCPServer(("127.0.0.1", 0), module.BaseRequestHandler) as server:
        if is_stdlib(module):
            # It waits for a loop that has not run; nothing else can wake it.
            waiting = threading.Thread(target=server.shutdown)
            waiting.start()
            assert waiting.is_alive()
            server.serve_forever(POLL_INTERVAL)  # sees the request to stop, ends at once
            waiting.join(IO_TIMEOUT)
            assert not waiting.is_alive()
        else:
            server.shutdown()  # returns at once ...
            server.serve_forever(POLL_INTERVAL)  # ... and the next loop ends at once


@pytest.mark.parametrize("name", ["UnixStreamServer", "UnixDatagramServer"])
def test_unix_socket_file_on_server_close_stdlib_leaves_it_sockserve_removes_it(
        module: Any, name: str, unix_path: str) -> None:
    server = server_class(module, name)(unix_path, module.BaseRequestHandler)
    assert stat.S_ISSOCK(os.lstat(unix_path).st_mode)
    server.server_close()
    assert os.path.exists(unix_path) == is_stdlib(module)


def test_stale_unix_socket_file_at_bind_stdlib_fails_sockserve_replaces_it(
        module: Any, unix_path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
        crashed.bind(unix_path)  # bound, never unlinked: what a crash leaves behind
    handler = echo_handler(module.StreamRequestHandler)
    if is_stdlib(module):
        with pytest.raises(OSError) as excinfo:
            module.UnixStreamServer(unix_path, handler)
        assert excinfo.value.errno == errno.EADDRINUSE
        return
    with module.UnixStreamServer(unix_path, handler) as server:
        with connect(unix_path, socket.AF_UNIX) as client:
            client.sendall(b"fresh\n")
            server.handle_request()
            assert recv_all(client) == b"fresh\n"


def test_mixin_after_server_class_stdlib_silent_sockserve_warns(module: Any) -> None:
    def define() -> Any:
        class Wrong(module.TCPServer, module.ThreadingMixIn):
            pass

        return Wrong

    if is_stdlib(module):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            wrong = define()
    else:
        with pytest.warns(RuntimeWarning, match="mix-in"):
            wrong = define()
    # Either way the class serves one request at a time, as its MRO says.
    assert wrong.process_request is module.BaseServer.process_request


# -- the public API: names, classes, defaults, signatures -------------------------------


def test_all_is_a_superset_of_the_stdlibs() -> None:
    assert set(socketserver.__all__) <= set(sockserve.__all__)
    assert len(sockserve.__all__) == len(set(sockserve.__all__))


def test_every_public_class_is_in_all(module: Any) -> None:
    """The stdlib's own check: no public class left out of ``__all__``."""
    public = {name for name, value in vars(module).items()
              if not name.startswith("_") and isinstance(value, type)
              and value.__module__.split(".")[0] == module.__name__}
    assert public <= set(module.__all__)


def public_mro(cls: type) -> list[str]:
    return [c.__name__ for c in cls.__mro__ if c is not object and not c.__name__.startswith("_")]


@pytest.mark.parametrize("name", socketserver.__all__)
def test_same_class_hierarchy(name: str) -> None:
    theirs, ours = getattr(socketserver, name), getattr(sockserve, name)
    assert isinstance(ours, type)
    assert public_mro(ours) == public_mro(theirs)
    for other in socketserver.__all__:
        assert issubclass(ours, getattr(sockserve, other)) == \
            issubclass(theirs, getattr(socketserver, other)), other


DEFAULTS = ["address_family", "socket_type", "request_queue_size", "allow_reuse_address",
            "allow_reuse_port", "max_packet_size", "timeout", "max_children",
            "active_children", "block_on_close", "daemon_threads", "rbufsize", "wbufsize",
            "disable_nagle_algorithm"]
_MISSING = object()


@pytest.mark.parametrize("name", socketserver.__all__)
def test_same_class_attributes_and_defaults(name: str) -> None:
    theirs, ours = getattr(socketserver, name), getattr(sockserve, name)
    for attribute in DEFAULTS:
        expected = getattr(theirs, attribute, _MISSING)
        if expected is _MISSING:  # e.g. allow_reuse_port before 3.11: absent or off
            assert not getattr(ours, attribute, False), attribute
        else:
            assert getattr(ours, attribute, _MISSING) == expected, attribute


def methods(cls: type) -> dict[str, Callable[..., Any]]:
    """Public methods (and the special methods callers use) anywhere in the MRO."""
    found: dict[str, Callable[..., Any]] = {}
    for klass in cls.__mro__[:-1]:
        for attr, value in vars(klass).items():
            wanted = not attr.startswith("_") or attr in ("__init__", "__enter__", "__exit__")
            if wanted and callable(value):
                found.setdefault(attr, getattr(cls, attr))
    return found


def shape(function: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("name", socketserver.__all__)
def test_same_method_signatures(name: str) -> None:
    ours = getattr(sockserve, name)
    for method, theirs in methods(getattr(socketserver, name)).items():
        assert hasattr(ours, method), method
        assert shape(getattr(ours, method)) == shape(theirs), method
