"""Unix-domain servers: stale files are replaced, live and foreign files are left alone."""

from __future__ import annotations

import os
import socket
import stat

import pytest

import sockserve
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, connect, recv_all


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
