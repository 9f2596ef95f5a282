"""serve_forever() and shutdown(): prompt, never deadlocking, nothing accepted after."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import sockserve
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, connect, recv_all


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class ShutdownFromHandler(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"bye\n")
        self.server.shutdown()


def run_loop(server: sockserve.BaseServer, poll_interval: float | None) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, args=(poll_interval,), daemon=True)
    thread.start()
    return thread


def test_shutdown_from_another_thread_wakes_a_loop_that_never_polls() -> None:
    # poll_interval=None: the stdlib loop would sleep in select() until a request came.
    with sockserve.TCPServer(("127.0.0.1", 0), Echo) as server:
        thread = run_loop(server, None)
        with connect(server.server_address) as client:
            client.sendall(b"ping\n")
            assert recv_all(client) == b"ping\n"  # the loop is running
        server.shutdown()
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive()


@pytest.mark.parametrize("server_class", [
    sockserve.TCPServer, sockserve.ThreadingTCPServer, sockserve.ForkingTCPServer])
def test_shutdown_from_a_handler_stops_the_loop(server_class: type[sockserve.TCPServer]) -> None:
    with server_class(("127.0.0.1", 0), ShutdownFromHandler) as server:
        thread = run_loop(server, None)
        with connect(server.server_address) as client:
            assert recv_all(client) == b"bye\n"
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive(), "serve_forever() still running after shutdown()"


def test_shutdown_before_serve_forever_returns_and_the_loop_then_exits() -> None:
    with sockserve.TCPServer(("127.0.0.1", 0), Echo) as server:
        server.shutdown()  # the stdlib blocks here forever
        thread = run_loop(server, None)
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive()


def test_loop_can_serve_again_after_shutdown() -> None:
    with sockserve.TCPServer(("127.0.0.1", 0), Echo) as server:
        for _ in range(2):
            thread = run_loop(server, None)
            with connect(server.server_address) as client:
                client.sendall(b"again\n")
                assert recv_all(client) == b"again\n"
            server.shutdown()
            thread.join(IO_TIMEOUT)
            assert not thread.is_alive()


def test_no_request_is_accepted_after_shutdown_was_requested() -> None:
    handled: list[bytes] = []

    class Record(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            handled.append(self.rfile.readline())
            self.server.shutdown()

    with sockserve.TCPServer(("127.0.0.1", 0), Record) as server:
        # Both clients wait in the backlog before the loop starts.
        first = connect(server.server_address)
        second = connect(server.server_address)
        with first, second:
            first.sendall(b"first\n")
            second.sendall(b"second\n")
            thread = run_loop(server, None)
            thread.join(IO_TIMEOUT)
            assert not thread.is_alive()
            assert handled == [b"first\n"]


def test_shutdown_from_a_forked_handler_does_not_hang_the_child() -> None:
    pids: list[int] = []

    class Report(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.server.shutdown()  # in the child: must return, not wait forever
            self.wfile.write(b"%d\n" % os.getpid())

    with sockserve.ForkingTCPServer(("127.0.0.1", 0), Report) as server:
        thread = run_loop(server, None)
        with connect(server.server_address) as client:
            pids.append(int(recv_all(client)))
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive()
    assert pids and pids[0] != os.getpid()
    assert not server.active_children


def test_serve_in_thread_round_trip() -> None:
    with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), Echo)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"hello\n")
            assert recv_all(client) == b"hello\n"


def test_shutdown_while_out_of_descriptors_ends_the_loop_normally() -> None:
    # The loop's clean-up must need no new descriptor (none is left to make one).
    code = """
import os, socket, threading
import sockserve
from emfile_server import fill_descriptor_table
server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), sockserve.StreamRequestHandler)
errors = []
def serve():
    try:
        server.serve_forever()
    except BaseException as exc:
        errors.append(exc)
loop = threading.Thread(target=serve)
loop.start()
socket.create_connection(server.server_address, timeout=5).close()  # the loop is up
hogs = fill_descriptor_table()
server.shutdown()
loop.join(5)
for fd in hogs:
    os.close(fd)
server.server_close()
print(repr(errors))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=IO_TIMEOUT * 2, cwd=Path(__file__).parent)
    assert done.stdout.strip() == "[]", done.stderr
