"""Unix-domain servers: stale files are replaced, live and foreign files are left alone."""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import threading

from collections.abc import Iterator

import pytest

import sockserve
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, connect, fill_datagram_queue, recv_all, wait_for


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class DatagramEcho(sockserve.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def echo_once(path: str) -> bytes:
    with connect(path, socket.AF_UNIX) as client:
        client.sendall(b"hi\n")
        return recv_all(client)


def leave_stale_socket(path: str, kind: int = socket.SOCK_STREAM) -> None:
    """A socket file whose owner is gone, as after a crash (bound, never unlinked)."""
    with socket.socket(socket.AF_UNIX, kind) as dead:
        dead.bind(path)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


@pytest.mark.parametrize("server_class", [
    sockserve.UnixStreamServer, sockserve.ThreadingUnixStreamServer,
    sockserve.ForkingUnixStreamServer])
def test_stream_server_replaces_a_stale_file_and_removes_its_own(
        unix_path: str, server_class: type[sockserve.UnixStreamServer]) -> None:
    leave_stale_socket(unix_path)
    with serve_in_thread(server_class(unix_path, Echo)):
        assert echo_once(unix_path) == b"hi\n"
    assert not os.path.exists(unix_path)


@pytest.mark.parametrize("server_class", [
    sockserve.UnixDatagramServer, sockserve.ThreadingUnixDatagramServer])
def test_datagram_server_replaces_a_stale_file_and_removes_its_own(
        unix_path: str, server_class: type[sockserve.UnixDatagramServer], tmp_path: object) -> None:
    leave_stale_socket(unix_path, socket.SOCK_DGRAM)
    client_path = unix_path + ".client"
    with serve_in_thread(server_class(unix_path, DatagramEcho)):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.bind(client_path)  # so the reply has somewhere to go
            client.settimeout(IO_TIMEOUT)
            client.sendto(b"ping", unix_path)
            assert client.recv(100) == b"ping"
    os.unlink(client_path)
    assert not os.path.exists(unix_path)


def test_a_live_servers_file_is_never_removed(unix_path: str) -> None:
    with serve_in_thread(sockserve.ThreadingUnixStreamServer(unix_path, Echo)):
        with pytest.raises(OSError) as excinfo:
            sockserve.UnixStreamServer(unix_path, Echo)
        assert excinfo.value.errno == 98  # EADDRINUSE
        assert echo_once(unix_path) == b"hi\n"  # the first server is untouched


def test_a_regular_file_is_never_removed(unix_path: str) -> None:
    with open(unix_path, "w") as f:
        f.write("precious")
    with pytest.raises(OSError):
        sockserve.UnixStreamServer(unix_path, Echo)
    with open(unix_path) as f:
        assert f.read() == "precious"


def test_a_file_another_server_bound_since_is_not_removed(unix_path: str) -> None:
    first = sockserve.UnixStreamServer(unix_path, Echo)
    os.unlink(unix_path)  # somebody removes our file and binds a new socket there
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(unix_path)
        first.server_close()
        assert stat.S_ISSOCK(os.lstat(unix_path).st_mode)


def test_abstract_namespace_socket(unix_path: str) -> None:
    name = "\0sockserve-test-" + os.path.basename(os.path.dirname(unix_path))
    with serve_in_thread(sockserve.UnixStreamServer(name, Echo)) as server:
        assert server.server_address == name.encode()
        assert echo_once(name) == b"hi\n"


def test_the_echo_demo_serves_unix_clients(unix_path: str) -> None:
    from sockserve.echo import UpperEchoHandler

    with serve_in_thread(sockserve.ThreadingUnixStreamServer(unix_path, UpperEchoHandler)):
        with connect(unix_path, socket.AF_UNIX) as client:
            client.sendall(b"hi\n")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"HI\n"


def test_every_tcp_server_class_has_its_unix_stream_twin() -> None:
    tcp = [name for name in sockserve.__all__ if name.endswith("TCPServer")]
    assert len(tcp) >= 7
    for name in tcp:
        twin = name.replace("TCPServer", "UnixStreamServer")
        assert twin in sockserve.__all__, twin
        assert issubclass(getattr(sockserve, twin), sockserve.UnixStreamServer)


class UpperDatagram(sockserve.DatagramRequestHandler):
    """Replies in upper case; to b"wait", once the server's ``release`` is set."""

    def handle(self) -> None:
        if self.packet == b"wait":
            assert self.server.release.wait(IO_TIMEOUT)
        self.wfile.write(self.packet.upper())


@pytest.fixture
def datagram_server(unix_path: str) -> Iterator[sockserve.UnixDatagramServer]:
    """A serial Unix datagram server whose replies wait at most 0.2 s for room."""
    server_class = type("Server", (sockserve.UnixDatagramServer,),
                        {"write_timeout": 0.2, "release": threading.Event()})
    with serve_in_thread(server_class(unix_path, UpperDatagram)) as server:
        yield server


def bound_client(path: str) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.bind(path)
    client.settimeout(IO_TIMEOUT)
    return client


def test_a_reply_to_a_datagram_client_that_does_not_read_waits_write_timeout_then_drops(
        datagram_server: sockserve.UnixDatagramServer, unix_path: str,
        caplog: pytest.LogCaptureFixture) -> None:
    # Its receive queue is full: the reply waits for room as long as write_timeout
    # allows, is dropped and counted, and the server serves the others.  (Without a
    # write_timeout it waits for ever, as the stdlib's does.)
    with bound_client(unix_path + ".s") as sleeper, bound_client(unix_path + ".a") as asker:
        fill_datagram_queue(unix_path + ".s")
        sleeper.sendto(b"hello", unix_path)
        wait_for(lambda: datagram_server.statistics().replies_dropped == 1, what="the drop")
        asker.sendto(b"ask", unix_path)
        assert asker.recv(100) == b"ASK"
    for name in (".s", ".a"):
        os.unlink(unix_path + name)
    assert [r.levelno for r in caplog.records if "dropped" in r.getMessage()] == \
        [logging.WARNING]
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("gone", ["closed", "unbound"])
def test_a_reply_to_a_datagram_client_that_cannot_get_it_is_dropped_without_a_traceback(
        datagram_server: sockserve.UnixDatagramServer, unix_path: str, gone: str,
        caplog: pytest.LogCaptureFixture) -> None:
    with bound_client(unix_path + ".a") as asker:
        if gone == "closed":
            with bound_client(unix_path + ".c") as client:
                client.sendto(b"wait", unix_path)
            os.unlink(unix_path + ".c")  # its reply has nowhere to go
            datagram_server.release.set()  # type: ignore[attr-defined]
        else:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
                client.sendto(b"no address", unix_path)  # unbound: nowhere to reply to
        wait_for(lambda: datagram_server.statistics().replies_dropped == 1, what="the drop")
        asker.sendto(b"ask", unix_path)
        assert asker.recv(100) == b"ASK"
    os.unlink(unix_path + ".a")
    assert not [r for r in caplog.records if r.exc_info]


def test_a_datagram_server_without_write_timeout_leaves_the_sockets_send_timeout_alone(
        unix_path: str) -> None:
    # The stdlib keeps what the application set (in server_bind(), say); and a socket
    # shared with a server that has a write_timeout keeps that one's.
    class OwnTimeout(sockserve.UnixDatagramServer):
        def server_bind(self) -> None:
            super().server_bind()
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                   struct.pack("ll", 2, 0))

    with serve_in_thread(OwnTimeout(unix_path, UpperDatagram)) as server:
        assert struct.unpack("ll", server.socket.getsockopt(
            socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16)) == (2, 0)


def test_serving_a_datagram_server_already_shut_down_and_closed_returns(unix_path: str) -> None:
    server = type("Server", (sockserve.UnixDatagramServer,), {"write_timeout": 1.0})(
        unix_path, UpperDatagram)
    server.shutdown()
    server.server_close()
    server.serve_forever()  # returns at once, touching no socket (as TCP servers do)
