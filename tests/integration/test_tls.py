"""TLS on stream servers: handshakes off the request path, failures counted, reload."""

from __future__ import annotations

import datetime
import errno
import selectors
import socket
import ssl
import struct
import threading
from typing import Any

import pytest
import trustme

import sockserve
from sockserve import tls
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, client_ctx, connect, recv_all, wait_for


class Info(sockserve.StreamRequestHandler):
    """Echoes a line, then reports what the handler can see of the TLS session."""

    def handle(self) -> None:
        line = self.rfile.readline()
        peer = self.request.getpeercert()
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        self.wfile.write(line)
        self.wfile.write(b"alpn=%s cn=%s\n" % (
            (self.request.selected_alpn_protocol() or "-").encode(),
            subject.get("commonName", "-").encode()))


def tls_exchange(address: Any, ctx: ssl.SSLContext, line: bytes = b"hello\n") -> list[bytes]:
    with connect(address) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as conn:
        conn.sendall(line)
        with conn.makefile("rb") as replies:
            return replies.readlines()


def tls_server(server_class: type, ctx: ssl.SSLContext, handler: type = Info,
               **settings: Any) -> Any:
    server = type("Server", (server_class,), settings)(("127.0.0.1", 0), handler)
    server.ssl_context = ctx
    return server


@pytest.mark.parametrize("server_class", [
    sockserve.TCPServer, sockserve.ThreadingTCPServer, sockserve.ForkingTCPServer,
    sockserve.ThreadPoolTCPServer, sockserve.PreForkTCPServer])
def test_round_trip_in_every_model(server_class: type, ca: trustme.CA,
                                   server_ctx: ssl.SSLContext) -> None:
    settings: dict[str, Any] = {"graceful_timeout": IO_TIMEOUT} if issubclass(
        server_class, sockserve.PreForkMixIn) else {}
    with serve_in_thread(tls_server(server_class, server_ctx, **settings)) as server:
        replies = tls_exchange(server.server_address, client_ctx(ca, alpn=["http/1.1"]))
    assert replies == [b"hello\n", b"alpn=http/1.1 cn=-\n"]


def test_unix_stream_server(ca: trustme.CA, server_ctx: ssl.SSLContext, unix_path: str) -> None:
    server = sockserve.UnixStreamServer(unix_path, Info)
    server.ssl_context = server_ctx
    with serve_in_thread(server):
        with connect(unix_path, socket.AF_UNIX) as raw:
            with client_ctx(ca).wrap_socket(raw, server_hostname="localhost") as conn:
                conn.sendall(b"unix\n")
                assert conn.makefile("rb").readline() == b"unix\n"


def test_a_silent_client_delays_nobody(ca: trustme.CA, server_ctx: ssl.SSLContext) -> None:
    # A serial server: if the handshake ran on the loop, the second client would wait.
    with serve_in_thread(tls_server(sockserve.TCPServer, server_ctx)) as server:
        with connect(server.server_address):  # connects, sends nothing
            wait_for(lambda: server.statistics().tls_in_progress == 1, what="handshake")
            replies = tls_exchange(server.server_address, client_ctx(ca))
            assert replies[0] == b"hello\n"
            assert server.statistics().tls_in_progress == 1


def test_silent_clients_take_no_pool_room(ca: trustme.CA, server_ctx: ssl.SSLContext) -> None:
    # A pool with overload "pause" keeps room for the handshakes under way, so that a
    # completed one never waits for a worker; but not for a client that has sent
    # nothing, or a few idle connections would hold every TLS client up until their
    # handshake timeout.
    server = tls_server(sockserve.ThreadPoolTCPServer, server_ctx, max_workers=1,
                        max_queue=1, handshake_timeout=60.0)
    with serve_in_thread(server):
        silent = [connect(server.server_address) for _ in range(4)]
        try:
            wait_for(lambda: server.statistics().tls_in_progress == 4, what="four handshakes")
            assert tls_exchange(server.server_address, client_ctx(ca))[0] == b"hello\n"
        finally:
            for client in silent:
                client.close()


