"""What one ``serve()`` call owns: its loop, connections, handler tasks and stop signal.

The listening socket stays the server's: the loop is given a duplicate of it, which it
closes when serving stops, so ``serve_forever()`` can run again and ``server_close()``
(with its Unix socket file clean-up) stays the only place that closes the original.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, cast

from ._aio_driver import Parking, drive
from ._aio_handlers import AsyncBaseRequestHandler, AsyncDatagramRequestHandler
from ._aio_streams import RECEIVE_BUFFER_SIZE, ConnectionReader
from ._server import BaseServer

logger = logging.getLogger("sockserve.aio")

_NO_SETUP = AsyncBaseRequestHandler.setup
_NO_FINISH = AsyncBaseRequestHandler.finish
_DATAGRAM_FINISH = AsyncDatagramRequestHandler.finish

# After shutdown() cancels the handlers still running, how long they get to finish
# (their finally blocks and finish() run), and then how long closing connections get
# to send what is buffered, before they are aborted.  Both only bound misbehaving
# handlers and clients that do not read: a cancelled handler normally ends at once.
CANCEL_TIMEOUT = 5.0
CLOSE_TIMEOUT = 5.0

# Tasks take a context argument from Python 3.11 on; the direct resumption needs it to
# run the handler in its task's context.  On 3.10 handlers are resumed by their task.
DIRECT_RESUME = sys.version_info >= (3, 11)

# sendto() errors a UDP server expects (the client went away: ICMP port unreachable
# is reported on the next socket call, udp(7)); anything else is logged.
DATAGRAM_IGNORED_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                     errno.ENETUNREACH})


class Serving:
    """State of one ``serve()`` call; the protocols report to it."""

    def __init__(self, server: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.thread_id = threading.get_ident()
        self.stop: asyncio.Future[None] = loop.create_future()
        self.accepting = True
        self.connections: set[ConnectionReader] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._forget = self.tasks.discard  # bound once: one less object per connection
        self.finished: asyncio.Future[None] = loop.create_future()  # serve() returned
        self.ticker: asyncio.TimerHandle | None = None  # the next service_actions()
        self._all_closed: asyncio.Future[None] | None = None
        self._receive_buffer: memoryview | None = None
        # None when verify_request() is BaseServer's, which accepts everything.
        self.verify_request: Callable[[Any, Any], bool] | None = (
            None if type(server).verify_request is BaseServer.verify_request
            else server.verify_request)

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

    def spawn(self, coro: Coroutine[Any, Any, None],
              context: contextvars.Context | None = None) -> asyncio.Task[None] | None:
        """Run a handler coroutine as a task, tracked until it ends.

        On Python 3.12+ the task starts eagerly: a handler runs up to its first real
        wait inside the callback that received the connection or datagram, which saves
        a trip through the loop; one that completes right away needs no scheduling.
        """
        if sys.version_info >= (3, 12):
            task = asyncio.Task(coro, loop=self.loop, context=context, eager_start=True)
            if task.done():
                return None
        elif sys.version_info >= (3, 11):
            task = self.loop.create_task(coro, context=context)
        else:
            task = self.loop.create_task(coro)
        self.tasks.add(task)
        # Given a context, the callback costs no copy of the current one.
        if context is None and sys.version_info >= (3, 12):
            context = task.get_context()
        task.add_done_callback(self._forget, context=context)
        return task

    # -- stream connections ---------------------------------------------------------

    def connection_made(self, reader: ConnectionReader, transport: asyncio.Transport) -> None:
        self.connections.add(reader)
        if not self.accepting:
            transport.abort()
            return
        server = self.server
        request = transport.get_extra_info("socket")
        client_address = transport.get_extra_info("peername")
        if self.verify_request is not None:
            try:
                accepted = self.verify_request(request, client_address)
            except Exception:
                server.handle_error(request, client_address)
                accepted = False
            if not accepted:
                transport.close()
                return
        if DIRECT_RESUME:
            # The protocol resumes handle() itself while it waits on the connection
            # (_aio_driver); the task runs the rest, in the same context.
            reader._context = context = contextvars.copy_context()
            reader._parking = Parking(self.loop)
            self.spawn(drive(reader, server, request, client_address), context)
        else:
            reader._task = self.spawn(_serve_stream(server, reader, request, client_address))

    def connection_lost(self, reader: ConnectionReader) -> None:
        self.connections.discard(reader)
        if not self.connections and self._all_closed is not None \
                and not self._all_closed.done():
            self._all_closed.set_result(None)

    # -- stopping -------------------------------------------------------------------

    async def close(self, grace: float) -> None:
        """Stop accepting (the caller closed the listener), then end every handler and
        connection: *grace* seconds to finish, then cancellation, then abort."""
        self.accepting = False
        if grace > 0 and self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace)
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
                for reader in list(self.connections):
                    if reader._transport is not None:
                        reader._transport.abort()
                await asyncio.wait([self._all_closed], timeout=CLOSE_TIMEOUT)


async def _serve_stream(server: Any, reader: ConnectionReader, request: Any,
                        client_address: Any) -> None:
    writer = reader.writer
    assert writer is not None
    try:
        handler: AsyncBaseRequestHandler = server.RequestHandlerClass(
            reader, writer, client_address, server)
        handler_class = type(handler)
        if handler_class.setup is not _NO_SETUP:
            await handler.setup()
        try:
            await handler.handle()
        finally:
            if handler_class.finish is not _NO_FINISH:
                await handler.finish()
    except Exception:
        server.handle_error(request, client_address)
    finally:
        # As TCPServer.shutdown_request(): the client sees EOF once the data is sent.
        writer.transport.close()


class DatagramServing(asyncio.DatagramProtocol):
    """The datagram endpoint's protocol: one handler task per datagram."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self.server = serving.server
        self.transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = serving.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance() check: asyncio's own datagram transport is no subclass of
        # DatagramTransport before Python 3.12.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.socket = transport.get_extra_info("socket")

    def datagram_received(self, data: bytes, addr: Any) -> None:
        serving, transport = self.serving, self.transport
        if not serving.accepting or transport is None:
            return
        if serving.verify_request is not None:
            request = (data, self.socket)
            try:
                if not serving.verify_request(request, addr):
                    return
            except Exception:
                self.server.handle_error(request, addr)
                return
        serving.spawn(_serve_datagram(self.server, data, transport, addr))

    def error_received(self, exc: Exception) -> None:
        if getattr(exc, "errno", None) not in DATAGRAM_IGNORED_ERRNOS:
            logger.warning("datagram socket error on %s: %s", self.server.server_address, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _serve_datagram(server: Any, packet: bytes, transport: asyncio.DatagramTransport,
                          client_address: Any) -> None:
    handler: AsyncDatagramRequestHandler | None = None
    try:
        handler = server.RequestHandlerClass(packet, transport, client_address, server)
        handler_class = type(handler)
        # The inherited setup() and finish() (with nothing in wfile) do nothing: not
        # calling them saves two coroutines per datagram.
        if handler_class.setup is not _NO_SETUP:
            await handler.setup()
        try:
            await handler.handle()
        finally:
            if handler_class.finish is not _DATAGRAM_FINISH or handler._wfile is not None:
                await handler.finish()
    except Exception:
        request = handler.request if handler is not None else (packet, None)
        server.handle_error(request, client_address)
