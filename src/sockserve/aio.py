"""Async handlers on asyncio (uvloop when installed), with the sync servers' lifecycle.

    class Echo(AsyncStreamRequestHandler):
        async def handle(self) -> None:
            while data := await self.reader.read_some():
                self.writer.write(data)
                await self.writer.drain()

    with AsyncTCPServer(("127.0.0.1", 8000), Echo) as server:
        server.serve_forever()          # or, inside a running loop: await server.serve()

The servers are the sync ones with ``AsyncMixIn`` in front: the constructor binds and
listens through the usual hooks, then the event loop serves the socket.  Every
connection is a task, never a thread.  The sync servers' options (limits, timeouts,
access list, TLS, drain) apply with the same meaning.  See docs/async.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

from . import _aio_loop
from ._aio_datagram import DATAGRAM_OPTIONS, DatagramServing
from ._aio_handlers import (
    AsyncBaseRequestHandler,
    AsyncDatagramRequestHandler,
    AsyncStreamRequestHandler,
)
from ._aio_loop import LoopChoice, resolve_loop_factory
from ._aio_serving import NO_CONNECTIONS, Serving, duplicate
from ._aio_streams import READ_LIMIT, BufferedConnectionReader, ConnectionReader, LineTooLongError
from ._aio_worker_datagram import WorkerDatagramServing, stop_reading
from ._aio_writer import ConnectionWriter
from ._server import TCPServer, UDPServer
from .stats import DrainReport, ServerStatistics

__all__ = [
    "AsyncMixIn", "AsyncTCPServer", "AsyncUDPServer",
    "AsyncBaseRequestHandler", "AsyncStreamRequestHandler", "AsyncDatagramRequestHandler",
    "ConnectionReader", "ConnectionWriter", "LineTooLongError", "READ_LIMIT",
    "LoopChoice", "resolve_loop_factory",
]

# Mix-ins are used with a server class; type-check them as if they had it as base.
if TYPE_CHECKING:
    _ServerBase = TCPServer
else:
    _ServerBase = object

_UNSET: Any = object()

logger = logging.getLogger("sockserve.server")


class DrainingFlag(threading.Event):
    """``server.draining`` of an async server: a ``threading.Event``, set when serving
    begins to stop (a drain, ``shutdown()``), that coroutines can await as well
    (``wait_async()``, or the server's ``wait_draining()``)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._async_waiters: list[asyncio.Future[None]] = []

    def set(self) -> None:
        super().set()
        with self._lock:
            waiters, self._async_waiters = self._async_waiters, []
        for waiter in waiters:
            try:
                waiter.get_loop().call_soon_threadsafe(_resolve, waiter)
            except RuntimeError:
                pass  # its loop is closed: nobody waits any more

    async def wait_async(self) -> None:
        """Wait until the flag is set, from any thread's event loop."""
        if self.is_set():
            return
        waiter = asyncio.get_running_loop().create_future()
        with self._lock:
            self._async_waiters.append(waiter)
        if self.is_set():  # set() ran between the test and the append: no wake-up
            return
        try:
            await waiter
        finally:
            with self._lock:
                if waiter in self._async_waiters:
                    self._async_waiters.remove(waiter)


class AsyncMixIn(_ServerBase):
    """Serve with async handlers on an event loop: put it first, ``(AsyncMixIn, TCPServer)``.

    Class attributes (or constructor keywords):
        loop_factory: None (uvloop if importable, else asyncio), "asyncio", "uvloop",
            or a callable returning a new event loop; used by ``serve_forever()``.
        graceful_timeout: seconds that running handlers get to finish on their own
            after ``shutdown()`` before they are cancelled (default 0: cancel at once).
            When ``drain_timeout`` is set, it applies instead, as it does for the sync
            servers' ``server_close()``.

    The sync servers' options apply, with the same meaning (docs/async.md): the access
    list, ``max_connections`` (past it a connection is rejected, whatever ``overload``
    says), ``max_connections_per_ip``, ``busy_reply``, ``ssl_context`` and
    ``handshake_timeout``, the idle/read/write timeouts, ``connection_lifetime``,
    ``max_line_length``, ``max_packet_size``, ``drain_timeout``; ``drain()``,
    ``stop_now()``, ``draining`` and ``statistics()`` too.
    """

    loop_factory: LoopChoice = None
    graceful_timeout: float = 0.0
    # Serves on an event loop of its own, not the sync serving loop (PreForkMixIn checks).
    _sockserve_event_loop = True
    # In a pre-forked worker (PreForkMixIn): what tells the supervisor about this
    # loop's serving, and stops it (_prefork_aio.AsyncWorker).
    _aio_worker: Any = None
    # One event loop accepts for every connection: a deep backlog absorbs bursts.  The
    # kernel caps it at net.core.somaxconn.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, server_address: Any, RequestHandlerClass: Any,
                 bind_and_activate: bool = True, *, loop_factory: LoopChoice = _UNSET,
                 graceful_timeout: float = _UNSET) -> None:
        if loop_factory is not _UNSET:
            resolve_loop_factory(loop_factory)  # fail now on a bad name or missing uvloop
            self.loop_factory = loop_factory
        if graceful_timeout is not _UNSET:
            self.graceful_timeout = graceful_timeout
        self._check_handler_class(RequestHandlerClass)
        self._aio_serving: Serving | None = None
        self._aio_shutdown_request = False
        # Set while no serve() runs, so shutdown() never waits for a loop that does not
        # exist (the same rule as the sync servers).
        self._aio_is_shut_down = threading.Event()
        self._aio_is_shut_down.set()
        self._aio_serving_waiters: list[asyncio.Future[None]] = []
        super().__init__(server_address, RequestHandlerClass, bind_and_activate)
        self.draining: DrainingFlag = DrainingFlag()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in DATAGRAM_OPTIONS:
            # A running datagram server keeps a copy of these (_aio_datagram).
            serving = self.__dict__.get("_aio_serving")
            for endpoint in serving.endpoints if serving is not None else ():
                endpoint.read_options()

    def _check_handler_class(self, handler_class: Any) -> None:
        wanted = (AsyncDatagramRequestHandler if self.socket_type == socket.SOCK_DGRAM
                  else AsyncStreamRequestHandler)
        if not (isinstance(handler_class, type) and issubclass(handler_class, wanted)):
            raise TypeError(f"{type(self).__name__} serves {wanted.__name__} subclasses, "
                            f"not {handler_class!r}")

    # -- serving ------------------------------------------------------------------

    def serve_forever(self, poll_interval: float | None = 0.5) -> None:
        """Serve on a new event loop in this thread until ``shutdown()``.

        ``service_actions()`` runs every *poll_interval* seconds (never if None);
        ``shutdown()`` stops the loop at once.

        Resource handling: the event loop lives exactly as long as this call; tasks
        that handlers started and left running are cancelled before it closes.

        Raises:
            RuntimeError: called with an event loop already running in this thread.
            TypeError: a datagram server with an ``ssl_context`` (no DTLS).
        """
        self._sockserve_check_settings()
        choice = self.__dict__.get("loop_factory", type(self).loop_factory)
        _aio_loop.run(self.serve(poll_interval), resolve_loop_factory(choice))

    async def serve(self, poll_interval: float | None = 0.5) -> None:
        """Serve on the running event loop until ``shutdown()`` (or cancellation).

        Resource handling: the loop serves a duplicate of the listening socket and
        closes it on return; the server's socket stays open for another ``serve()``
        until ``server_close()``.  On return every connection is closed: handlers
        still running get ``drain_timeout`` seconds if set, else ``graceful_timeout``
        (a ``drain()`` sets its own deadline), then are cancelled.

        Error handling: handler errors go to ``handle_error()``; an exception from
        ``service_actions()`` ends serving and is raised here.

        Raises:
            RuntimeError: this server is already serving.
            TypeError: a datagram server with an ``ssl_context`` (no DTLS).
        """
        self._sockserve_check_settings()
        loop = asyncio.get_running_loop()
        if self._aio_serving is not None:
            raise RuntimeError(f"{type(self).__name__} is already serving")
        serving = Serving(self, loop)
        self._aio_is_shut_down.clear()
        self._aio_serving = serving
        try:
            # A shutdown() that came before serving started ends it before it begins.
            if self._aio_shutdown_request:
                return
            self.draining.clear()  # from a previous serve()
            await self._listen(serving)
            if self._aio_worker is not None:
                self._aio_worker.started(serving)
            self._notify_serving()
            if poll_interval is not None:
                serving.ticker = loop.call_later(
                    poll_interval, self._tick, serving, poll_interval)
            await serving.stop
        finally:
            if serving.ticker is not None:
                serving.ticker.cancel()
            try:
                await self._stop_serving(serving)
            finally:
                self._aio_serving = None
                self._aio_shutdown_request = False
                self._aio_is_shut_down.set()
                serving.finished.set_result(None)
                if self._aio_worker is not None:
                    self._aio_worker.finished()

    def _tick(self, serving: Serving, poll_interval: float) -> None:
        # service_actions() is sync, as the stdlib's: it runs on the loop thread.
        try:
            self.service_actions()
        except BaseException as exc:
            serving.request_stop(exc)
            return
        if not serving.stop.done():
            serving.ticker = serving.loop.call_later(
                poll_interval, self._tick, serving, poll_interval)

    async def _listen(self, serving: Serving) -> None:
        """Start serving every listening socket (``server.socket`` and
        ``extra_sockets``): a datagram endpoint each (``serving.endpoints``), or a stream
        listener each (``serving.listeners``)."""
        for listening in [self.socket, *self.extra_sockets]:
            sock = duplicate(listening)  # the loop closes it when serving stops
            try:
                if self.socket_type == socket.SOCK_DGRAM:
                    await self._listen_for_datagrams(serving, sock, listening)
                else:
                    await self._listen_on(serving, sock)
            except BaseException:
                sock.close()
                raise

    async def _listen_for_datagrams(self, serving: Serving, sock: socket.socket,
                                    listening: socket.socket) -> None:
        """A datagram endpoint reading *sock*; replies leave through a copy of
        *listening* of their own, or in a pre-forked worker, of the shared socket of
        its address (a worker's own SO_REUSEPORT socket must close when it stops)."""
        worker = self._aio_worker
        if worker is None:
            protocol = DatagramServing(serving, duplicate(listening))
        else:
            own = next((mine for mine in worker.own_sockets() if mine is listening), None)
            protocol = WorkerDatagramServing(
                serving, duplicate(worker.shared_twin(listening)), own)
        serving.endpoints.append(protocol)  # aclose() closes its reply socket
        await serving.loop.create_datagram_endpoint(lambda: protocol, sock=sock)

    async def _listen_on(self, serving: Serving, sock: socket.socket) -> None:
        loop = serving.loop
        reader_class = (ConnectionReader if _aio_loop.is_uvloop(loop)
                        else BufferedConnectionReader)

        def factory() -> ConnectionReader:
            serving.created += 1  # until its connection_made(): stop_accepting()
            return reader_class(serving)

        if sock.family == getattr(socket, "AF_UNIX", None):
            kwargs: dict[str, Any] = {}
            if sys.version_info >= (3, 13) and not _aio_loop.is_uvloop(loop):
                # 3.13 unlinks the socket file when the asyncio server closes; the
                # file is server_close()'s to remove (docs/design.md).
                kwargs["cleanup_socket"] = False
            listener = await loop.create_unix_server(
                factory, sock=sock, backlog=self.request_queue_size, **kwargs)
        else:
            listener = await loop.create_server(
                factory, sock=sock, backlog=self.request_queue_size)
        serving.listeners.append(listener)

    async def _stop_serving(self, serving: Serving) -> None:
        drain, worker = serving.drain, self._aio_worker
        if serving.endpoints:
            if worker is not None:
                await stop_reading(serving)
        else:
            await serving.stop_accepting([self.socket, *self.extra_sockets],
                                         drain is not None and drain[1],
                                         worker.shared_sockets() if worker is not None else [])
        if worker is not None:
            worker.stopped_accepting()
        grace = drain[0] if drain is not None else self._aio_grace()
        report = await serving.close(grace)
        # Together: each may wait up to CLOSE_TIMEOUT for its replies to go out.
        await asyncio.gather(*(endpoint.aclose() for endpoint in serving.endpoints))
        if report.open and (drain is not None or grace):
            logger.info("drained %s: %d connections finished, %d cut",
                        self.server_address, report.finished, report.cut)

    def _aio_grace(self) -> float:
        """How long handlers get to finish when serving stops without a drain()."""
        return self.graceful_timeout if self.drain_timeout is None else self.drain_timeout

    def shutdown(self) -> None:
        """Stop ``serve_forever()`` / ``serve()`` and wait until it has stopped.

        Safe from any thread, from a handler (sync call: it returns at once and serving
        stops when the handler next waits or returns) and before serving starts (the
        next ``serve_forever()`` then returns at once).  It only waits when serving
        runs in another thread.
        """
        self._aio_shutdown_request = True
        serving = self._aio_serving
        if serving is None:
            return
        if serving.thread_id == threading.get_ident():
            serving.request_stop()
            return
        try:
            serving.loop.call_soon_threadsafe(serving.request_stop)
        except RuntimeError:
            pass  # the loop is closed: serving has ended already
        self._aio_is_shut_down.wait()

    async def aclose(self) -> None:
        """``shutdown()`` then ``server_close()``, awaiting instead of blocking the loop."""
        try:
            serving = self._aio_serving
            if serving is not None and serving.loop is asyncio.get_running_loop():
                self._aio_shutdown_request = True
                serving.request_stop()
                await asyncio.shield(serving.finished)
            elif serving is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.shutdown)
        finally:
            self.server_close()

    # -- drain -----------------------------------------------------------------------

    def drain(self, timeout: float | None, *, backlog: bool = False) -> DrainReport:
        """Stop serving gracefully: stop accepting, let open connections finish for up
        to *timeout* seconds (None: until they close), then cancel what is left.

        In order: ``draining`` is set (handlers may poll it or ``await
        server.wait_draining()``), the listener is closed (with *backlog*, what waits
        in the kernel's backlog is accepted and served first), connections get
        *timeout* seconds, then their handlers are cancelled (``CancelledError`` where
        they wait; ``finish()`` runs) and the connections closed; ``serve()`` returns.
        Call it from another thread than the loop's; inside the loop, ``await
        drain_async()``.

        Returns:
            How many connections were open, finished, and were cut (of a datagram
            server: handlers running).

        Raises:
            RuntimeError: called on the event loop's thread (it would block the loop).
        """
        serving = self._aio_serving
        if serving is not None and serving.thread_id == threading.get_ident():
            raise RuntimeError("drain() blocks, so it cannot run on the event loop's "
                               "thread; use 'await server.drain_async()'")
        released = self._aio_start_drain(serving, timeout)
        if serving is not None:
            try:
                serving.loop.call_soon_threadsafe(serving.request_drain, timeout, backlog,
                                                  released)
            except RuntimeError:
                pass  # the loop is closed: serving has ended already
        self.draining.set()  # after the request: once set, the loop is told
        if serving is None:
            return NO_CONNECTIONS
        self._aio_is_shut_down.wait()
        return serving.report

    async def drain_async(self, timeout: float | None, *, backlog: bool = False
                          ) -> DrainReport:
        """``drain()`` awaited on an event loop instead of blocking a thread.

        Raises:
            RuntimeError: called from a handler, whose connection the drain would wait
                for (start it in a task of its own, or call ``shutdown()``).
        """
        loop = asyncio.get_running_loop()
        serving = self._aio_serving
        if serving is not None and serving.loop is not loop:
            return await loop.run_in_executor(
                None, functools.partial(self.drain, timeout, backlog=backlog))
        if serving is not None and serving.in_handler():
            raise RuntimeError("a handler cannot await drain_async(), which waits for the "
                               "handler's own connection; run it in a task of its own")
        released = self._aio_start_drain(serving, timeout)
        self.draining.set()
        if serving is None:
            return NO_CONNECTIONS
        serving.request_drain(timeout, backlog, released)
        await asyncio.shield(serving.finished)
        return serving.report

    def _aio_start_drain(self, serving: Serving | None, timeout: float | None) -> int:
        """Log; returns the count the report starts from (connections closed so far)."""
        released = serving.released if serving is not None else 0
        open_now = serving.open_now() if serving is not None else 0
        what = "handlers running" if serving is not None and serving.endpoints \
            else "connections open"
        logger.info("draining %s: %d %s, deadline %s s", self.server_address, open_now,
                    what, timeout)
        self._aio_shutdown_request = True  # a serve() about to start returns at once
        return released

    async def wait_draining(self) -> None:
        """Wait until serving begins to stop (``draining`` is set); for handlers that
        can finish early, e.g. in ``asyncio.wait()`` next to a read."""
        await self.draining.wait_async()

    def stop_now(self) -> None:
        """Cancel every handler and close every connection now; a drain in progress
        stops waiting (the runner's second stop signal).  Safe from any thread."""
        serving = self._aio_serving
        if serving is None:
            return
        if serving.thread_id == threading.get_ident():
            serving.cut_now()
            return
        try:
            serving.loop.call_soon_threadsafe(serving.cut_now)
        except RuntimeError:
            pass  # the loop is closed: nothing is left to cut

    def _sockserve_finish_connections(self, timeout: float | None,
                                      counts_before: tuple[int, int] | None = None
                                      ) -> DrainReport:
        # server_close() with drain_timeout: drain a serve() running in another thread;
        # on the loop's own thread it cannot wait, and serving stops when it may.
        serving = self._aio_serving
        if serving is None:
            return NO_CONNECTIONS
        if serving.thread_id == threading.get_ident():
            self.shutdown()
            return NO_CONNECTIONS
        return self.drain(timeout)

    def statistics(self) -> ServerStatistics:
        """A snapshot of the counters; ``connections`` and ``tls_in_progress`` are those
        of the running ``serve()`` (0 when not serving)."""
        stats = super().statistics()
        serving = self._aio_serving
        if serving is None:
            return stats
        return dataclasses.replace(stats, connections=serving.admitted,
                                   tls_in_progress=serving.handshakes)

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.aclose()

    def is_serving(self) -> bool:
        """True while ``serve()`` runs and the loop accepts requests."""
        serving = self._aio_serving
        return serving is not None and serving.accepting and not serving.stop.done()

    async def wait_serving(self) -> None:
        """Wait until this server serves (``serve()`` started, possibly in another thread)."""
        waiter = asyncio.get_running_loop().create_future()
        self._aio_serving_waiters.append(waiter)  # before the check: no wake-up is lost
        if self.is_serving():
            self._aio_serving_waiters.remove(waiter)
            return
        await waiter

    def _notify_serving(self) -> None:
        waiters, self._aio_serving_waiters = self._aio_serving_waiters, []
        for waiter in waiters:
            waiter.get_loop().call_soon_threadsafe(_resolve, waiter)

    def handle_request(self) -> None:
        """Not offered: an event loop serves many requests at once."""
        raise NotImplementedError(f"{type(self).__name__} serves with serve_forever() "
                                  "or 'await serve()'")


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class AsyncTCPServer(AsyncMixIn, TCPServer):
    """TCP with async handlers (``AsyncStreamRequestHandler``)."""


class AsyncUDPServer(AsyncMixIn, UDPServer):
    """UDP with async handlers (``AsyncDatagramRequestHandler``), a task per datagram."""


if hasattr(socket, "AF_UNIX"):
    from ._server import UnixDatagramServer, UnixStreamServer

    class AsyncUnixStreamServer(AsyncMixIn, UnixStreamServer):
        """Unix stream sockets with async handlers."""

    class AsyncUnixDatagramServer(AsyncMixIn, UnixDatagramServer):
        """Unix datagram sockets with async handlers."""

    __all__ += ["AsyncUnixStreamServer", "AsyncUnixDatagramServer"]