def test_handshake_timeout_closes_and_counts(server_ctx: ssl.SSLContext) -> None:
    server = tls_server(sockserve.TCPServer, server_ctx, handshake_timeout=0.1)
    with serve_in_thread(server):
        with connect(server.server_address) as silent:
            assert recv_all(silent) == b""  # the server gave up and closed
        stats = server.statistics()
    assert stats.tls_timed_out == 1 and stats.tls_failed == 0 and stats.tls_in_progress == 0


@pytest.mark.parametrize("problem", ["unknown CA", "expired", "plain-text client"])
def test_bad_handshakes_fail_cleanly(problem: str, ca: trustme.CA,
                                     server_ctx: ssl.SSLContext) -> None:
    if problem == "expired":
        old = ca.issue_cert("localhost", not_after=datetime.datetime(2020, 1, 1,
                                                                   tzinfo=datetime.timezone.utc))
        with old.private_key_and_cert_chain_pem.tempfile() as pem:
            ctx = tls.server_context(pem)
    else:
        ctx = server_ctx
    with serve_in_thread(tls_server(sockserve.ThreadingTCPServer, ctx)) as server:
        if problem == "plain-text client":
            with connect(server.server_address) as plain:
                plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
                try:
                    assert recv_all(plain).startswith(b"\x15")  # at most a TLS alert
                except ConnectionResetError:
                    pass  # closed with our request unread: a reset is as good
        else:
            trusting = client_ctx(trustme.CA() if problem == "unknown CA" else ca)
            with pytest.raises(ssl.SSLCertVerificationError):
                tls_exchange(server.server_address, trusting)
        wait_for(lambda: server.statistics().tls_failed == 1, what="failure counted")
        if problem != "expired":  # the server keeps serving well-behaved clients
            assert tls_exchange(server.server_address, client_ctx(ca))[0] == b"hello\n"


def test_client_certificates(ca: trustme.CA) -> None:
    cert = ca.issue_cert("localhost")
    with cert.private_key_and_cert_chain_pem.tempfile() as pem, \
            ca.cert_pem.tempfile() as ca_pem:
        ctx = tls.server_context(pem, client_cafile=ca_pem, verify_client="required")
    with serve_in_thread(tls_server(sockserve.ThreadingTCPServer, ctx)) as server:
        with_cert = client_ctx(ca)
        ca.issue_cert("alice@example.test", common_name="alice").configure_cert(with_cert)
        assert tls_exchange(server.server_address, with_cert)[1] == b"alpn=- cn=alice\n"
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            # TLS 1.3: the refusal arrives with the first read after the handshake.
            tls_exchange(server.server_address, client_ctx(ca))
    with pytest.raises(ValueError, match="client_cafile"):
        tls.server_context("unused.pem", verify_client="optional")
    with pytest.raises(ValueError, match="'none', 'optional' or 'required'"):
        tls.server_context("unused.pem", client_cafile="unused.pem",
                           verify_client="always")  # type: ignore[arg-type]


def test_certificates_reload_without_closing_the_listener(ca: trustme.CA,
                                                          server_ctx: ssl.SSLContext) -> None:
    other_ca = trustme.CA()
    with other_ca.issue_cert("localhost").private_key_and_cert_chain_pem.tempfile() as pem:
        new_ctx = tls.server_context(pem)
    with serve_in_thread(tls_server(sockserve.ThreadingTCPServer, server_ctx)) as server:
        listener = server.socket.fileno()
        assert tls_exchange(server.server_address, client_ctx(ca))[0] == b"hello\n"
        server.ssl_context = new_ctx  # new connections get the new certificate
        assert tls_exchange(server.server_address, client_ctx(other_ca))[0] == b"hello\n"
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_exchange(server.server_address, client_ctx(ca))
        assert server.socket.fileno() == listener


def test_handle_request_does_a_bounded_handshake(ca: trustme.CA,
                                                 server_ctx: ssl.SSLContext) -> None:
    import threading
    with tls_server(sockserve.TCPServer, server_ctx) as server:
        result: list[list[bytes]] = []
        client = threading.Thread(target=lambda: result.append(
            tls_exchange(server.server_address, client_ctx(ca))))
        client.start()
        server.handle_request()
        client.join(IO_TIMEOUT)
    assert result and result[0][0] == b"hello\n"


