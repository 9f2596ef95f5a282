"""What one ``serve()`` call owns: its loop, connections, handler tasks and stop signal.

The listening socket stays the server's: the loop is given a duplicate of it, which it
closes when serving stops, so ``serve_forever()`` can run again and ``server_close()``
(with its Unix socket file clean-up) stays the only place that closes the original.

Stopping (``close()``) is a drain: accepting stops, connections get a grace period to
finish, then their handlers are cancelled and the connections closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import os
import select
import socket
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast

from . import _aio_loop
from ._aio_admission import admit, allowed
from ._aio_driver import Parking, drive
from ._aio_limits import ConnectionLimits
from ._aio_streams import RECEIVE_BUFFER_SIZE, ConnectionReader
from ._aio_tls import start_handshake, tls_gone_before_handshake
from ._server import BaseServer
from .address import unmap_client_address
from .stats import DrainReport

if TYPE_CHECKING:
    from ._aio_datagram import DatagramServing

logger = logging.getLogger("sockserve.aio")

# After shutdown() cancels the handlers still running, how long they get to finish
# (their finally blocks and finish() run), and then how long closing connections get
# to send what is buffered, before they are aborted.  Both only bound misbehaving
# handlers and clients that do not read: a cancelled handler normally ends at once.
CANCEL_TIMEOUT = 5.0
CLOSE_TIMEOUT = 5.0

# Tasks take a context argument from Python 3.11 on; the direct resumption needs it to
# run the handler in its task's context.  On 3.10 handlers are resumed by their task.
DIRECT_RESUME = sys.version_info >= (3, 11)

# Stopping lets the loop run until the listening socket has nothing waiting and every
# accepted connection has reached connection_made() (stop_accepting()); this many
# passes at most (under a steady stream of clients, or if a transport failed to set up).
SETTLE_PASSES = 1000

NO_CONNECTIONS = DrainReport(open=0, finished=0, cut=0)


class Serving:
    """State of one ``serve()`` call; the protocols report to it."""

    def __init__(self, server: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.thread_id = threading.get_ident()
        self.stop: asyncio.Future[None] = loop.create_future()
        self.accepting = True
        self.counters = server._sockserve_counters
        # Every connection with a live transport; `admitted` of them passed the accept
        # rules and count as open (statistics().connections, limits, drain).
        self.connections: set[ConnectionReader] = set()
        self.admitted = 0
        self.released = 0  # admitted connections closed since serving started
        self.per_host: collections.Counter[str] = collections.Counter()
        self.handshakes = 0  # TLS handshakes under way
        self.created = 0  # protocols the listener made that connection_made() has not seen
        self.tasks: set[asyncio.Task[None]] = set()
        self.inet = server.address_family in (socket.AF_INET, socket.AF_INET6)
        self._forget = self.tasks.discard  # bound once: one less object per connection
        self.spawning = False
        self.finished: asyncio.Future[None] = loop.create_future()  # serve() returned
        self.ticker: asyncio.TimerHandle | None = None  # the next service_actions()
        self.listeners: list[asyncio.AbstractServer] = []  # a stream server's, one a socket
        self.endpoints: list[DatagramServing] = []  # a datagram server's, one a socket
        # Set by drain(): (timeout, backlog); None stops with the server's grace period.
        self.drain: tuple[float | None, bool] | None = None
        self._released_before: int | None = None  # `released` when the drain was asked
        self.report = NO_CONNECTIONS  # what stopping did
        self._quiet: asyncio.Future[None] | None = None  # nothing left to wait for
        self._cut = False
        self._all_closed: asyncio.Future[None] | None = None
        self._receive_buffer: memoryview | None = None
        # None when verify_request() is BaseServer's, which accepts everything.
        self.verify_request: Callable[[Any, Any], bool] | None = (
            None if type(server).verify_request is BaseServer.verify_request
            else server.verify_request)
        # A pre-forked worker counts admitted connections toward max_requests.
        self.took_request: Callable[[], None] | None = (
            None if server._aio_worker is None else server._aio_worker.took_request)

    @property
    def receive_buffer(self) -> memoryview:
        """The BufferedProtocol path's receive buffer, shared by this loop's connections
        (safe: the transport copies out of it before the next read)."""
        if self._receive_buffer is None:
            self._receive_buffer = memoryview(bytearray(RECEIVE_BUFFER_SIZE))
        return self._receive_buffer

    def request_stop(self, exc: BaseException | None = None) -> None:
        """End ``serve()``, with *exc* raised from it if given (loop thread only)."""
        if not self.stop.done():
            if exc is None:
                self.stop.set_result(None)
            else:
                self.stop.set_exception(exc)

    def request_drain(self, timeout: float | None, backlog: bool, released: int) -> None:
        """End ``serve()`` as a drain with this deadline (loop thread only); a stop
        already under way keeps its own.  *released*: ``self.released`` read when the
        drain was asked for; the report counts connections from there."""
        if not self.stop.done():
            self.drain = (timeout, backlog)
            self._released_before = released
        self.request_stop()

    def spawn(self, coro: Coroutine[Any, Any, None],
              context: contextvars.Context | None = None,
              task_class: type[asyncio.Task[None]] | None = None) -> asyncio.Task[None] | None:
        """Run a handler coroutine as a task, tracked until it ends.

        A task factory set on the loop makes the task, as for ``loop.create_task()``.
        Otherwise, on Python 3.12+ the task starts eagerly: a handler runs up to its
        first real wait inside the callback that received the connection or datagram,
        which saves a trip through the loop; one that completes right away needs no
        scheduling.  *task_class* (Python 3.11+, no task factory): an ``asyncio.Task``
        subclass to make it with.
        """
        loop = self.loop
        self.spawning = True  # the task may run its first step before it is tracked
        try:
            if loop.get_task_factory() is not None:
                task = loop.create_task(coro, context=context) \
                    if sys.version_info >= (3, 11) else loop.create_task(coro)
            elif sys.version_info >= (3, 12):
                task = (task_class or asyncio.Task)(coro, loop=loop, context=context,
                                                    eager_start=True)
            elif task_class is not None:
                task = task_class(coro, loop=loop, context=context)
            elif sys.version_info >= (3, 11):
                task = loop.create_task(coro, context=context)
            else:
                task = loop.create_task(coro)
        finally:
            self.spawning = False
        if task.done():
            return None
        self.tasks.add(task)
        # Given a context, the callback costs no copy of the current one.
        if context is None and sys.version_info >= (3, 12):
            context = task.get_context()
        task.add_done_callback(self._forget, context=context)
        return task

    # -- stream connections ---------------------------------------------------------

    def connection_made(self, reader: ConnectionReader, transport: asyncio.Transport) -> None:
        self.connections.add(reader)
        self.created -= 1
        if not self.accepting:
            transport.abort()
            return
        server = self.server
        self.counters.accepted += 1
        request = transport.get_extra_info("socket")
        client_address = transport.get_extra_info("peername")
        if client_address is None and self.inet:
            # Reset before the loop asked for its address (uvloop): gone, and with no
            # address the accept rules would take it for a Unix client.  A TLS client
            # counts as a failed handshake, as it does in the sync servers.
            if server.ssl_context is not None:
                tls_gone_before_handshake(server)
            transport.abort()
            return
        # The accept rules, in the sync servers' order (_aio_admission).
        if server.unmap_ipv4_clients:
            client_address = unmap_client_address(client_address)
        if server.access_list is not None and not allowed(server, client_address):
            transport.close()
            return
        if server.max_connections is None and server.max_connections_per_ip is None:
            reader._admitted = True
            self.admitted += 1
        elif not admit(self, reader, transport, client_address):
            return
        if self.verify_request is not None:
            try:
                accepted = self.verify_request(request, client_address)
            except Exception:
                server.handle_error(request, client_address)
                accepted = False
            if not accepted:
                self.counters.denied += 1
                transport.close()
                return
        if self.took_request is not None:
            self.took_request()
        limits = ConnectionLimits.from_server(server, self.loop)
        if limits is not None:
            reader._apply_limits(limits)
        if server.max_line_length is not None:
            reader._line_limit = server.max_line_length
        handshake = None
        if server.ssl_context is not None:
            handshake = start_handshake(self, reader, transport, server.ssl_context,
                                        client_address)
            if handshake is None:
                return
        context = None
        if DIRECT_RESUME:
            # The protocol resumes handle() itself while it waits on the connection
            # (_aio_driver); the task runs the rest, in the same context.
            reader._context = context = contextvars.copy_context()
            reader._parking = Parking(self.loop)
        self.spawn(drive(reader, server, request, client_address, handshake), context)

    def connection_lost(self, reader: ConnectionReader) -> None:
        self.connections.discard(reader)
        if reader._admitted:
            if reader._host is None and self._quiet is None:
                reader._admitted = False  # release(), without a call
                self.admitted -= 1
                self.released += 1
            else:
                self.release(reader)
        if not self.connections and self._all_closed is not None \
                and not self._all_closed.done():
            self._all_closed.set_result(None)

    def in_handler(self) -> bool:
        """Whether the running task is one of this serve()'s handlers."""
        return self.spawning or asyncio.current_task() in self.tasks

    def release(self, reader: ConnectionReader) -> None:
        """*reader* no longer counts as open (closed, or its TLS handshake failed)."""
        if not reader._admitted:
            return
        reader._admitted = False
        self.admitted -= 1
        self.released += 1
        host = reader._host
        if host is not None:
            reader._host = None
            self.per_host[host] -= 1
            if not self.per_host[host]:
                del self.per_host[host]
        if self._quiet is not None:
            self._check_quiet()

    # -- stopping -------------------------------------------------------------------

    async def stop_accepting(self, socks: list[Any], backlog: bool,
                             shared: Sequence[Any] = ()) -> None:
        """Close the listeners; with *backlog*, accept what waits in the kernel first.

        asyncio sets an accepted connection up one loop pass after accepting it, and a
        listener closed in between loses it (the socket leaks, the client hangs).  So
        the listeners close only once the listening sockets (*socks*, one a listener)
        have had nothing waiting and no connection has been half set up for two passes
        in a row; without *backlog*, what arrives meanwhile is refused (reset) rather
        than served.

        *shared*: those of *socks* that other processes accept on too (a pre-forked
        worker's).  This loop stops taking connections from them at once and serves
        those it took; what waits there is the others'.  Then the rest are served as
        with *backlog*: nobody else takes what waits on them.
        """
        if not self.listeners:
            self.accepting = False
            return
        if shared:
            for sock, listener in zip(socks, self.listeners):
                if any(sock is other for other in shared):
                    self._stop_listening(listener)
            socks = [sock for sock in socks if not any(sock is other for other in shared)]
            backlog = True
        self.accepting = backlog
        quiet = 0
        for _ in range(SETTLE_PASSES):
            waiting = self.created > 0 or any(_readable(sock) for sock in socks)
            quiet = 0 if waiting else quiet + 1
            if quiet >= 2:
                break
            await asyncio.sleep(0)  # the loop accepts, and sets connections up
        self.accepting = False
        listeners, self.listeners = self.listeners, []
        for listener in listeners:
            listener.close()  # not wait_closed(), which waits for the clients

    def _stop_listening(self, listener: asyncio.AbstractServer) -> None:
        """*listener* takes no more connections, and those it took are set up.

        uvloop sets a connection up in the callback that accepts it, so closing is
        enough; asyncio stops reading the socket (``close()`` comes after the passes
        that set up what it accepted).
        """
        if _aio_loop.is_uvloop(self.loop):
            listener.close()
            return
        for sock in cast(asyncio.Server, listener).sockets:
            self.loop.remove_reader(sock.fileno())

    def open_now(self) -> int:
        """Connections open now (a datagram server's: handlers running), as a drain
        that begins now would count them."""
        if self.endpoints:
            return len(self.tasks) - sum(len(endpoint.idle) for endpoint in self.endpoints)
        return self.admitted

    def cut_now(self) -> None:
        """``stop_now()``: end every connection at once (a drain stops waiting)."""
        for endpoint in self.endpoints:  # and a datagram server's replies stop waiting
            if endpoint.transport is not None:
                endpoint.transport.drop_waiting()
        if self.stop.done():  # stopping: close() cancels them, without waiting first
            self._cut = True
            if self._quiet is not None and not self._quiet.done():
                self._quiet.set_result(None)
            return
        for task in self.tasks:
            task.cancel()
        if self.spawning:  # called by a handler in its eager first step: not tracked yet
            current = asyncio.current_task()
            if current is not None:
                current.cancel()
        for reader in self.connections:
            if reader._transport is not None:
                reader._transport.close()

    def _check_quiet(self, _: object = None) -> None:
        quiet = self._quiet
        if quiet is not None and not quiet.done() and not self.admitted and not self.tasks:
            quiet.set_result(None)

    async def close(self, grace: float | None) -> DrainReport:
        """Stop accepting (``stop_accepting()``), then end every handler and connection:
        *grace* seconds (None: no limit) to finish on their own, then cancellation, then
        closing, then abort.

        Returns:
            How many connections were open when the drain was asked for (or serving
            began to stop), or accepted since, how many of them finished on their own
            and how many were cut.  For a datagram server: handlers running now.
        """
        self.accepting = False
        stream = self.server.socket_type != socket.SOCK_DGRAM
        # Idle datagram workers are no handlers: they end now, uncounted.
        retired = [task for endpoint in self.endpoints for task in endpoint.retire_workers()]
        released_before = self.released if self._released_before is None \
            else self._released_before
        busy = len(self.tasks)
        self.server.draining.set()
        if (grace is None or grace > 0) and (self.admitted or self.tasks) and not self._cut:
            self._quiet = quiet = self.loop.create_future()
            for task in self.tasks:
                task.add_done_callback(self._check_quiet)
            self._check_quiet()
            try:
                await asyncio.wait([quiet], timeout=grace)
            finally:
                self._quiet = None
        if stream:
            finished, cut = self.released - released_before, self.admitted
        else:
            cut = len(self.tasks)
            finished = busy - cut
        self.report = DrainReport(open=finished + cut, finished=finished, cut=cut)
        if self.tasks:
            for task in self.tasks:
                task.cancel()
            _, pending = await asyncio.wait(set(self.tasks), timeout=CANCEL_TIMEOUT)
            if pending:
                logger.warning("%d handler(s) still running %.0f s after being cancelled",
                               len(pending), CANCEL_TIMEOUT)
        if self.connections:
            self._all_closed = self.loop.create_future()
            for reader in self.connections:
                if reader._transport is not None:
                    reader._transport.close()
            done, _ = await asyncio.wait([self._all_closed], timeout=CLOSE_TIMEOUT)
            if not done:
                logger.warning("%d connection(s) not closed %.0f s after their handlers "
                               "ended (a client that does not read?): aborting them",
                               len(self.connections), CLOSE_TIMEOUT)
                for reader in list(self.connections):
                    if reader._transport is not None:
                        reader._transport.abort()
                await asyncio.wait([self._all_closed], timeout=CLOSE_TIMEOUT)
        if retired:
            await asyncio.wait(retired)
        return self.report


def duplicate(sock: Any) -> socket.socket:
    """A socket of its own on *sock*'s open file.  Not ``sock.dup()``: that sets the
    copy's timeout to the original's, and so the non-blocking flag of the open file,
    which other processes (pre-forked workers, a restart's copy) share and rely on."""
    return socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))


def _readable(sock: Any) -> bool:
    """Whether a connection waits in *sock*'s backlog (poll(): no FD_SETSIZE limit)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])
