"""``PreForkMixIn``: the server binds once and N worker processes accept on that socket.

The process that calls ``serve_forever()`` becomes the supervisor (``Supervisor`` in
``concurrency/prefork.py``): it accepts nothing itself, keeps ``workers`` children
running, replaces any that die, recycles them after ``max_requests``, and on
``shutdown()`` stops them gracefully.  Each worker runs the ordinary accept loop with
whatever mix-in comes after ``PreForkMixIn`` (serial by default, or ``ThreadPoolMixIn``),
or, after ``AsyncMixIn``, an event loop (``_prefork_aio.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import mmap
import os
import random
import re
import selectors
import signal
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any

from ._mixins import _ConcurrencyMixIn
from ._prefork_aio import AsyncWorker
from ._server import TCPServer, UDPServer
from ._wakeup import SHUTDOWN, Waker
from .concurrency.prefork import (
    SUPERVISOR_SIGNALS,
    Supervisor,
    SupervisorStatistics,
    unblock_stop_signals,
)
from .stats import DrainReport, ServerStatistics

logger = logging.getLogger("sockserve.prefork")

INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)  # the ones with SO_REUSEPORT
# A drain longer than graceful_timeout gives the workers its timeout plus this to cut
# what is left and exit, before they are killed.
DRAIN_EXIT_MARGIN = 5.0

# What workers tell the supervisor, through its waker: "S<pid>;" once serving,
# "R<pid>;" when retiring (max_requests).  These bytes never read as the waker's
# one-byte messages (_wakeup.py).
WORKER_MESSAGE = re.compile(rb"([RS])(\d+);")
# What a sync worker's stop thread hears (_request_stop()).
STOP_REQUESTED, WORKER_ENDS = b"t", b"e"

def _not_for_workers(signum: int, frame: object) -> None:
    """A worker's handler for SUPERVISOR_SIGNALS: nothing to do."""


# In a worker: the signals it handles.  A process its handlers fork gets a fresh
# Python process's handlers for them back, and no wake-up socket: its signals are its
# own, neither stop requests for the worker nor the supervisor's handlers (which may
# stop the whole server).  They stay blocked across the fork, so one sent at once waits
# for the child's own handlers.
_worker_signals: frozenset[int] | None = None
_forking = threading.local()  # the forking thread's signal mask before the fork


def _before_fork() -> None:
    if _worker_signals is not None:
        _forking.mask = signal.pthread_sigmask(signal.SIG_BLOCK, _worker_signals)


def _after_fork_in_parent() -> None:
    mask = getattr(_forking, "mask", None)
    if mask is not None:
        _forking.mask = None
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _after_fork_in_child() -> None:
    global _worker_signals
    if _worker_signals is None:
        return
    handled, _worker_signals = _worker_signals, None
    try:
        signal.set_wakeup_fd(-1)
        for signum in handled:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                          else signal.SIG_DFL)
    except ValueError:  # not this interpreter's main thread: nothing it can change
        pass
    _after_fork_in_parent()  # the mask as it was (in the forking thread's copy)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


# Every server PreForkMixIn goes with is a TCPServer (UDP and Unix ones subclass it).
if TYPE_CHECKING:
    _SocketServer = TCPServer
else:
    _SocketServer = object