def test_datagram_servers_refuse_tls(server_ctx: ssl.SSLContext) -> None:
    with sockserve.UDPServer(("127.0.0.1", 0), sockserve.DatagramRequestHandler) as server:
        server.ssl_context = server_ctx
        with pytest.raises(TypeError, match="DTLS"):
            server.handle_request()
        with pytest.raises(TypeError, match="DTLS"):
            server.serve_forever()


def test_stop_now_cuts_a_connection_still_in_its_handshake(server_ctx: ssl.SSLContext) -> None:
    server_type: Any = type("Server", (sockserve.ThreadingTCPServer,),
                            {"ssl_context": server_ctx, "handshake_timeout": 60.0})
    with serve_in_thread(server_type(("127.0.0.1", 0), sockserve.StreamRequestHandler)) \
            as server:
        with connect(server.server_address) as silent:
            wait_for(lambda: server.statistics().tls_in_progress == 1, what="the handshake")
            server.stop_now()
            assert silent.recv(100) == b""  # cut at once, not at the handshake timeout


def test_a_client_that_resets_before_its_handshake_harms_no_one(
        ca: Any, server_ctx: ssl.SSLContext) -> None:
    server_type: Any = type("Server", (sockserve.ThreadingTCPServer,),
                            {"ssl_context": server_ctx})
    server = server_type(("127.0.0.1", 0), Info)
    # In the backlog before the loop starts, then reset: wrapping it fails.
    quitter = connect(server.server_address)
    quitter.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    quitter.close()
    with serve_in_thread(server):
        with client_ctx(ca).wrap_socket(connect(server.server_address),
                                        server_hostname="127.0.0.1") as client:
            client.sendall(b"still serving\n")
            assert client.recv(100) == b"still serving\n"
            assert client.recv(100).startswith(b"alpn=")
        wait_for(lambda: len(server._sockserve_connections) == 0, what="the reset released")
    assert server.statistics().tls_failed == 1


def test_stop_now_cuts_a_connection_in_a_blocking_handshake(
        server_ctx: ssl.SSLContext) -> None:
    # drain(backlog=True) takes a silent client from the backlog once the loop has
    # ended: its handshake blocks the loop's thread, and stop_now() must reach it.
    loop_held, release_loop = threading.Event(), threading.Event()

    class Server(sockserve.ThreadingTCPServer):
        ssl_context = server_ctx
        handshake_timeout = 60.0

        def service_actions(self) -> None:
            if not release_loop.is_set():
                loop_held.set()
                assert release_loop.wait(IO_TIMEOUT)

    server = Server(("127.0.0.1", 0), sockserve.StreamRequestHandler)
    with serve_in_thread(server):
        assert loop_held.wait(IO_TIMEOUT)
        with connect(server.server_address) as silent:  # waits in the backlog
            drainer = threading.Thread(target=server.drain, args=(1.0,),
                                       kwargs={"backlog": True})
            drainer.start()
            wait_for(server.draining.is_set, what="the drain")
            release_loop.set()
            wait_for(lambda: server.statistics().connections == 1, what="the backlog taken")
            server.stop_now()
            assert silent.recv(100) == b""  # now, not after the handshake timeout
            drainer.join(IO_TIMEOUT)
            assert not drainer.is_alive()


def test_a_handshake_the_selector_refuses_is_closed(server_ctx: ssl.SSLContext) -> None:
    class Refusing(selectors.DefaultSelector):
        def register(self, fileobj: Any, events: int, data: Any = None) -> Any:
            raise OSError(errno.ENOSPC, "epoll watch limit")

    with socket.create_server(("127.0.0.1", 0)) as listener, \
            connect(listener.getsockname()) as client, Refusing() as selector:
        accepted, address = listener.accept()
        driver = tls.HandshakeDriver(selector, lambda *done: None, lambda *failed: None)
        with pytest.raises(OSError, match="watch limit"):
            driver.start(server_ctx, accepted, address, 5.0)
        assert len(driver) == 0
        assert client.recv(100) == b""  # closed, not left to the garbage collector
