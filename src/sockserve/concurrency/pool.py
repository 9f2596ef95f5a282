"""A fixed set of worker threads fed from a bounded queue.

Unlike ``ThreadingMixIn`` (a thread per request, unbounded), the number of threads
never exceeds ``max_workers`` and at most ``max_queue`` accepted requests wait for one,
whatever the number of clients.  The server asks ``has_capacity()`` before accepting,
and the pool calls back when capacity frees up, so a full pool leaves new clients in
the kernel's backlog instead of in memory.  A request the server accepted anyway (in a
race with a resize, say) is queued past the limit rather than refused or waited for:
nothing accepted is lost, and the loop that accepted it never stalls.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("sockserve.pool")

Work = tuple[Any, Any]  # (request, client_address)


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a WorkerPool."""

    max_workers: int
    max_queue: int
    workers: int  # threads alive
    busy: int  # running a request
    queued: int  # accepted, waiting for a worker
    completed: int  # requests run to the end (successfully or not)


class WorkerPool:
    """Runs ``run(request, client_address)`` on at most *max_workers* threads.

    Args:
        run: called on a worker thread for each submitted request; must not raise.
        max_workers: thread limit; threads start on demand and stay until close().
        max_queue: requests that may wait for a free worker.
        on_capacity: called when the pool has room again after ``has_capacity()``
            said no (from a worker finishing a request), and after every resize.
        daemon: whether worker threads are daemon threads.
        name: thread name prefix.
    """

    def __init__(self, run: Callable[[Any, Any], None], *, max_workers: int, max_queue: int,
                 on_capacity: Callable[[], None] = lambda: None, daemon: bool = False,
                 name: str = "sockserve-worker") -> None:
        if max_workers < 1 or max_queue < 0:
            raise ValueError("max_workers must be >= 1 and max_queue >= 0")
        self._run = run
        self._max_workers = max_workers
        self._max_queue = max_queue
        self._on_capacity = on_capacity
        self._daemon = daemon
        self._name = name
        # One lock, two conditions: idle workers wait for work, and submit()/close()
        # wait for a free slot or for the workers to end.  A finished request then
        # wakes a waiting submitter, not every idle worker.
        self._lock = threading.RLock()
        self._work_ready = threading.Condition(self._lock)
        self._state_changed = threading.Condition(self._lock)
        self._queue: collections.deque[Work] = collections.deque()
        self._threads: set[threading.Thread] = set()
        self._idle = 0  # workers waiting for work
        self._waking = 0  # woken or started, not yet at the queue
        self._busy = 0
        self._completed = 0
        self._serial = 0
        self._closing = False
        self._refused = False  # has_capacity() said no: on_capacity() is awaited

    # -- submitting ---------------------------------------------------------------

    def has_capacity(self, reserve: int = 0) -> bool:
        """True if a request submitted now would run or queue within the limits, after
        *reserve* slots are kept for requests that will be submitted later.  After a
        False, ``on_capacity`` is called when the next request finishes."""
        with self._lock:
            if self._has_capacity(reserve):
                return True
            self._refused = True
            return False

    def _has_capacity(self, reserve: int = 0) -> bool:
        outstanding = self._busy + len(self._queue) + reserve
        return outstanding < self._max_workers + self._max_queue

    def submit_nowait(self, request: Any, client_address: Any) -> bool:
        """Hand a request to the pool; False (and nothing done) if it is full."""
        with self._lock:
            if self._closing:
                raise RuntimeError("the pool is closed")
            if not self._has_capacity():
                return False
            self._enqueue((request, client_address))
            return True

    def submit(self, request: Any, client_address: Any, *, wait: bool = False) -> None:
        """Hand a request to the pool.  When it is full: with *wait*, wait for a free
        slot; otherwise queue it past ``max_queue`` (for a request accepted already)."""
        with self._lock:
            if wait:
                self._state_changed.wait_for(lambda: self._closing or self._has_capacity())
            if self._closing:
                raise RuntimeError("the pool is closed")
            self._enqueue((request, client_address))

    def _enqueue(self, work: Work) -> None:
        self._queue.append(work)
        try:
            woken = self._waking or self._wake_one()
        except BaseException:
            self._queue.pop()
            raise
        if not woken and not self._threads:
            # No worker could start and none will come back for the queue: refuse it.
            self._queue.pop()
            raise RuntimeError("no worker thread could be started for the request")
        # else a worker is on its way: it takes this or an earlier request and, if more
        # are queued, brings one more worker (see _work()).  One wake-up at a time lets
        # a worker serve a burst of quick requests without waking a thread for each,
        # and a burst of long ones still gets a worker each.

    def _wake_one(self) -> bool:
        """Bring one more worker to the queue: an idle one, or a new thread.  False if
        a thread was needed and could not start."""
        if self._idle:
            self._waking += 1
            self._work_ready.notify()
        elif len(self._threads) < self._max_workers:
            return self._start_worker()
        # else every worker is busy: each comes back for the queue when it is done
        return True

    def _start_worker(self) -> bool:
        self._serial += 1
        thread = threading.Thread(target=self._work, name=f"{self._name}-{self._serial}",
                                  daemon=self._daemon)
        self._threads.add(thread)
        self._waking += 1  # the new thread answers like a woken one
        try:
            thread.start()
        except BaseException as exc:  # leave no phantom worker
            self._threads.discard(thread)
            self._waking -= 1
            if not isinstance(exc, RuntimeError):  # "can't start new thread" is expected
                raise
            logger.warning("cannot start a worker thread (%d running): %s",
                           len(self._threads), exc)
            return False
        return True

    # -- the workers ----------------------------------------------------------------

    def _work(self) -> None:
        me = threading.current_thread()
        arrived = True  # started or woken: answers one wake-up (_waking)
        while True:
            with self._lock:
                while True:
                    if arrived:
                        self._waking = max(0, self._waking - 1)
                        arrived = False
                    if self._queue or self._closing or self._surplus():
                        break
                    self._idle += 1
                    self._work_ready.wait()
                    self._idle -= 1
                    arrived = True
                if self._surplus() or not self._queue:  # shrinking, or closing and done
                    self._threads.discard(me)
                    self._state_changed.notify_all()  # close() may wait for the last
                    return
                work = self._queue.popleft()
                self._busy += 1
                if self._queue and not self._waking:
                    try:
                        self._wake_one()  # more wait: this request may take long
                    except BaseException:  # e.g. MemoryError: this worker comes back
                        logger.exception("worker %s: cannot bring another worker", me.name)
            try:
                self._run(*work)
            except BaseException:  # run() handles errors; this is a last resort
                logger.exception("worker %s: request %r escaped its error handling",
                                 me.name, work[1])
            with self._lock:
                self._busy -= 1
                self._completed += 1
                self._state_changed.notify()  # a submit() may be waiting for the slot
                refused, self._refused = self._refused, False
            if refused:
                self._on_capacity()

    def _surplus(self) -> bool:
        return len(self._threads) > self._max_workers

    # -- control --------------------------------------------------------------------

    def resize(self, max_workers: int) -> None:
        """Change the thread limit; surplus threads exit after their current request."""
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        with self._lock:
            self._max_workers = max_workers
            if self._queue and not self._waking:
                self._wake_one()  # the workers bring each other as long as work waits
            self._work_ready.notify_all()  # surplus idle workers exit
            self._state_changed.notify_all()  # submitters: the capacity changed
            self._refused = False
        self._on_capacity()  # more room, or less: the server asks again

    def close(self, *, wait: bool = True, timeout: float | None = None) -> bool:
        """Refuse new work; let the workers finish what is queued, then stop them.

        Returns:
            True if every worker stopped (always, unless *wait* is false or *timeout*
            expired first).
        """
        with self._lock:
            self._closing = True
            self._work_ready.notify_all()
            self._state_changed.notify_all()  # submitters fail
            if wait:
                self._state_changed.wait_for(lambda: not self._threads, timeout)
            return not self._threads

    def statistics(self) -> PoolStatistics:
        with self._lock:
            return PoolStatistics(
                max_workers=self._max_workers, max_queue=self._max_queue,
                workers=len(self._threads), busy=self._busy, queued=len(self._queue),
                completed=self._completed)
