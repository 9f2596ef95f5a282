"""A pre-forked worker that serves async handlers on an event loop.

``class S(PreForkMixIn, AsyncMixIn, TCPServer)`` (or ``UDPServer``): the supervisor is
the sync one, and each worker runs ``AsyncMixIn.serve_forever()``.  What differs from a
sync worker is how it stops and what it tells the supervisor, both done here:

- it reports ``S<pid>;`` once its loop listens, and takes SIGTERM on the loop;
- a stop (SIGTERM, ``max_requests``) leaves the shared sockets to the other workers at
  once, serves what it accepted and what waits on its own SO_REUSEPORT sockets (then
  closes them; datagrams: ``_aio_worker_datagram``), and drains to the supervisor's
  deadline when the supervisor drains (``drain_timeout`` or ``graceful_timeout``
  otherwise);
- it counts each admitted connection or datagram toward ``max_requests``;
- a drain's reports go back through the supervisor's ``DrainChannel``: what was open
  when it began, and at the end what finished and what was cut.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import TYPE_CHECKING, Any

from .concurrency.prefork import unblock_stop_signals
from .stats import DrainReport

if TYPE_CHECKING:
    from ._aio_serving import Serving


class AsyncWorker:
    """Made in the worker process, before its loop starts; the ``AsyncMixIn`` server
    calls ``started()``, ``shared_sockets()`` and ``took_request()`` while serving."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.drained: Serving | None = None  # the serve() a supervisor's drain ended
        # What it had open when a supervisor's drain came, if serving was stopping already.
        self.found_open: int | None = None

    def started(self, serving: Serving) -> None:
        """On the loop, once it listens: SIGTERM now arrives as a loop callback (the
        loop's wake-up descriptor), and the supervisor learns that this worker serves."""
        try:
            serving.loop.add_signal_handler(signal.SIGTERM, self.stop)
        except (RuntimeError, ValueError):  # not the main thread: the Python handler stays
            pass
        unblock_stop_signals()  # blocked since the fork (Supervisor.spawn)
        waker = self.server._supervisor_waker
        if waker is not None:
            waker.wake(b"S%d;" % os.getpid())

    def stop(self) -> None:
        """Stop serving, from any thread or a signal handler; idempotent."""
        server = self.server
        server._aio_shutdown_request = True  # a serve() not yet started returns at once
        serving = server._aio_serving
        if serving is None:
            return
        try:
            # Through the loop even on its own thread: a signal handler may run while
            # the loop waits, and only this wakes it.
            serving.loop.call_soon_threadsafe(self._stop_on_loop, serving)
        except RuntimeError:
            pass  # the loop is closed: serving has ended

    def _stop_on_loop(self, serving: Serving) -> None:
        server = self.server
        draining, timeout = server._drain_requested()
        if draining and self.drained is None and server._drain_channel is not None:
            server._drain_channel.begun(serving.open_now())  # before handlers see it
        if serving.stop.done():
            # Already stopping (recycled, replaced): a supervisor's drain still sets
            # the deadline and gets the report, of what it found open.
            if draining and self.drained is None:
                self.drained = serving
                self.found_open = serving.open_now()
                if timeout is not None:
                    serving.loop.call_later(timeout, serving.cut_now)
            return
        if draining:
            self.drained = serving
            serving.request_drain(timeout, False, server._aio_start_drain(serving, timeout))
        else:
            serving.request_stop()

    def shared_sockets(self) -> list[socket.socket]:
        """The listening sockets the other workers accept on too (all but this worker's
        own SO_REUSEPORT ones): stopping leaves what waits there to them."""
        server = self.server
        own = server._own_sockets
        return [sock for sock in [server.socket, *server.extra_sockets]
                if not any(sock is mine for mine in own)]

    def own_sockets(self) -> tuple[socket.socket, ...]:
        """This worker's own SO_REUSEPORT sockets (``reuse_port_per_worker``)."""
        own: tuple[socket.socket, ...] = self.server._own_sockets
        return own

    def shared_twin(self, sock: Any) -> Any:
        """The shared socket bound to *sock*'s address (*sock* itself, or the shared
        sibling of one of this worker's own sockets); *sock* if there is none."""
        address = sock.getsockname()
        return next((shared for shared in self.shared_sockets()
                     if shared.getsockname() == address), sock)

    def stopped_accepting(self) -> None:
        """The loop has served what waited on this worker's own SO_REUSEPORT sockets:
        close them, so that the kernel sends new connections to the other workers'
        rather than queue them here until ``server_close()`` resets them."""
        for sock in self.server._own_sockets:
            sock.close()

    def took_request(self) -> None:
        """A connection was admitted: one request toward ``max_requests``."""
        self.server._count_request()

    def finished(self) -> None:
        """The loop has served its last: SIGTERM waits (blocked) until the worker's own
        handler is back, since asyncio's ``close()`` leaves it at its default action."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def report(self) -> None:
        """After serving: what a supervisor's drain did here, for its report."""
        channel = self.server._drain_channel
        if self.drained is None or channel is None:
            return
        report = self.drained.report  # from the start of the stop: of what the drain found
        if self.found_open is not None:  # open, the rest finished
            finished = max(0, self.found_open - report.cut)
            report = DrainReport(open=finished + report.cut, finished=finished,
                                 cut=report.cut)
        channel.send(report)
