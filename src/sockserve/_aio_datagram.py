"""The datagram side of ``serve()``: handlers run by worker tasks the protocol resumes.

A task per datagram costs more than the usual handler itself (about 1.3 µs on
CPython 3.11, of 8 a datagram in all: creating, registering and finishing the task,
two trips through the loop).  So from Python 3.11 on a datagram goes to an idle
*worker*: a task parked between datagrams that ``datagram_received()`` resumes
directly, as its task would (``_aio_driver``), so a handler that does not wait runs to
its end inside the callback.  A handler that does wait keeps its worker; the next
datagram takes another, or starts one.  Each handler runs in a fresh ``contextvars``
context of its own, apart from the task's, as in a task of its own.  The task itself
is shared by the datagrams a worker serves one after another (as aiohttp shares a
connection's task between its requests); a worker whose task a handler changed in a
way the next one would inherit (a done callback added, a cancellation swallowed) ends
instead of serving again.  Idle workers beyond ``IDLE_WORKERS`` end.  (On 3.10, where
a task takes no context, each datagram still gets a worker of its own.)

Handlers reply through a ``ReplyTransport`` (``_aio_replies``), never through the
loop's transport, which only reads.

Each datagram goes through the sync servers' rules first (``_aio_admission``): its
size against ``max_packet_size``, ``unmap_ipv4_clients``, the access list,
``verify_request()``.  The per-datagram path tests two attributes of the protocol, not
four of the server: the protocol keeps a copy of these options, taken when serving
starts and again whenever one of them is assigned on the server (``AsyncMixIn``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import sys
from typing import TYPE_CHECKING, Any, cast

from ._aio_admission import allowed, oversized
from ._aio_driver import PENDING, Parking, Resumable, run, suspend
from ._aio_handlers import AsyncBaseRequestHandler, AsyncDatagramRequestHandler
from ._aio_replies import IGNORED_ERRNOS, ReplyTransport
from .address import unmap_client_address

if TYPE_CHECKING:
    from ._aio_serving import Serving

logger = logging.getLogger("sockserve.aio")

_NO_SETUP = AsyncBaseRequestHandler.setup
_DATAGRAM_FINISH = AsyncDatagramRequestHandler.finish

# The server options DatagramServing copies (read_options()).
DATAGRAM_OPTIONS = frozenset({"max_packet_size", "unmap_ipv4_clients", "access_list"})
# The longest datagram the loops are sure to read whole: asyncio reads 256 KiB of one,
# uvloop 256,000 bytes, and neither says when a longer one was cut (a Unix datagram
# may be).  One that fills this much counts as longer than max_packet_size.
LOOP_READ_LIMIT = 256_000

# Workers take their context argument from Python 3.11 on (see above).
WORKERS = sys.version_info >= (3, 11)
# Idle workers kept for the next datagrams; one is enough for handlers that never wait.
IDLE_WORKERS = 16


class DatagramWorker(Resumable):
    """A task that serves datagrams one at a time, parked while it has none; each
    datagram's handler runs in the fresh context ``_dispatch()`` gives it."""

    __slots__ = ("item", "vacant")
    own_context = True

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._parking = Parking(loop)
        # The next datagram: (packet, transport, client_address, reply_to or None).
        self.item: tuple[bytes, Any, Any, Any] | None = None
        # Its context while it waits: the last handler's, and all it holds, is let go.
        self.vacant = contextvars.Context()


class WorkerTask(asyncio.Task):  # type: ignore[type-arg]
    """A worker's task.  It counts the done callbacks added to it (one added by a
    handler would run only when the worker ends, late, so the worker then ends), and
    its ``get_context()`` is the running handler's, as a task of its own would show."""

    callbacks_added = 0
    worker: DatagramWorker | None = None

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        self.callbacks_added += 1
        super().add_done_callback(fn, context=context)

    def get_context(self) -> contextvars.Context:  # (Python 3.12+)
        worker = self.worker
        if worker is not None:
            return cast(contextvars.Context, worker._context)
        return cast(contextvars.Context, getattr(super(), "get_context")())