class DrainChannel:
    """How a drain in the supervisor reaches the workers, made before they are forked:
    a shared page says that a drain is on and its timeout (the workers read it when
    the supervisor's SIGTERM comes), and a pipe brings back each worker's counts.

    A worker sends what it has open as its drain begins, and its counts at the end; one
    that never sends the end (it crashed, or was killed) had what it had open cut.
    Records of 16 bytes are below PIPE_BUF, so those of several workers never mix.
    """

    _FLAGS = struct.Struct("dd")  # drain requested (1.0 or 0.0), timeout (NaN: none)
    _RECORD = struct.Struct("iIII")  # pid, then BEGUN and open, or ENDED, finished, cut
    _BEGUN, _ENDED = 0, 1

    def __init__(self) -> None:
        self._shared = mmap.mmap(-1, self._FLAGS.size)
        self._counts_out, self._counts_in = os.pipe()
        os.set_blocking(self._counts_out, False)

    def start(self, timeout: float | None) -> None:
        """In the supervisor, before its workers get SIGTERM: drain with *timeout*."""
        self._FLAGS.pack_into(self._shared, 0, 1.0, math.nan if timeout is None else timeout)

    def requested(self) -> tuple[bool, float | None]:
        """In a worker: whether the supervisor drains, and with what timeout."""
        on, timeout = self._FLAGS.unpack_from(self._shared)
        return on == 1.0, None if math.isnan(timeout) else timeout

    def begun(self, open_connections: int) -> None:
        """In a worker, before its handlers can see ``draining``: what it has open."""
        os.write(self._counts_in, self._RECORD.pack(os.getpid(), self._BEGUN,
                                                    open_connections, 0))

    def send(self, report: DrainReport) -> None:
        """In a worker: its counts, for the supervisor's report."""
        os.write(self._counts_in, self._RECORD.pack(os.getpid(), self._ENDED,
                                                    report.finished, report.cut))

    def _collect(self) -> tuple[int, int]:
        """Finished and cut, over the workers: a worker that began and never ended
        counts what it had open as cut."""
        begun: dict[int, int] = {}
        ended: dict[int, tuple[int, int]] = {}
        while True:
            try:
                data = os.read(self._counts_out, self._RECORD.size * 64)
            except BlockingIOError:
                break
            if not data:
                break
            for pid, kind, first, second in self._RECORD.iter_unpack(data):
                if kind == self._BEGUN:
                    begun[pid] = first
                else:
                    ended[pid] = (first, second)
        for pid, open_connections in begun.items():
            ended.setdefault(pid, (0, open_connections))
        return sum(finished for finished, _ in ended.values()), \
            sum(cut for _, cut in ended.values())

    def report(self) -> DrainReport:
        """In the supervisor, once its workers are gone: what they drained."""
        finished, cut = self._collect()
        return DrainReport(open=finished + cut, finished=finished, cut=cut)

    def close(self) -> None:
        os.close(self._counts_out)
        os.close(self._counts_in)
        self._shared.close()


