"""TLS for stream servers: safe server contexts, and handshakes the loop never waits on.

Set ``server.ssl_context`` (any ``ssl.SSLContext``; ``server_context()`` builds a safe
one) on a stream server.  Each accepted connection is wrapped and its handshake is
driven non-blocking by the serving loop's selector, with its own deadline
(``handshake_timeout``, 30 s by default, as in AnyIO): a client that connects and sends
nothing delays nobody.  Only a completed handshake reaches ``process_request()``, so
every concurrency model gets an ``ssl.SSLSocket`` as ``request`` and handlers see the
peer certificate (``request.getpeercert()``) and ALPN protocol
(``request.selected_alpn_protocol()``).  Failures and timeouts are logged at INFO
(a port scanner should not flood the log) and counted.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

logger = logging.getLogger("sockserve.tls")

DEFAULT_HANDSHAKE_TIMEOUT = 30.0

ClientVerification = Literal["none", "optional", "required"]
_VERIFY_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                 "required": ssl.CERT_REQUIRED}


def server_context(certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str] | None = None,
                   *, password: str | None = None, client_cafile: str | None = None,
                   verify_client: ClientVerification = "none",
                   alpn_protocols: Iterable[str] = ()) -> ssl.SSLContext:
    """A server-side context with safe defaults: TLS 1.2 or newer, the ssl module's
    default cipher choice, certificate chain loaded.

    Args:
        certfile, keyfile, password: the server's certificate chain and key (PEM).
        client_cafile: CA bundle that client certificates must chain to.
        verify_client: ask for a client certificate: "optional" checks one if sent,
            "required" refuses clients without a valid one.
        alpn_protocols: protocols offered in ALPN, in order of preference.

    Raises:
        ValueError: verify_client is not one of those, or needs client_cafile.
        ssl.SSLError, OSError: the files cannot be loaded.
    """
    if verify_client not in _VERIFY_MODES:
        raise ValueError(f"verify_client={verify_client!r}: use 'none', 'optional' or "
                         "'required'")
    if verify_client != "none" and client_cafile is None:
        raise ValueError(f"verify_client={verify_client!r} needs client_cafile")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile, password)
    if client_cafile is not None:
        context.load_verify_locations(client_cafile)
    context.verify_mode = _VERIFY_MODES[verify_client]
    protocols = list(alpn_protocols)
    if protocols:
        context.set_alpn_protocols(protocols)
    return context


def wrap_accepted(context: ssl.SSLContext, sock: Any) -> ssl.SSLSocket:
    """*sock*, an accepted connection, as a server-side TLS socket (no handshake yet).

    A connection the client has reset already fails before the wrap, whose own failure
    would leave a half-made TLS socket for the garbage collector to close.

    Raises:
        OSError: the connection is gone; *sock* is closed.
    """
    try:
        sock.getpeername()
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise


class Handshake:
    """One server-side handshake on an accepted socket, advanced without blocking.

    ``spoken`` says whether the client has sent anything yet (or closed): until then it
    may be an idle connection (a port scan, a pre-opened pool connection), not a
    client about to need a worker.
    """

    __slots__ = ("tls", "client_address", "deadline", "waiting_for", "spoken")

    def __init__(self, context: ssl.SSLContext, sock: Any, client_address: Any,
                 timeout: float) -> None:
        sock.setblocking(False)
        self.tls = wrap_accepted(context, sock)
        self.client_address = client_address
        self.deadline = time.monotonic() + timeout
        self.waiting_for = selectors.EVENT_READ
        self.spoken = False

    def fileno(self) -> int:
        return self.tls.fileno()

    def advance(self) -> bool:
        """Go as far as possible; True when complete (the socket is blocking again).

        Raises:
            ssl.SSLError, OSError: the handshake failed.
        """
        if not self.spoken:
            try:  # the raw socket's: an SSLSocket takes no flags
                socket.socket.recv(self.tls, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                self.spoken = True  # data, or end-of-file
            except BlockingIOError:
                pass
            except OSError:
                self.spoken = True  # reset: do_handshake() says so next
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self.waiting_for = selectors.EVENT_READ
            return False
        except ssl.SSLWantWriteError:
            self.waiting_for = selectors.EVENT_WRITE
            return False
        self.tls.setblocking(True)
        return True


class HandshakeDriver:
    """The handshakes in progress in one serving loop.

    Args:
        selector: the loop's selector; handshakes are registered with themselves as data.
        done: called with (ssl_socket, client_address) for each completed handshake.
        failed: called with (ssl_socket, client_address, timed_out) after a failure or
            a timeout, just before the socket is closed.
    """

    def __init__(self, selector: selectors.BaseSelector,
                 done: Callable[[ssl.SSLSocket, Any], None],
                 failed: Callable[[ssl.SSLSocket, Any, bool], None]) -> None:
        self._selector = selector
        self._done = done
        self._failed = failed
        self._pending: set[Handshake] = set()
        self._spoken = 0  # of them, those that have heard from their client

    def __len__(self) -> int:
        return len(self._pending)

    def spoken(self) -> int:
        """How many of the handshakes in progress have heard from their client."""
        return self._spoken

    def start(self, context: ssl.SSLContext, sock: Any, client_address: Any,
              timeout: float) -> Handshake:
        """Wrap *sock* and wait for its handshake; the caller then calls ``advance()``
        (the ClientHello is often already here), once it knows the TLS socket."""
        handshake = Handshake(context, sock, client_address, timeout)
        try:
            self._selector.register(handshake, handshake.waiting_for, handshake)
        except BaseException:  # e.g. epoll's watch limit: the caller counts the failure
            handshake.tls.close()
            raise
        self._pending.add(handshake)
        return handshake

    def advance(self, handshake: Handshake) -> None:
        """Called when the selector reports the handshake's socket ready."""
        spoken = handshake.spoken
        try:
            complete = handshake.advance()
        except (ssl.SSLError, OSError) as exc:
            self._spoken += handshake.spoken - spoken
            self._drop(handshake, f"handshake failed: {exc}")
            return
        self._spoken += handshake.spoken - spoken
        if complete:
            self._selector.unregister(handshake)
            self._forget(handshake)
            self._done(handshake.tls, handshake.client_address)
        else:
            self._selector.modify(handshake, handshake.waiting_for, handshake)

    def expire(self) -> float | None:
        """Drop handshakes past their deadline; returns seconds until the next one."""
        now = time.monotonic()
        nearest: float | None = None
        for handshake in list(self._pending):
            left = handshake.deadline - now
            if left <= 0:
                self._drop(handshake, "handshake timed out", timed_out=True)
            elif nearest is None or left < nearest:
                nearest = left
        return nearest

    def finish(self, grace: float) -> None:
        """The loop has stopped: drive the handshakes in progress to their end (a live
        client's takes a round trip or two) for at most *grace* seconds more, each
        within its own deadline, then abandon the rest.  Uses a selector of its own:
        the loop's still holds listeners that may be ready."""
        if not self._pending:
            return
        if grace <= 0:
            self.close()
            return
        until = time.monotonic() + grace
        loop_selector = self._selector
        try:
            selector = selectors.DefaultSelector()
        except OSError:  # out of descriptors, say: no grace then
            self.close()
            return
        with selector:
            for handshake in self._pending:
                loop_selector.unregister(handshake)
                selector.register(handshake, handshake.waiting_for, handshake)
            self._selector = selector
            try:
                while self._pending:
                    nearest = self.expire()
                    left = until - time.monotonic()
                    if not self._pending or left <= 0:
                        break
                    timeout = left if nearest is None else min(nearest, left)
                    for key, _ in selector.select(timeout):
                        if key.data in self._pending:
                            self.advance(key.data)
            finally:
                self.close()  # while their selector is open
                self._selector = loop_selector

    def close(self) -> None:
        """Abandon every handshake in progress (the loop is stopping)."""
        for handshake in list(self._pending):
            self._drop(handshake, "server stopping")

    def _forget(self, handshake: Handshake) -> None:
        if handshake in self._pending:
            self._pending.discard(handshake)
            self._spoken -= handshake.spoken

    def _drop(self, handshake: Handshake, reason: str, *, timed_out: bool = False) -> None:
        self._forget(handshake)
        try:
            try:
                self._selector.unregister(handshake)
            except KeyError:
                pass  # its selector is closed already (the loop ended in an error)
            logger.info("TLS with %s: %s", handshake.client_address, reason)
            self._failed(handshake.tls, handshake.client_address, timed_out)
        finally:
            handshake.tls.close()


def blocking_handshake(context: ssl.SSLContext, sock: Any, timeout: float,
                       wrapped: Callable[[ssl.SSLSocket], None] = lambda tls: None
                       ) -> ssl.SSLSocket:
    """The handshake for ``handle_request()``, which has no loop: bounded by *timeout*.
    *wrapped* is told the TLS socket before the handshake starts.

    Raises:
        ssl.SSLError, OSError (TimeoutError after *timeout*): the socket is closed.
    """
    sock.settimeout(timeout)
    tls = wrap_accepted(context, sock)
    try:
        wrapped(tls)
        tls.do_handshake()
    except BaseException:
        tls.close()
        raise
    tls.settimeout(None)
    return tls
