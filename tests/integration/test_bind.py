"""bind_sockets() on real sockets: every address form, dual-stack, and cleanup on failure."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import socket
import stat
import sys
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import sockserve
from sockserve import address as address_module
from sockserve import aio
from sockserve.address import (
    AddressError,
    bind_sockets,
    display_client_address,
    parse_address,
    unmap_client_address,
)
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, connect, recv_all


def _ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback_works(),
                                reason="IPv6 loopback (::1) is not available here")
needs_dual_stack = pytest.mark.skipif(
    not _ipv6_loopback_works() or not socket.has_dualstack_ipv6(),
    reason="no dual-stack IPv6 sockets here")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="abstract Unix sockets are Linux-only")


@contextlib.contextmanager
def bound(address: str, **options: Any) -> Iterator[list[socket.socket]]:
    sockets = bind_sockets(address, **options)
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()
    assert all(sock.fileno() == -1 for sock in sockets)


def accept_one(listener: socket.socket, address: Any, family: int) -> tuple[Any, Any]:
    """Connect to *address*, accept; returns (the client's own name, what accept saw)."""
    listener.settimeout(IO_TIMEOUT)
    with connect(address, family) as client:
        conn, client_address = listener.accept()
        with conn:
            return client.getsockname(), client_address


def open_descriptors() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


@contextlib.contextmanager
def no_socket_leaks() -> Iterator[None]:
    """Fail if the block leaves a socket open: no new descriptor, no ResourceWarning."""
    gc.collect()  # what earlier tests left for the collector is not this block's
    before = open_descriptors()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert open_descriptors() == before


# -- TCP and dual-stack ----------------------------------------------------------------

@needs_dual_stack
@pytest.mark.parametrize("text", ["[::]:0", "*:0", ":0"])
def test_ipv4_client_on_a_dual_stack_socket(text: str) -> None:
    with bound(text) as sockets:
        assert len(sockets) == 1
        (listener,) = sockets
        assert listener.family == socket.AF_INET6
        assert listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = listener.getsockname()[1]
        client_name, client_address = accept_one(listener, ("127.0.0.1", port),
                                                 socket.AF_INET)
        assert client_address[0] == "::ffff:127.0.0.1"
        assert unmap_client_address(client_address) == ("127.0.0.1", client_name[1])
        assert display_client_address(client_address) == f"127.0.0.1:{client_name[1]}"
        _, client_address = accept_one(listener, ("::1", port), socket.AF_INET6)
        assert display_client_address(client_address).startswith("[::1]:")


@needs_ipv6
def test_without_dual_stack_the_wildcard_gets_one_socket_per_family() -> None:
    with bound("*:0", dual_stack=False) as sockets:
        assert sorted(sock.family for sock in sockets) == [socket.AF_INET, socket.AF_INET6]
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1  # port 0 picked once, shared by both
        for sock in sockets:
            if sock.family == socket.AF_INET6:
                assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            loopback = "127.0.0.1" if sock.family == socket.AF_INET else "::1"
            accept_one(sock, (loopback, sock.getsockname()[1]), sock.family)


@needs_ipv6
def test_ipv6_wildcard_without_dual_stack_is_ipv6_only() -> None:
    with bound("[::]:0", dual_stack=False) as (listener, *rest):
        assert rest == []
        assert listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


@needs_ipv6
def test_ipv6_loopback() -> None:
    with bound("[::1]:0") as sockets:
        (listener,) = sockets
        assert listener.family == socket.AF_INET6
        host, port = listener.getsockname()[:2]
        assert host == "::1"
        _, client_address = accept_one(listener, ("::1", port), socket.AF_INET6)
        assert unmap_client_address(client_address) == client_address


def test_ipv4_literal() -> None:
    with bound("127.0.0.1:0", backlog=5) as (listener,):
        assert listener.family == socket.AF_INET
        assert listener.type == socket.SOCK_STREAM
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 0
        assert listener.gettimeout() is None
        assert not listener.get_inheritable()
        client_name, client_address = accept_one(listener, listener.getsockname(),
                                                 socket.AF_INET)
        assert client_address == client_name
        assert display_client_address(client_address) == f"127.0.0.1:{client_name[1]}"


def test_localhost_gives_one_socket_per_address_on_one_port() -> None:
    with bound("localhost:0") as sockets:
        assert sockets
        assert len({sock.getsockname()[1] for sock in sockets}) == 1
        for sock in sockets:
            accept_one(sock, sock.getsockname(), sock.family)


def test_an_address_object_is_accepted_too() -> None:
    with bound(str(parse_address("tcp://127.0.0.1:0"))) as (listener,):
        assert listener.type == socket.SOCK_STREAM
    (sock,) = bind_sockets(parse_address("127.0.0.1:0"), reuse_address=False)
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_reuse_port_lets_two_sockets_share_a_port() -> None:
    with bound("127.0.0.1:0", reuse_port=True) as (first,):
        port = first.getsockname()[1]
        with bound(f"127.0.0.1:{port}", reuse_port=True) as (second,):
            assert second.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0


# -- UDP -------------------------------------------------------------------------------

def test_udp_socket_receives_datagrams_and_never_sets_reuse_address() -> None:
    with bound("udp://127.0.0.1:0") as (server,):
        assert server.type == socket.SOCK_DGRAM
        # SO_REUSEADDR on UDP would let another socket share the port (bpo-37228).
        assert server.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        server.settimeout(IO_TIMEOUT)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"ping", server.getsockname())
            data, client_address = server.recvfrom(100)
        assert data == b"ping"
        assert client_address[0] == "127.0.0.1"


