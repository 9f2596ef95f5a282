"""BaseServer: the serving loop, shutdown, and the path from accept() to a handler.

Hook names, attributes, defaults and call order are the stdlib's (``socketserver`` in
CPython 3.10-3.13); docs/compatibility.md lists what differs and why.  Between
``get_request()`` and ``process_request()`` sockserve adds, each off unless set:
connection limits (``_connections.py``), access rules, TLS handshakes driven by the loop
(``tls.py``), and a drain that waits for open connections and cuts the rest.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from ._connections import ConnectionRegistry
from .access import AccessList
from .address import MappedReplySocket, unmap_client_address
from ._wakeup import RECHECK, SHUTDOWN, Waker
from .stats import Counters, DrainReport, ServerStatistics
from .tls import DEFAULT_HANDSHAKE_TIMEOUT, Handshake, HandshakeDriver, blocking_handshake

logger = logging.getLogger("sockserve.server")

# poll() needs no extra descriptor and one syscall per wait, like the stdlib's choice.
_ServerSelector: type[selectors.BaseSelector] = getattr(
    selectors, "PollSelector", selectors.SelectSelector
)

# accept() errors that mean the process or the system has run out of something.
# The listening socket stays readable, so an immediate retry would spin the CPU:
# log, back off, retry (trio waits 100 ms; asyncio pauses for 1 s).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF_FIRST = 0.1
ACCEPT_BACKOFF_MAX = 1.0


class RequestDropped(OSError):
    """From ``get_request()``: what came in was dropped (and already counted and
    logged, as an oversized datagram is), so there is no request to serve."""


# accept()/recvfrom() errors that only concern one client, or a race with another
# acceptor: skip them quietly, as the stdlib does (accept(2), "Error handling").
ACCEPT_IGNORED_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNABORTED, errno.EPROTO,
     errno.ECONNRESET, errno.EPERM}
)

OverloadPolicy = Literal["pause", "reject"]


def _earliest(timeout: float | None, *dues: float | None) -> float | None:
    """*timeout*, or the first of the positive *dues* if one comes sooner."""
    for due in dues:
        if due is not None and due > 0 and (timeout is None or due < timeout):
            timeout = due
    return timeout


class BaseServer:
    """Base class for server classes: the serving loop and the request hooks.

    Methods for the caller: ``__init__``, ``serve_forever``, ``shutdown``,
    ``handle_request``, ``server_close``, ``fileno``.  Methods that may be overridden:
    ``server_bind``, ``server_activate``, ``get_request``, ``handle_timeout``,
    ``verify_request``, ``process_request``, ``finish_request``, ``shutdown_request``,
    ``close_request``, ``service_actions``, ``handle_error``.
    """

    timeout: float | None = None
    # TLS for stream servers (see tls.py): None serves plain connections.
    ssl_context: ssl.SSLContext | None = None
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    # Limits on stream connections; None is the stdlib's "no limit".  Past
    # max_connections, "pause" stops accepting (clients wait in the backlog) and
    # "reject" accepts, sends busy_reply if set, and closes; both are counted.
    max_connections: int | None = None
    max_connections_per_ip: int | None = None
    overload: OverloadPolicy = "pause"
    busy_reply: bytes | None = None
    # Listening sockets besides self.socket (several addresses, one server); the
    # loop accepts on all of them and get_request() reads _sockserve_listener.
    extra_sockets: Sequence[Any] = ()
    _sockserve_listener: Any = None
    # The running loop's selector, for mix-ins that register their own objects: any
    # registered data with a sockserve_ready(events) method is called when ready.
    _sockserve_selector: selectors.BaseSelector | None = None
    # While the loop is paused at capacity: how long it may wait before it looks again
    # (None: until woken; ForkingMixIn's children free their place unannounced).
    _sockserve_capacity_poll: float | None = None
    # While a drain runs: when it cuts what is left (time.monotonic(); inf: never).
    _sockserve_drain_until: float | None = None
    # When the loop stops, how long TLS handshakes in progress may still complete (and
    # be served); a live client's needs a round trip or two, a silent one is dropped.
    # 0 here: a serial server would serve them on the loop's thread, holding up the
    # shutdown() or drain() that stopped it (the concurrency mix-ins give them 1 s).
    _sockserve_handshake_grace_on_stop = 0.0
    # CIDR allow/deny rules checked before verify_request() (access.py).
    access_list: AccessList | None = None
    # On a dual-stack IPv6 socket, show IPv4 clients as ("a.b.c.d", port) rather than
    # ("::ffff:a.b.c.d", port, 0, 0).
    unmap_ipv4_clients = False
    # server_close() first waits this long for open connections, then cuts them.
    drain_timeout: float | None = None
    # Per-connection timeouts and the line limit, applied by StreamRequestHandler.
    idle_timeout: float | None = None
    read_timeout: float | None = None
    write_timeout: float | None = None
    connection_lifetime: float | None = None
    max_line_length: int | None = None

    if TYPE_CHECKING:  # provided by subclasses, as in the stdlib (and typeshed)
        socket: socket.socket

        def fileno(self) -> int: ...
        def get_request(self) -> tuple[Any, Any]: ...

    def __init__(self, server_address: Any, RequestHandlerClass: Any) -> None:
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        # Set while no serve_forever() loop runs, so shutdown() never waits for a loop
        # that does not exist (the stdlib starts it clear and deadlocks).
        self.__is_shut_down = threading.Event()
        self.__is_shut_down.set()
        self.__shutdown_request = False
        self.__loop_owner: tuple[int, int] | None = None  # (pid, thread id) of the loop
        self.__waker: Waker | None = None
        self.__accept_resume_at = 0.0
        self.__accept_backoff = 0.0
        self.__handshakes: HandshakeDriver | None = None
        self.__accept_backlog_on_stop = False
        self._sockserve_counters = Counters()
        self._sockserve_connections = ConnectionRegistry(on_release=self.__connection_closed)
        # Set when a drain begins: handlers may poll it to finish early.
        self.draining = threading.Event()

    # -- the loop ---------------------------------------------------------------

    def server_activate(self) -> None:
        """Called by the constructor to activate the server; may be overridden."""

    def serve_forever(self, poll_interval: float | None = 0.5) -> None:
        """Handle one request at a time until ``shutdown()``.

        ``service_actions()`` runs every *poll_interval* seconds and after each request;
        ``shutdown()`` wakes the loop immediately rather than after *poll_interval*.
        Ignores ``self.timeout``.

        Resource handling: a wake-up socketpair lives exactly as long as this call.
        """
        self._sockserve_check_settings()
        self.__is_shut_down.clear()
        try:
            # A shutdown() that came before the loop started ends it before it touches
            # the socket, which the caller may already have closed.
            if self.__shutdown_request:
                return
            self._sockserve_before_serving()
            self.draining.clear()  # from an earlier drain()
            self.__waker = waker = Waker()
            self.__loop_owner = (os.getpid(), threading.get_ident())
            with _ServerSelector() as selector:
                selector.register(waker, selectors.EVENT_READ)
                self.__handshakes = handshakes = HandshakeDriver(
                    selector, self.__dispatch, self.__handshake_failed)
                self._sockserve_selector = selector
                stopped = False
                try:
                    self._sockserve_serve_loop(selector, waker, poll_interval)
                    if self.__accept_backlog_on_stop:
                        self._sockserve_accept_backlog()
                    stopped = True
                finally:
                    self.__handshakes = None
                    try:
                        # Connections still in their TLS handshake: after a normal stop
                        # they are served too if their clients complete it soon; else
                        # dropped.
                        if stopped:
                            handshakes.finish(self._sockserve_handshake_grace_on_stop)
                        else:
                            handshakes.close()
                    finally:
                        try:
                            self._sockserve_loop_ended(waker, stopped)
                        finally:
                            self._sockserve_selector = None
        finally:
            if self.__waker is not None:
                self.__waker.close()
                self.__waker = None
            self.__shutdown_request = False
            self.__accept_backlog_on_stop = False  # a drain(backlog=True) is this loop's
            self.__is_shut_down.set()
            # Last: until here, a shutdown() on this thread (a signal handler running
            # during this cleanup) must see that the loop is its own and not wait.
            self.__loop_owner = None

    def _sockserve_loop_ended(self, waker: Waker, stopped: bool) -> None:
        """Called once the loop has ended, with its selector still open: *stopped* if
        it stopped normally (after accepting the backlog, for ``drain(backlog=True)``).
        A mix-in that keeps connections in that selector ends them here (_evented.py)."""

    def _sockserve_listeners(self) -> list[Any]:
        """What the loop waits on for new requests: the server itself (its fileno(),
        as in the stdlib) and any further listening sockets (``extra_sockets``)."""
        return [self, *self.extra_sockets]

    def _sockserve_serve_loop(self, selector: selectors.BaseSelector, waker: Waker,
                              poll_interval: float | None) -> None:
        listeners = self._sockserve_listeners()
        listening = False
        while not self.__shutdown_request:
            listening, pause, recheck = self.__listen_if_able(selector, listeners, listening)
            handshake_due = self.__handshakes.expire() if self.__handshakes else None
            ready = selector.select(_earliest(poll_interval, pause, handshake_due, recheck))
            requests_ready = []
            for key, events in ready:
                if key.data == "listener":
                    requests_ready.append(key.fileobj)
                elif key.fileobj is waker:
                    self._sockserve_read_wakeups(waker)
                elif isinstance(key.data, Handshake) and self.__handshakes is not None:
                    self.__handshakes.advance(key.data)
                elif hasattr(key.data, "sockserve_ready"):  # a mix-in's own (_evented.py)
                    key.data.sockserve_ready(events)
            # Checked after every wait, so that nothing is accepted once shutdown() has
            # been requested (bpo-35017).
            if self.__shutdown_request:
                break
            for n, listener in enumerate(requests_ready):
                if n and not self._sockserve_has_capacity():
                    break  # several listeners were ready: the rest wait in their backlogs
                self.__accept_from(listener)
            self.service_actions()

    def __listen_if_able(self, selector: selectors.BaseSelector, listeners: list[Any],
                         listening: bool) -> tuple[bool, float, float | None]:
        """(Un)register *listeners* in *selector*: accept unless backing off or at
        capacity.  Returns whether it listens now, the back-off left, and when to look
        at the capacity again (``_sockserve_capacity_poll`` while not listening)."""
        pause = self.__accept_resume_at - time.monotonic()
        if listening != (pause <= 0 and self._sockserve_has_capacity()):
            for listener in listeners:
                if listening:
                    selector.unregister(listener)
                else:
                    selector.register(listener, selectors.EVENT_READ, "listener")
            listening = not listening
        return listening, pause, None if listening else self._sockserve_capacity_poll

    def __accept_from(self, listener: Any) -> None:
        """One request from *listener* (the server itself, or one of extra_sockets)."""
        self._sockserve_listener = None if listener is self else listener
        try:
            self._handle_request_noblock()
        finally:
            self._sockserve_listener = None

    def shutdown(self) -> None:
        """Stop the ``serve_forever()`` loop and wait until it has stopped.

        Safe from any thread, from a request handler (serial, threaded or forked) and
        before the loop starts: it only waits when a loop is running in another thread
        of this process, and that loop is woken at once.  From a forked child it asks
        the parent's loop to stop and returns.  (To also finish or cut the open
        connections, use ``drain()``.)
        """
        self._sockserve_request_stop()
        self.__wait_for_the_loop()

    def __wait_for_the_loop(self) -> None:
        """Wait until the loop asked to stop has stopped, where that can be waited for."""
        owner = self.__loop_owner
        if owner is not None and owner[0] != os.getpid():
            return  # a forked child: the loop is the parent's, and it has been told
        if owner == (os.getpid(), threading.get_ident()):
            return  # a handler on the loop's own thread: the loop ends after it
        self.__is_shut_down.wait()

    def _sockserve_request_stop(self) -> None:
        """Ask the running loop to stop, and return: a flag and a wake-up, no lock
        (safe from any thread, and from a signal handler)."""
        self.__shutdown_request = True
        waker = self.__waker
        if waker is not None:
            waker.wake(SHUTDOWN)

    def drain(self, timeout: float | None, *, backlog: bool = False) -> DrainReport:
        """Stop accepting, let open connections finish, cut what is left at *timeout*.

        In order: the loop is told to stop accepting and ``draining`` is set (handlers
        may poll it); with *backlog*, the loop first accepts and dispatches what waits
        in the kernel's backlog; connections already accepted are served until they
        close or *timeout* seconds pass, and the rest are shut down (a serial server's
        too, whose loop is busy in that handler), so handlers blocked on them see
        end-of-file and end.  Call it from outside the handlers.

        Returns:
            How many connections were open, finished and cut.
        """
        counts_before = self._sockserve_connections.counts()
        logger.info("draining %s: %s, deadline %s s", self.server_address,
                    self._sockserve_what_drains(), timeout)
        self.__accept_backlog_on_stop = backlog
        self._sockserve_set_drain_deadline(timeout)  # before the loop can stop
        # Before draining is set: a handler that sees it and returns must find the loop
        # stopping, not free to accept one more.
        self._sockserve_request_stop()
        self._sockserve_begin_drain(timeout)
        # A serial server's loop is busy in its handler until that connection ends, so
        # the deadline must reach the connections while this waits for the loop.
        cut_at_deadline = None
        until = self._sockserve_drain_until
        if until is not None and until != math.inf:
            cut_at_deadline = threading.Timer(max(0.0, until - time.monotonic()),
                                              self._sockserve_connections.cut_all)
            cut_at_deadline.daemon = True
            cut_at_deadline.start()
        try:
            self.__wait_for_the_loop()
        finally:
            if cut_at_deadline is not None:
                cut_at_deadline.cancel()
        return self._sockserve_finish_connections(timeout, counts_before)

    def _sockserve_what_drains(self) -> str:
        """What a drain beginning now waits for, for its log line."""
        return f"{len(self._sockserve_connections)} connections open"

    def _sockserve_begin_drain(self, timeout: float | None) -> None:
        """Set ``draining`` and the drain's deadline (unless a drain already set one),
        before the loop stops: a mix-in that still serves connections after the loop
        (_evented.py) cuts them then."""
        self.draining.set()
        self._sockserve_set_drain_deadline(timeout)

    def _sockserve_set_drain_deadline(self, timeout: float | None) -> None:
        """The drain's deadline, *timeout* from now, unless a drain already set one."""
        if self._sockserve_drain_until is None:
            self._sockserve_drain_until = (math.inf if timeout is None
                                           else time.monotonic() + timeout)

    def stop_now(self) -> None:
        """Cut every open connection now (a second stop signal during a drain)."""
        self._sockserve_connections.cut_all()

    def reload(self) -> None:
        """Called by the runner on SIGHUP; pre-forked servers replace their workers."""

    def scale(self, delta: int) -> None:
        """Called by the runner on SIGTTIN (+1) / SIGTTOU (-1): more or fewer workers."""
        logger.info("nothing to scale in a %s", type(self).__name__)

    def _sockserve_finish_connections(self, timeout: float | None,
                                      counts_before: tuple[int, int] | None = None
                                      ) -> DrainReport:
        """Wait up to *timeout* for open connections to close, then cut the rest.

        Counts from *counts_before* (a ``counts()`` reading) on.
        """
        self._sockserve_begin_drain(timeout)
        connections = self._sockserve_connections
        finished_before, cut_before = counts_before or connections.counts()
        until = self._sockserve_drain_until
        assert until is not None
        try:  # the deadline stays set meanwhile: a loop still stopping may read it
            if not connections.wait_empty(None if until == math.inf
                                          else max(0.0, until - time.monotonic())):
                connections.cut_all()
        finally:
            self._sockserve_drain_until = None
        finished, cut = connections.counts()
        report = DrainReport(open=finished - finished_before + cut - cut_before,
                             finished=finished - finished_before, cut=cut - cut_before)
        if report.open:
            logger.info("drained %s: %d connections finished, %d cut",
                        self.server_address, report.finished, report.cut)
        return report

    def _sockserve_accept_backlog(self, listeners: list[Any] | None = None) -> None:
        """Accept what waits in the kernel backlog of *listeners* (default: all of them;
        drain with backlog=True), or a stopping pre-fork worker's own sockets."""
        self.__handshakes = None  # no loop left to drive them: handshake in place
        listeners = self._sockserve_listeners() if listeners is None else listeners
        with _ServerSelector() as selector:  # poll(): no FD_SETSIZE limit, unlike select()
            for listener in listeners:
                selector.register(listener, selectors.EVENT_READ)
            for _ in range(max(1, getattr(self, "request_queue_size", 5)) * 4):
                ready = selector.select(0)
                if not ready:
                    break
                for key, _ in ready:
                    self.__accept_from(key.fileobj)

    def service_actions(self) -> None:
        """Called by the ``serve_forever()`` loop; may be overridden."""

    def _sockserve_read_wakeups(self, waker: Waker) -> bytes:
        """Act on the messages that woke the loop (another process may have sent them).

        Returns them, for subclasses that understand more kinds.
        """
        messages = waker.read_messages()
        if SHUTDOWN in messages:
            self.__shutdown_request = True
        return messages

    def is_serving(self) -> bool:
        """True while ``serve_forever()`` runs and has not been asked to stop (as
        asyncio's ``Server.is_serving()``; the runner tells a restarting predecessor)."""
        return self.__loop_owner is not None and not self.__shutdown_request

    def _sockserve_on_loop_thread(self) -> bool:
        """Whether this is the thread (and process) running ``serve_forever()``."""
        return self.__loop_owner == (os.getpid(), threading.get_ident())

    def _sockserve_stop_requested(self) -> bool:
        """Whether ``shutdown()`` has asked the running loop to stop."""
        return self.__shutdown_request

    def _sockserve_has_capacity(self) -> bool:
        """Whether the loop may accept a request now (at max_connections, no)."""
        return (self.overload != "pause" or self.max_connections is None
                or len(self._sockserve_connections) < self.max_connections)

    def _sockserve_reclaim(self) -> bool:
        """A limit refuses a connection: free what is no longer used, if a mix-in
        knows of some (ForkingMixIn: exited children); True if the limit may be asked
        again."""
        return False

    def __connection_closed(self) -> None:
        if self.max_connections is not None:
            self._sockserve_wake()  # a paused loop may accept again

    def _sockserve_preparing(self) -> int:
        """Accepted requests not yet handed to process_request() (TLS handshakes)."""
        return len(self.__handshakes) if self.__handshakes is not None else 0

    def _sockserve_preparing_spoken(self) -> int:
        """Those of them whose client has sent something: requests on their way."""
        return self.__handshakes.spoken() if self.__handshakes is not None else 0

    def statistics(self) -> ServerStatistics:
        """A snapshot of this process's counters (see stats.py)."""
        c = self._sockserve_counters
        return ServerStatistics(
            accepted=c.accepted, denied=c.denied, rejected=c.rejected,
            tls_failed=c.tls_failed, tls_timed_out=c.tls_timed_out,
            tls_in_progress=self._sockserve_preparing(),
            connections=len(self._sockserve_connections), oversized=c.oversized,
            replies_dropped=c.replies_dropped)

    def _sockserve_wake(self) -> None:
        """Make a running ``serve_forever()`` look at its state again; any thread."""
        waker = self.__waker
        if waker is not None:
            waker.wake(RECHECK)

    def handle_request(self) -> None:
        """Handle one request, blocking up to ``self.timeout`` (or the socket's timeout).

        Calls ``handle_timeout()`` if no request arrived in time.
        """
        self._sockserve_check_settings()
        self._sockserve_before_serving()
        timeout = self.socket.gettimeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        # A connection that closes (or a pool with room again) wakes this wait, as it
        # wakes serve_forever(): at max_connections with overload "pause" the next
        # client waits in the backlog here too, rather than being rejected.
        # Not while serve_forever() runs (elsewhere): its waker's messages are its own.
        waker = Waker() if self.__waker is None else None
        if waker is not None:
            self.__waker = waker
        try:
            with _ServerSelector() as selector:
                if waker is not None:
                    selector.register(waker, selectors.EVENT_READ)
                listeners, listening = self._sockserve_listeners(), False
                while True:
                    # Clamped at 0: a zero timeout still polls once, as in the stdlib.
                    remaining = None if deadline is None \
                        else max(0.0, deadline - time.monotonic())
                    listening, pause, recheck = self.__listen_if_able(
                        selector, listeners, listening)
                    for key, _ in selector.select(_earliest(remaining, pause, recheck)):
                        if key.fileobj is waker:
                            waker.read_messages()
                        else:
                            return self.__accept_from(key.fileobj)
                    if deadline is not None and time.monotonic() >= deadline:
                        return self.handle_timeout()
        finally:
            if waker is not None:
                if self.__waker is waker:  # not a serve_forever()'s that started since
                    self.__waker = None
                waker.close()

    def _sockserve_check_settings(self) -> None:
        """Refuse settings that cannot work together (the async servers check too)."""
        socket_type = getattr(self, "socket_type", socket.SOCK_STREAM)
        if self.ssl_context is not None and socket_type != socket.SOCK_STREAM:
            raise TypeError(f"{type(self).__name__}: TLS (ssl_context) needs a stream "
                            "server; DTLS is not supported")
        size = getattr(self, "max_packet_size", 0)
        if socket_type == socket.SOCK_DGRAM and \
                (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ValueError(f"{type(self).__name__}: max_packet_size must be a number of "
                             f"bytes (an int, 0 or more), not {size!r}")

    def _sockserve_before_serving(self) -> None:
        """Called as ``serve_forever()`` and ``handle_request()`` begin."""

    def _handle_request_noblock(self) -> None:
        """Accept one request and run it through verify_request → process_request.

        Called only when the socket is readable, so get_request() does not block.
        """
        try:
            request, client_address = self.get_request()
        except OSError as exc:
            self.__accept_failed(exc)
            return
        self._sockserve_counters.accepted += 1
        if self.__accept_backoff:
            logger.info("accepting again on %s", self.server_address)
            self.__accept_backoff = 0.0
        if self.unmap_ipv4_clients:
            shown = unmap_client_address(client_address)
            if shown is not client_address and \
                    getattr(self, "socket_type", None) == socket.SOCK_DGRAM:
                request = (request[0], MappedReplySocket(request[1]))  # replies reach it
            client_address = shown
        if self.access_list is not None and not self.access_list.check(client_address):
            self._sockserve_counters.denied += 1
            logger.info("access denied to %s", client_address)
            self._sockserve_end(request)
            return
        if getattr(self, "socket_type", None) == socket.SOCK_STREAM and \
                not self.__admit(request, client_address):
            return
        try:
            verified = self.verify_request(request, client_address)
        except Exception:
            # The stdlib lets this end serve_forever(); the async servers and every
            # handler error keep serving the others.
            self.handle_error(request, client_address)
            verified = False
        except BaseException:
            self._sockserve_end(request)
            raise
        if not verified:
            self._sockserve_counters.denied += 1
            self._sockserve_end(request)
        elif self.ssl_context is not None:
            self.__start_tls(request, client_address)
        else:
            self.__dispatch(request, client_address)

    def __admit(self, request: Any, client_address: Any) -> bool:
        """Track a new connection, or reject it if a connection limit says no."""
        def admit() -> str | None:
            return self._sockserve_connections.admit(
                request, client_address, max_total=self.max_connections,
                max_per_host=self.max_connections_per_ip)

        refused_by = admit()
        if refused_by is not None and self._sockserve_reclaim():
            refused_by = admit()
        if refused_by is not None:
            self.reject_request(request, client_address, f"{refused_by} reached")
            return False
        until = self._sockserve_drain_until
        if until is not None and time.monotonic() >= until:
            # Taken from the backlog after a drain's deadline (a serial loop gets there
            # only once its handler was cut): cut too, so it cannot hold the drain.
            self._sockserve_connections.cut_all()
        return True

    def reject_request(self, request: Any, client_address: Any,
                       reason: str = "server full") -> None:
        """Refuse a request a limit does not allow: busy reply, close, count, log."""
        self._sockserve_counters.rejected += 1
        logger.warning("rejecting %s: %s", client_address, reason)
        if self.busy_reply is not None:
            try:
                # Never block the loop on a client that does not read.
                if isinstance(request, tuple):  # a datagram: (data, socket)
                    request[1].sendto(self.busy_reply, socket.MSG_DONTWAIT, client_address)
                elif isinstance(request, ssl.SSLSocket):  # after its handshake
                    request.setblocking(False)  # TLS takes no MSG_DONTWAIT
                    request.send(self.busy_reply)
                elif self.ssl_context is None:
                    request.send(self.busy_reply, socket.MSG_DONTWAIT)
                # else: a TLS client before its handshake; plaintext would be garbage
                # to it, so it is only closed.
            except OSError:
                pass  # gone, or its buffer is full: it is closed anyway
        self._sockserve_end(request)

    def __dispatch(self, request: Any, client_address: Any) -> None:
        """process_request(), with the stdlib's error handling around it."""
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self._sockserve_end(request)
        except BaseException:
            self._sockserve_end(request)
            raise

    def __start_tls(self, request: Any, client_address: Any) -> None:
        """Hand the handshake to the loop, or (under handle_request()) do it here."""
        context = self.ssl_context
        assert context is not None
        registry = self._sockserve_connections
        tls: ssl.SSLSocket | None = None

        def wrapped(wrapper: ssl.SSLSocket) -> None:
            nonlocal tls
            tls = wrapper
            registry.replace(request, wrapper)  # so that stop_now() reaches it

        try:
            if self.__handshakes is not None:
                handshake = self.__handshakes.start(context, request, client_address,
                                                    self.handshake_timeout)
                wrapped(handshake.tls)
                self.__handshakes.advance(handshake)
                return
            blocking_handshake(context, request, self.handshake_timeout, wrapped)
        except (ssl.SSLError, OSError) as exc:  # wrapping failed (a reset), or the handshake
            logger.info("TLS with %s: handshake failed: %s", client_address, exc)
            registry.release(request if tls is None else tls)
            self.__count_tls_failure(isinstance(exc, TimeoutError))
            return
        assert tls is not None
        self.__dispatch(tls, client_address)

    def __handshake_failed(self, tls: ssl.SSLSocket, client_address: Any,
                           timed_out: bool) -> None:
        self._sockserve_connections.release(tls)
        self.__count_tls_failure(timed_out)

    def __count_tls_failure(self, timed_out: bool) -> None:
        if timed_out:
            self._sockserve_counters.tls_timed_out += 1
        else:
            self._sockserve_counters.tls_failed += 1

    def __accept_failed(self, exc: OSError) -> None:
        """Back off on resource exhaustion, skip per-client errors, log anything else."""
        if exc.errno in ACCEPT_CAPACITY_ERRNOS:
            first = not self.__accept_backoff
            self.__accept_backoff = min(
                ACCEPT_BACKOFF_MAX, (self.__accept_backoff * 2) or ACCEPT_BACKOFF_FIRST
            )
            self.__accept_resume_at = time.monotonic() + self.__accept_backoff
            log = logger.warning if first else logger.debug
            log("accept() on %s failed (%s); pausing accepts for %.1f s",
                self.server_address, exc, self.__accept_backoff)
        elif exc.errno not in ACCEPT_IGNORED_ERRNOS and \
                not isinstance(exc, (TimeoutError, RequestDropped)):
            logger.warning("accept() on %s failed: %s", self.server_address, exc)

    # -- hooks ------------------------------------------------------------------

    def handle_timeout(self) -> None:
        """Called when ``handle_request()`` waited ``timeout`` seconds for nothing."""

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Return True to process the request, False to close it unanswered."""
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Run the handler (the mix-ins override this to use threads or processes)."""
        self.finish_request(request, client_address)
        self._sockserve_end(request)

    def _sockserve_end(self, request: Any) -> None:
        """``shutdown_request()``, then forget the connection, even when an override
        of ``shutdown_request()`` or ``close_request()`` (as the stdlib allows) does not
        call the base one that does."""
        try:
            self.shutdown_request(request)
        finally:
            self._sockserve_connections.release(request)

    def server_close(self) -> None:
        """Clean up the server; may be overridden."""

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Instantiate ``RequestHandlerClass``, which serves the request."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request: Any) -> None:
        """End one request; by default just close it."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Release the request's resources."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log the exception being handled, with its traceback and the client address.

        The stdlib prints to stderr; with logging unconfigured this still reaches
        stderr (logging's last-resort handler).  Override to do something else.
        """
        logger.error("Exception occurred during processing of request from %s",
                     client_address, exc_info=True)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *args: object) -> None:
        self.server_close()