class DatagramServing(asyncio.DatagramProtocol):
    """The datagram endpoint's protocol: hands each datagram to a worker."""

    def __init__(self, serving: Serving, reply_socket: socket.socket) -> None:
        self.serving = serving
        self.server = serving.server
        self.counters = serving.server._sockserve_counters
        self.reply_socket = reply_socket  # the ReplyTransport's, once the endpoint is made
        self.transport: ReplyTransport | None = None
        self.closed: asyncio.Future[None] = serving.loop.create_future()
        self.idle: list[DatagramWorker] = []
        self.read_options()

    def read_options(self) -> None:
        """Copy the options every datagram is checked against (any thread may call)."""
        server = self.server
        self.max_size: int = min(server.max_packet_size, LOOP_READ_LIMIT - 1)
        self.screened = bool(server.unmap_ipv4_clients or server.access_list is not None
                             or self.serving.verify_request is not None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance() check: asyncio's own datagram transport is no subclass of
        # DatagramTransport before Python 3.12.
        self.transport = ReplyTransport(cast(asyncio.DatagramTransport, transport),
                                        self.reply_socket, self, self.serving.loop)
        self.socket = self.transport.get_extra_info("socket")

    def datagram_received(self, data: bytes, addr: Any) -> None:
        serving, transport = self.serving, self.transport
        if not serving.accepting or transport is None:
            return
        if len(data) > self.max_size or self.screened:
            self._screen(data, addr, transport)
            return
        self.counters.accepted += 1
        self._dispatch((data, transport, addr, None))

    def _screen(self, data: bytes, addr: Any, transport: ReplyTransport) -> None:
        """datagram_received() with a rule to apply."""
        serving, server = self.serving, self.server
        if len(data) > min(server.max_packet_size, LOOP_READ_LIMIT - 1):
            packet = oversized(server, data, addr)
            if packet is None:
                return
            data = packet
        self.counters.accepted += 1
        client_address = addr
        if server.unmap_ipv4_clients:
            client_address = unmap_client_address(addr)
        if server.access_list is not None and not allowed(server, client_address):
            return  # dropped: a datagram has no connection to close
        if serving.verify_request is not None:
            request = (data, self.socket)
            try:
                if not serving.verify_request(request, client_address):
                    self.counters.denied += 1
                    return
            except Exception:
                server.handle_error(request, client_address)
                return
        # Replies go to the address the datagram came from, even when the handler is
        # shown it unmapped (an IPv6 socket cannot send to an IPv4 pair).
        reply_to = None if client_address is addr else addr
        self._dispatch((data, transport, client_address, reply_to))

    def _dispatch(self, item: tuple[bytes, Any, Any, Any]) -> None:
        """Serve a datagram (a worker's ``item``) on an idle worker, or a new one."""
        idle = self.idle
        while idle:
            worker = idle.pop()
            if worker._parking.state == PENDING:  # not cancelled (stop_now() cancels tasks)
                worker.item = item
                worker._context = contextvars.copy_context()  # as create_task() would
                worker._resume(None, None)  # else its task resumes it, one pass later
                return
        worker = DatagramWorker(self.serving.loop)
        worker.item = item
        worker._context = contextvars.copy_context()
        worker._coro = coro = self._work(worker)
        worker._send = coro.send
        # The task's own context is a separate copy: its steps enter it, then the
        # worker's (a context cannot be entered twice).
        self.serving.spawn(run(worker), contextvars.copy_context(),
                           WorkerTask if WORKERS else None)

    async def _work(self, worker: DatagramWorker) -> None:
        """A worker's life: serve the datagrams handed to it, parked (in ``idle``) in
        between; each datagram's handler is made, set up, run and finished here, its
        errors go to ``handle_error()``."""
        worker._task = task = asyncio.current_task()  # already while an eager task starts
        # Reused for the next datagrams only as a WorkerTask: from 3.11 on (WORKERS),
        # and not when a task factory on the loop made the task.
        reusable = task if isinstance(task, WorkerTask) else None
        if reusable is not None:
            reusable.worker = worker
        server, serving, idle = self.server, self.serving, self.idle
        while (item := worker.item) is not None:
            packet, transport, client_address, reply_to = item
            worker.item = item = None  # not kept alive while the worker waits
            handler: AsyncDatagramRequestHandler | None = None
            try:
                handler = server.RequestHandlerClass(packet, transport, client_address, server)
                if reply_to is not None:
                    handler._reply_to = reply_to
                handler_class = type(handler)
                # The inherited setup() and finish() (with nothing in wfile) do
                # nothing: not calling them saves two coroutines per datagram.
                if handler_class.setup is not _NO_SETUP:
                    await handler.setup()
                try:
                    await handler.handle()
                finally:
                    if handler_class.finish is not _DATAGRAM_FINISH or handler._wfile is not None:
                        await handler.finish()
            except Exception:
                server.handle_error(handler.request if handler is not None
                                    else (packet, None), client_address)
            del handler, packet  # not kept alive while the worker waits
            if reusable is None or not serving.accepting or len(idle) >= IDLE_WORKERS:
                return
            # Reused only if no handler changed its task in a way the next one would
            # inherit.  One callback is Serving.spawn()'s, added once the task is tracked
            # (on 3.12+ the first datagram is served before that).
            if reusable.cancelling() \
                    or reusable.callbacks_added != (reusable in serving.tasks):
                return
            worker._context = worker.vacant
            idle.append(worker)
            await suspend()

    def retire_workers(self) -> list[asyncio.Task[None]]:
        """End the idle workers (serving stops); their tasks, no longer counted as
        handlers, to wait for."""
        tasks = []
        for worker in self.idle:
            task = worker._task
            if task is not None and worker._parking.state == PENDING:
                self.serving.tasks.discard(task)
                task.cancel()
                tasks.append(task)
        self.idle.clear()
        return tasks

    def error_received(self, exc: Exception) -> None:
        if getattr(exc, "errno", None) not in IGNORED_ERRNOS:
            logger.warning("datagram socket error on %s: %s", self.server.server_address, exc)

    async def aclose(self) -> None:
        """Close the endpoint (serving has stopped) and wait until it is closed and
        its replies are sent (or dropped, ``CLOSE_TIMEOUT`` on)."""
        if self.transport is None:
            self.reply_socket.close()  # never made
            return
        self.transport.close()
        await self.closed
        await self.transport.closed()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