@needs_dual_stack
def test_udp_dual_stack_receives_ipv4() -> None:
    with bound("udp://*:0") as (server,):
        assert server.family == socket.AF_INET6
        server.settimeout(IO_TIMEOUT)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"ping", ("127.0.0.1", server.getsockname()[1]))
            _, client_address = server.recvfrom(100)
            assert unmap_client_address(client_address) == \
                ("127.0.0.1", client.getsockname()[1])


@needs_dual_stack
def test_a_production_udp_handler_replies_through_the_servers_socket_to_ipv4() -> None:
    # As stdlib handlers may: self.server.socket.sendto(data, self.client_address).
    # An unmapped ('127.0.0.1', port) could not be sent to from the IPv6 socket.
    from sockserve.defaults import production

    class Reply(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            self.server.socket.sendto(self.packet.upper(), self.client_address)

    server = production(sockserve.UDPServer).from_sockets(bind_sockets("udp://*:0"), Reply)
    with serve_in_thread(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(IO_TIMEOUT)
        client.sendto(b"ping", ("127.0.0.1", server.server_address[1]))
        assert client.recv(100) == b"PING"


# -- Unix --------------------------------------------------------------------------------

def test_unix_file_socket(unix_path: str) -> None:
    with bound(f"unix:{unix_path}") as (listener,):
        assert listener.family == socket.AF_UNIX
        assert listener.getsockname() == unix_path
        _, client_address = accept_one(listener, unix_path, socket.AF_UNIX)
        assert display_client_address(client_address) == "unix:(unnamed)"
    os.unlink(unix_path)  # the caller's job, as documented


def test_unix_mode_and_owner_are_set_before_listening(unix_path: str) -> None:
    owner = (os.getuid(), os.getgid())
    with bound(f"unix:{unix_path}", unix_mode=0o600, unix_owner=owner):
        info = os.stat(unix_path)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert (info.st_uid, info.st_gid) == owner
    os.unlink(unix_path)


def test_unix_file_is_removed_when_setup_after_bind_fails(
        unix_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str, mode: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refuse)
    with no_socket_leaks():
        with pytest.raises(PermissionError) as excinfo:
            bind_sockets(f"unix:{unix_path}", unix_mode=0o600)
        assert f"cannot bind unix:{unix_path}" in str(excinfo.value)
        del excinfo
    assert not os.path.exists(unix_path)


def test_unix_stale_file_is_replaced(unix_path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(unix_path)  # bound, never unlinked: what a crash leaves behind
    with bound(f"unix:{unix_path}") as (listener,):
        accept_one(listener, unix_path, socket.AF_UNIX)
    os.unlink(unix_path)


def test_unix_live_socket_is_left_alone(unix_path: str) -> None:
    with bound(f"unix:{unix_path}") as (first,):
        with no_socket_leaks():
            with pytest.raises(OSError) as excinfo:
                bind_sockets(f"unix:{unix_path}")
            assert excinfo.value.errno == errno.EADDRINUSE
            assert f"unix:{unix_path}" in str(excinfo.value)
            del excinfo
        assert os.path.exists(unix_path)
        accept_one(first, unix_path, socket.AF_UNIX)
    os.unlink(unix_path)


def test_unix_regular_file_is_left_alone(unix_path: str) -> None:
    with open(unix_path, "w") as f:
        f.write("precious")
    with no_socket_leaks():
        with pytest.raises(OSError):
            bind_sockets(f"unix:{unix_path}")
    with open(unix_path) as f:
        assert f.read() == "precious"


@linux_only
def test_unix_abstract_socket() -> None:
    name = f"sockserve-test-{uuid.uuid4().hex}"
    with bound(f"unix:@{name}") as (listener,):
        assert listener.getsockname() == b"\0" + name.encode()
        listener.settimeout(IO_TIMEOUT)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.bind(f"\0{name}-client")
            client.settimeout(IO_TIMEOUT)
            client.connect(f"\0{name}")
            conn, client_address = listener.accept()
            conn.close()
        assert display_client_address(client_address) == f"unix:@{name}-client"


def test_unixgram_file_socket(unix_path: str) -> None:
    with bound(f"unixgram:{unix_path}") as (server,):
        assert server.type == socket.SOCK_DGRAM
        server.settimeout(IO_TIMEOUT)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(b"log line", unix_path)
            assert server.recvfrom(100)[0] == b"log line"
    os.unlink(unix_path)


# -- inherited descriptors ---------------------------------------------------------------

def test_fd_adopts_a_bound_socket_and_listens() -> None:
    parent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    parent.bind(("127.0.0.1", 0))
    address = parent.getsockname()
    fd = parent.detach()  # the descriptor now belongs to whoever adopts it
    with bound(f"fd://{fd}") as (listener,):
        assert listener.fileno() == fd
        assert (listener.family, listener.type) == (socket.AF_INET, socket.SOCK_STREAM)
        assert listener.getsockname() == address
        accept_one(listener, address, socket.AF_INET)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed along with the socket


def test_fd_keeps_a_listening_socket_and_makes_it_blocking(unix_path: str) -> None:
    parent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    parent.bind(unix_path)
    parent.listen(1)
    parent.setblocking(False)
    fd = parent.detach()
    with bound(f"fd://{fd}") as (listener,):
        assert listener.family == socket.AF_UNIX
        assert os.get_blocking(fd)
        accept_one(listener, unix_path, socket.AF_UNIX)
    os.unlink(unix_path)


def test_fd_datagram_socket() -> None:
    parent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    parent.bind(("127.0.0.1", 0))
    fd = parent.detach()
    with bound(f"fd://{fd}") as (server,):
        assert server.type == socket.SOCK_DGRAM


def test_fd_that_is_not_a_socket_is_left_open() -> None:
    read_end, write_end = os.pipe()
    try:
        with no_socket_leaks():
            with pytest.raises(OSError) as excinfo:
                bind_sockets(f"fd://{read_end}")
            assert excinfo.value.errno == errno.ENOTSOCK
            assert f"fd://{read_end}" in str(excinfo.value)
            del excinfo
        os.fstat(read_end)  # still open: still the caller's
    finally:
        os.close(read_end)
        os.close(write_end)


def test_fd_of_an_unbound_socket_is_refused_and_left_open() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unbound:
        with pytest.raises(AddressError, match="not a bound socket"):
            bind_sockets(f"fd://{unbound.fileno()}")
        assert unbound.fileno() != -1
        os.fstat(unbound.fileno())


# -- failure cleanup -------------------------------------------------------------------

def test_port_in_use_raises_and_leaves_no_socket_open() -> None:
    with bound("127.0.0.1:0", reuse_address=False) as (taken,):
        port = taken.getsockname()[1]
        with no_socket_leaks():
            with pytest.raises(OSError) as excinfo:
                bind_sockets(f"127.0.0.1:{port}")
            assert excinfo.value.errno == errno.EADDRINUSE
            assert f"cannot bind 127.0.0.1:{port}" in str(excinfo.value)
            assert isinstance(excinfo.value.__cause__, OSError)
            del excinfo


@needs_ipv6
def test_second_family_failing_closes_the_first() -> None:
    # Take the port in IPv6 only; the wildcard's IPv4 socket binds, its IPv6 twin fails.
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        taken.bind(("::", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with no_socket_leaks():
            with pytest.raises(OSError) as excinfo:
                bind_sockets(f"*:{port}", dual_stack=False)
            assert excinfo.value.errno == errno.EADDRINUSE
            del excinfo
        # no_socket_leaks() proved the IPv4 socket that did bind is closed again (a
        # probe bind() of the port could meet another process's ephemeral port).


@needs_dual_stack
def test_dual_stack_port_in_use_raises_without_falling_back() -> None:
    with bound("127.0.0.1:0", reuse_address=False) as (taken,):
        port = taken.getsockname()[1]
        with no_socket_leaks():
            with pytest.raises(OSError) as excinfo:
                bind_sockets(f"*:{port}")
            assert excinfo.value.errno == errno.EADDRINUSE
            assert f"cannot bind *:{port}" in str(excinfo.value)
            del excinfo


def _take_shared_port(monkeypatch: pytest.MonkeyPatch, times: int) -> list[Any]:
    """Make the first *times* binds of a second socket on an inherited port fail, as if
    another program held that port in the other family; returns the bind log."""
    real = address_module._bind_one
    log: list[Any] = []
    failures = iter(range(times))

    def bind_one(sock: socket.socket, sockaddr: Any, options: Any) -> None:
        log.append(sockaddr)
        if sockaddr[1] != 0 and next(failures, None) is not None:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        real(sock, sockaddr, options)

    monkeypatch.setattr(address_module, "_bind_one", bind_one)
    return log


@needs_ipv6
def test_port_zero_picks_again_when_the_shared_port_is_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    log = _take_shared_port(monkeypatch, times=2)
    with no_socket_leaks():
        with bound("*:0", dual_stack=False) as sockets:
            assert len(sockets) == 2
            assert len({sock.getsockname()[1] for sock in sockets}) == 1
    assert len(log) == 6  # two failed rounds of two binds, then one good round


@needs_ipv6
def test_port_zero_gives_up_after_a_few_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    log = _take_shared_port(monkeypatch, times=100)
    with no_socket_leaks():
        with pytest.raises(OSError) as excinfo:
            bind_sockets("*:0", dual_stack=False)
        assert excinfo.value.errno == errno.EADDRINUSE
        del excinfo
    assert len(log) == 2 * address_module._PORT_ZERO_ATTEMPTS


def test_fd_of_an_unbound_unix_socket_is_refused() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unbound:
        with pytest.raises(AddressError, match="not a bound socket"):
            bind_sockets(f"fd://{unbound.fileno()}")
        os.fstat(unbound.fileno())


def test_an_ipv4_mapped_literal_binds_and_takes_ipv4_clients() -> None:
    socks = bind_sockets("[::ffff:127.0.0.1]:0")
    try:
        with connect(("127.0.0.1", socks[0].getsockname()[1])):
            pass
    finally:
        for sock in socks:
            sock.close()


def test_a_name_with_an_ipv6_address_this_host_lacks_binds_the_others(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Docker without IPv6: /etc/hosts gives localhost ::1 too, and binding it fails.
    # The resolver's answer is made up here (2001:db8::/32 is never assigned); the
    # binding is real.
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "localhost":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
                    (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::1", port, 0, 0))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    socks = bind_sockets("localhost:0")
    try:
        assert [sock.family for sock in socks] == [socket.AF_INET]
    finally:
        for sock in socks:
            sock.close()


def test_adopting_a_connected_socket_is_refused_and_leaves_its_flags_alone() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            connect(listener.getsockname()) as client:
        conn, _ = listener.accept()
        with conn:
            fd = conn.fileno()
            conn.setblocking(False)
            os.set_inheritable(fd, True)
            with pytest.raises(AddressError, match="connected socket"):
                bind_sockets(f"fd://{fd}")
            assert os.get_blocking(fd) is False
            assert os.get_inheritable(fd) is True


class Ok(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"ok")


class AsyncOk(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        self.writer.write(b"ok")


@pytest.mark.parametrize("loop", [None, "asyncio", "uvloop"])
def test_from_socket_makes_a_bound_stream_socket_listen(loop: str | None) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server: Any = (sockserve.TCPServer.from_socket(sock, Ok) if loop is None else
                   aio.AsyncTCPServer.from_socket(sock, AsyncOk))
    if loop is not None:
        server.loop_factory = loop
    with serve_in_thread(server), connect(sock.getsockname()) as client:
        assert recv_all(client) == b"ok"


def test_from_socket_refuses_an_unbound_or_connected_socket() -> None:
    with socket.socket() as unbound, pytest.raises(AddressError, match="not a bound"):
        sockserve.TCPServer.from_socket(unbound, Ok)
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            connect(listener.getsockname()):
        conn, _ = listener.accept()
        with conn, pytest.raises(AddressError, match="connected socket"):
            sockserve.TCPServer.from_socket(conn, Ok)