class PreForkMixIn(_ConcurrencyMixIn, _SocketServer):
    """Serve with a fixed number of pre-forked worker processes.

    ``class S(PreForkMixIn, ThreadPoolMixIn, TCPServer)`` gives each worker a pool.
    """

    workers = 2
    # Recycle a worker after this many requests (0: never), plus a random 0..jitter
    # so that workers started together do not all restart together.
    max_requests = 0
    max_requests_jitter = 0
    # On shutdown, how long workers may finish in-flight requests before SIGKILL.
    graceful_timeout = 30.0
    # Each worker also listens on a TCP/UDP socket of its own, bound to the same
    # address with SO_REUSEPORT: the kernel then spreads new connections over the
    # workers instead of waking every worker for each.  The shared socket stays.
    reuse_port_per_worker = False
    # Pin each worker to one CPU, spread over the CPUs this process may use (the
    # least used first): a worker's threads then hand the GIL to each other on one
    # CPU instead of across CPUs (nginx's worker_cpu_affinity auto).
    worker_cpu_affinity = False

    _supervisor: Supervisor | None = None
    _supervisor_waker: Waker | None = None  # set in workers: the parent's loop
    _requests_left = 0
    _poll_interval: float | None = 0.5
    _replace_requested = False
    _own_sockets: tuple[socket.socket, ...] = ()  # a worker's (reuse_port_per_worker)
    _drain_channel: DrainChannel | None = None  # while the supervisor serves
    _draining_workers = False  # the supervisor's drain() is in progress...
    _drain_for: float | None = None  # ...with this timeout
    _drain_thread: threading.Thread | None = None  # a stopping worker's
    _stop_requests: Waker | None = None  # a sync worker's, to its stop thread...
    _stop_thread: threading.Thread | None = None  # ...which acts on them
    _drain_counts_from: tuple[int, int] | None = None  # a worker the supervisor drains
    # With AsyncMixIn after this class: that class (its serving methods are the
    # workers'; the supervisor's are the sync ones after it), and in a worker the glue
    # between its event loop and the supervisor.
    _event_loop_class: type | None = None
    _aio_worker: AsyncWorker | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        event_loop = next((base for base in cls.__mro__
                           if "_sockserve_event_loop" in vars(base)), None)
        if event_loop is None:
            return
        if cls.__mro__.index(PreForkMixIn) > cls.__mro__.index(event_loop):
            raise TypeError(f"{cls.__qualname__}: put PreForkMixIn before "
                            f"{event_loop.__name__}, or the event loop would serve in the "
                            "supervisor, with no worker")
        cls._event_loop_class = event_loop

    def _serving_methods(self) -> Any:
        """Where ``serve_forever()``, ``shutdown()``, ``drain()`` and ``is_serving()``
        come from: the next class, except in the supervisor of event-loop workers,
        which supervises with the sync loop (the event loop's methods are the workers')."""
        if self._event_loop_class is None or self.in_worker:
            return super()
        return super(self._event_loop_class, self)

    def serve_forever(self, poll_interval: float | None = 0.5) -> None:
        self._serving_methods().serve_forever(poll_interval)

    def server_bind(self) -> None:
        if self.reuse_port_per_worker and self.address_family in INET_FAMILIES:
            self.allow_reuse_port = True  # the kernel only groups sockets that all ask
        super().server_bind()

    @property
    def in_worker(self) -> bool:
        """True in a worker process, False in the supervisor."""
        return self._supervisor_waker is not None

    def _sockserve_serve_loop(self, selector: selectors.BaseSelector, waker: Waker,
                    poll_interval: float | None) -> None:
        if self.in_worker:
            unblock_stop_signals()  # the stop thread hears them (_start_stop_thread)
            if self._supervisor_waker is not None:
                self._supervisor_waker.wake(b"S%d;" % os.getpid())
            super()._sockserve_serve_loop(selector, waker, poll_interval)
            return
        self._poll_interval = poll_interval
        # A worker that lost accept() to another must not sit in it, where neither the
        # stop flag nor SIGTERM can reach it (PEP 475 retries the call).
        self._sockserve_share_listeners()
        if self._drain_channel is not None:  # from an earlier serve_forever()
            self._drain_channel.close()
        self._drain_channel = DrainChannel()
        self._supervisor = supervisor = Supervisor(
            lambda cpu: self._worker_main(waker, cpu), self.workers, place=self._choose_cpu)
        try:
            while not self._sockserve_stop_requested():
                supervisor.reap(selector)
                supervisor.target = self.workers
                supervisor.stop_grace = self._replaced_worker_grace()
                if self._replace_requested:
                    self._replace_requested = False
                    supervisor.replace_all()
                supervisor.roll()
                supervisor.shrink()
                supervisor.fill()
                timeout = supervisor.register(selector)
                overdue = supervisor.kill_overdue()
                if overdue is not None and (timeout is None or overdue < timeout):
                    timeout = overdue
                if poll_interval is not None and (timeout is None or poll_interval < timeout):
                    timeout = poll_interval
                for key, _ in selector.select(timeout):
                    if key.fileobj is waker:
                        self._sockserve_read_wakeups(waker)
                self.service_actions()
        finally:
            supervisor.stop(self._stop_timeout())

    def _stop_timeout(self) -> float | None:
        """How long stopping workers get before SIGKILL: ``graceful_timeout``, or more
        for a drain that gives them longer (they cut at its deadline, then exit), or
        for ever for a drain without a timeout.  Event-loop workers cut at their
        deadline themselves (``graceful_timeout`` or the drain's), then cancel their
        handlers and close their connections, each step bounded: they get that long
        more to exit."""
        margin = self._drain_exit_margin()
        if not self._draining_workers:
            if self._event_loop_class is not None:
                return self.graceful_timeout + margin
            return self.graceful_timeout
        if self._drain_for is None:
            return None
        return max(self.graceful_timeout, self._drain_for + margin)

    def _drain_exit_margin(self) -> float:
        """How long a worker may take to exit after its drain's deadline."""
        margin = DRAIN_EXIT_MARGIN
        if self._event_loop_class is not None:
            from ._aio_serving import CANCEL_TIMEOUT, CLOSE_TIMEOUT  # asyncio is loaded
            margin += CANCEL_TIMEOUT + 2 * CLOSE_TIMEOUT  # close(): abort, then wait again
        return margin

    def _replaced_worker_grace(self) -> float | None:
        """How long a worker replaced, removed or recycled while serving may take to
        stop: as long as at shutdown, and its own ``drain_timeout`` plus the margin."""
        grace = self._stop_timeout()
        if grace is not None and self.drain_timeout is not None:
            grace = max(grace, self.drain_timeout + self._drain_exit_margin())
        return grace

    def _choose_cpu(self, taken: list[int | None]) -> int | None:
        """In the supervisor, before a fork: the allowed CPU with the fewest workers."""
        if not self.worker_cpu_affinity or not hasattr(os, "sched_getaffinity"):
            return None
        return min(sorted(os.sched_getaffinity(0)), key=taken.count)

    def _worker_main(self, supervisor_waker: Waker, cpu: int | None) -> None:
        """The body of a worker process; always ends in os._exit()."""
        status = 1
        try:
            signal.set_wakeup_fd(-1)  # the parent's (the runner's) is not this process's
            self._sockserve_forked()
            if cpu is not None:  # before any thread starts: they all inherit it
                os.sched_setaffinity(0, {cpu})
            self._supervisor_waker = supervisor_waker
            self._supervisor = None
            # SIGTERM from the supervisor: stop accepting, finish in-flight requests.
            # The handler only sets a flag and wakes the loop (it runs on this thread).
            global _worker_signals
            _worker_signals = frozenset({signal.SIGTERM, signal.SIGINT, *SUPERVISOR_SIGNALS})
            signal.signal(signal.SIGTERM, self._on_sigterm)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's
            for signum in SUPERVISOR_SIGNALS:  # so are these (the runner's): not acted on
                signal.signal(signum, _not_for_workers)
            if self.max_requests:
                self._requests_left = self.max_requests + random.randint(
                    0, max(0, self.max_requests_jitter))
            if self.reuse_port_per_worker:
                self._listen_on_own_sockets()
            if self._event_loop_class is not None:
                self._aio_worker = AsyncWorker(self)
            else:
                self._start_stop_thread()
            try:
                self.serve_forever(self._poll_interval)
            finally:
                # The event loop may have left SIGTERM at its default action (asyncio's
                # close() does; the worker blocked it before, AsyncWorker.finished()).
                signal.signal(signal.SIGTERM, self._on_sigterm)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            if self._aio_worker is not None:
                self._aio_worker.report()  # its loop served its own sockets' backlog
            elif self._own_sockets:
                # What the kernel queued on this worker's own sockets dies with them:
                # serve it first (a connection arriving between this and close() is
                # still reset; Linux's net.ipv4.tcp_migrate_req=1 moves those too).
                self._sockserve_accept_backlog(list(self._own_sockets))
            status = 0
        except BaseException:
            logger.exception("worker %d failed", os.getpid())
        finally:
            try:
                self.server_close()  # joins a pool's threads; never unlinks the parent's file
                self._end_stop_thread()  # a drain it started is in _drain_thread
                if self._drain_thread is not None:  # it reports to the supervisor; the
                    self._drain_thread.join()  # connections are gone, or its deadline is
            finally:
                os._exit(status)

    def _listen_on_own_sockets(self) -> None:
        """In a worker: add a SO_REUSEPORT sibling of each TCP/UDP listening socket."""
        own = []
        for shared in [self.socket, *self.extra_sockets]:
            if shared.family not in INET_FAMILIES:
                continue  # Unix sockets have no port to share: they stay shared only
            try:
                own.append(reuse_port_sibling(shared, self.request_queue_size))
            except OSError as exc:  # e.g. a socket inherited without SO_REUSEPORT
                logger.warning("worker %d: sharing %s only: %s", os.getpid(),
                               shared.getsockname(), exc)
        self._own_sockets = tuple(own)
        self.extra_sockets = [*self.extra_sockets, *own]

    def _request_stop(self) -> None:
        """Have the stop thread stop the worker: from SIGTERM's handler, or a worker
        that served its last request.

        Only a wake-up, as a signal handler should: it runs between any two bytecodes
        of the main thread, which may be serving a request (a serial worker) or hold a
        lock the rest would need.  An event-loop worker's stop goes through its loop."""
        if self._aio_worker is not None:
            self._aio_worker.stop()
        elif self._stop_requests is not None:
            self._stop_requests.wake(STOP_REQUESTED)

    def _start_stop_thread(self) -> None:
        """In a sync worker: the thread that acts on its stop requests.

        SIGTERM reaches it straight from the C-level handler too, which writes the
        signal's number into its waker (``signal.set_wakeup_fd()``): Python runs the
        Python-level handler only once the main thread is back in bytecode, which a
        handler in a long call (``os.system()``, a C extension) may not be for a
        while, and a forked child of a non-main thread on 3.13 may not run it until
        some system call is interrupted."""
        self._stop_requests = requests = Waker()
        self._stop_thread = threading.Thread(target=self._act_on_stop_requests,
                                             args=(requests,), name="sockserve-stop",
                                             daemon=True)
        self._stop_thread.start()
        signal.set_wakeup_fd(requests.write_fileno(), warn_on_full_buffer=False)

    def _act_on_stop_requests(self, requests: Waker) -> None:
        """The stop thread: ``_stop_worker()`` on each request, until the worker ends."""
        sigterm = bytes([signal.SIGTERM])
        with selectors.DefaultSelector() as selector:
            selector.register(requests, selectors.EVENT_READ)
            while True:
                selector.select()
                messages = requests.read_messages()
                if STOP_REQUESTED in messages or sigterm in messages:
                    try:
                        self._stop_worker()
                    except Exception:
                        logger.exception("worker %d: stopping failed", os.getpid())
                if WORKER_ENDS in messages:
                    return

    def _end_stop_thread(self) -> None:
        """At the worker's end: wait for the stop thread to act on what it was asked."""
        requests, self._stop_requests = self._stop_requests, None
        if requests is None or self._stop_thread is None:
            return
        signal.set_wakeup_fd(-1)
        requests.wake(WORKER_ENDS)
        self._stop_thread.join()
        requests.close()  # a late signal's wake() then fails quietly (socketpair)

    def _stop_worker(self) -> None:
        """On the stop thread: with a drain timeout (the supervisor's ``drain()``, else
        ``drain_timeout``), cut what is still open at the deadline — from a thread of
        its own, as the stop thread must still hear a drain that comes later.
        Idempotent."""
        draining, timeout = self._drain_requested()
        if draining and self._drain_counts_from is None:
            self._report_drain(timeout)
        if not draining:
            timeout = self.drain_timeout
        if draining or timeout is not None:
            # Before the loop can stop: an evented one then lingers to this deadline.
            self._sockserve_set_drain_deadline(timeout)
        self._sockserve_request_stop()
        if (draining or timeout is not None) and self._drain_thread is None:
            self._sockserve_begin_drain(timeout)
            self._drain_thread = threading.Thread(
                target=self._drain_worker, args=(timeout,), name="sockserve-drain",
                daemon=True)
            self._drain_thread.start()

    def _report_drain(self, timeout: float | None) -> None:
        """The supervisor drains: tell it what is open (before a handler can see
        ``draining``), and report the end of it from here.  A worker already stopping
        on its own ``drain_timeout`` gets the supervisor's deadline too, if earlier."""
        connections = self._sockserve_connections
        open_now, finished, cut = connections.open_and_counts()
        self._drain_counts_from = (finished, cut)
        if self._drain_channel is not None:
            self._drain_channel.begun(open_now)
        if self._drain_thread is not None and timeout is not None:
            cut_at_deadline = threading.Timer(timeout, connections.cut_all)
            cut_at_deadline.daemon = True
            cut_at_deadline.start()

    def _on_sigterm(self, signum: int, frame: object) -> None:
        """A worker's SIGTERM handler (on its main thread): ``_request_stop()``."""
        self._request_stop()

    def _drain_requested(self) -> tuple[bool, float | None]:
        """In a worker: whether the supervisor drains, and with what timeout."""
        channel = self._drain_channel
        return channel.requested() if channel is not None else (False, None)

    def _drain_worker(self, timeout: float | None) -> None:
        self._sockserve_finish_connections(timeout)
        if self._drain_counts_from is not None and self._drain_channel is not None:
            finished_before, cut_before = self._drain_counts_from
            finished, cut = self._sockserve_connections.counts()
            finished, cut = finished - finished_before, cut - cut_before
            self._drain_channel.send(DrainReport(open=finished + cut, finished=finished,
                                                 cut=cut))

    def _sockserve_read_wakeups(self, waker: Waker) -> bytes:
        messages = super()._sockserve_read_wakeups(waker)
        if not self.in_worker and self._supervisor is not None:
            for kind, pid in WORKER_MESSAGE.findall(messages):
                if kind == b"S":
                    self._supervisor.mark_serving(int(pid))
                else:
                    self._supervisor.retire(int(pid))
        return messages

    def is_serving(self) -> bool:
        """In the supervisor: serving, with at least one worker that serves."""
        serving: bool = self._serving_methods().is_serving()
        if self.in_worker:
            return serving
        return serving and self._supervisor is not None and self._supervisor.serving() > 0

    def process_request(self, request: Any, client_address: Any) -> None:
        self._count_request()
        super().process_request(request, client_address)

    def _count_request(self) -> None:
        """In a worker: one request toward ``max_requests``."""
        if self._requests_left:
            self._requests_left -= 1
            if not self._requests_left:
                self._retire()

    def _retire(self) -> None:
        """In a worker that took its last request: have the supervisor start the
        replacement now, then stop like a worker that ``reload()`` replaces (stop
        accepting, finish what is open, exit)."""
        logger.info("worker %d served max_requests: recycling", os.getpid())
        if self._supervisor_waker is not None:  # lost, it is replaced when it exits
            self._supervisor_waker.wake(b"R%d;" % os.getpid())
        if self._aio_worker is None:  # on the loop's thread: it accepts no more
            if self.drain_timeout is not None:
                self._sockserve_set_drain_deadline(self.drain_timeout)
            self._sockserve_request_stop()
        self._request_stop()

    def drain(self, timeout: float | None, *, backlog: bool = False) -> DrainReport:
        """In the supervisor: every worker stops accepting and drains its connections
        with *timeout*; the report adds up theirs.  (*backlog* applies to the
        supervisor's own loop only, which accepts nothing.)"""
        channel = self._drain_channel
        if self.in_worker or channel is None:
            report: DrainReport = self._serving_methods().drain(timeout, backlog=backlog)
            return report
        if self._sockserve_on_loop_thread():
            raise RuntimeError("drain() cannot wait for the workers on the thread that "
                               "supervises them; call it from another thread")
        channel.start(timeout)
        self._draining_workers, self._drain_for = True, timeout
        try:
            # Returns once the workers are reaped.
            self._serving_methods().drain(timeout, backlog=backlog)
        finally:
            self._draining_workers, self._drain_for = False, None
        report = channel.report()
        logger.info("drained %s: %d connections finished, %d cut", self.server_address,
                    report.finished, report.cut)
        return report

    def _sockserve_what_drains(self) -> str:
        if self.in_worker:
            return super()._sockserve_what_drains()
        return f"{len(self.worker_pids())} workers and their connections"

    def shutdown(self) -> None:
        """Stop the whole server; from a worker's handler too (it tells the supervisor)."""
        if self._supervisor_waker is not None:
            self._supervisor_waker.wake(SHUTDOWN)
            return
        self._serving_methods().shutdown()

    def reload(self) -> None:
        """Replace every worker, one at a time: each old one finishes its requests
        while its replacement already accepts."""
        self._replace_requested = True
        self._sockserve_wake()

    def scale(self, delta: int) -> None:
        """One more or fewer worker process (never fewer than one)."""
        self.set_workers(max(1, self.workers + delta))
        logger.info("workers: %d", self.workers)

    def stop_now(self) -> None:
        """Kill the workers instead of waiting for them (a second stop request)."""
        if self._supervisor is not None:
            self._supervisor.kill_all()
        super().stop_now()

    def set_workers(self, workers: int) -> None:
        """Change the number of worker processes while serving."""
        if workers < 1:
            raise ValueError("need at least one worker")
        self.workers = workers
        self._sockserve_wake()

    def worker_pids(self) -> list[int]:
        """The worker processes alive now (empty unless serving)."""
        return self._supervisor.pids() if self._supervisor is not None else []

    def statistics(self) -> ServerStatistics:
        """In the supervisor, ``workers`` describes the worker processes (each worker
        keeps its own counters; the supervisor's count nothing, as it accepts nothing)."""
        snapshot = super().statistics()
        if self.in_worker:
            return snapshot
        if self._supervisor is None:
            workers = SupervisorStatistics(workers=0, target=self.workers, spawned=0,
                                           exited=0, crashed=0)
        else:
            workers = self._supervisor.statistics()
        return dataclasses.replace(snapshot, workers=workers)

    def server_close(self) -> None:
        if self._supervisor is not None:  # the supervisor's (a worker has none)
            # A loop still serving in another thread would fork replacements for the
            # workers stopped here, on a closed socket: stop it first.
            self.shutdown()
            self._supervisor.stop(self.graceful_timeout)  # if the loop did not already
        if self._drain_channel is not None and not self.in_worker:
            self._drain_channel.close()
            self._drain_channel = None
        super().server_close()


def reuse_port_sibling(shared: socket.socket, backlog: int) -> socket.socket:
    """A new socket bound to *shared*'s address with SO_REUSEPORT (listening, for
    streams), blocking or not like the shared one during serving."""
    sock = socket.socket(shared.family, shared.type)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if shared.type == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared.family == socket.AF_INET6:
            v6only = shared.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind(shared.getsockname())
        if shared.type == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(shared.getblocking())
    except BaseException:
        sock.close()
        raise
    return sock


class PreForkTCPServer(PreForkMixIn, TCPServer):
    pass


class PreForkUDPServer(PreForkMixIn, UDPServer):
    pass


if hasattr(socket, "AF_UNIX"):
    from ._server import UnixDatagramServer, UnixStreamServer

    class PreForkUnixStreamServer(PreForkMixIn, UnixStreamServer):
        pass

    class PreForkUnixDatagramServer(PreForkMixIn, UnixDatagramServer):
        pass
