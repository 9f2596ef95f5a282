"""A fixed set of worker threads fed from a bounded queue.

Unlike ``ThreadingMixIn`` (a thread per request, unbounded), the number of threads
never exceeds ``max_workers`` and at most ``max_queue`` accepted requests wait for one,
whatever the number of clients.  The server asks ``has_capacity()`` before accepting,
and the pool calls back when capacity frees up, so a full pool leaves new clients in
the kernel's backlog instead of in memory.
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
        on_capacity: called (from a worker) when a full pool frees a slot.
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
        self._cond = threading.Condition()
        self._queue: collections.deque[Work] = collections.deque()
        self._threads: set[threading.Thread] = set()
        self._idle = 0
        self._busy = 0
        self._completed = 0
        self._serial = 0
        self._closing = False

    # -- submitting ---------------------------------------------------------------

    def has_capacity(self, reserve: int = 0) -> bool:
        """True if a request submitted now would run or queue without waiting, after
        *reserve* slots are kept for requests that will be submitted later."""
        with self._cond:
            return self._has_capacity(reserve)

    def _has_capacity(self, reserve: int = 0) -> bool:
        outstanding = self._busy + len(self._queue) + reserve
        return outstanding < self._max_workers + self._max_queue

    def submit_nowait(self, request: Any, client_address: Any) -> bool:
        """Hand a request to the pool; False (and nothing done) if it is full."""
        with self._cond:
            if self._closing:
                raise RuntimeError("the pool is closed")
            if not self._has_capacity():
                return False
            self._enqueue((request, client_address))
            return True

    def submit(self, request: Any, client_address: Any) -> None:
        """Hand a request to the pool, waiting for a free slot if it is full."""
        with self._cond:
            self._cond.wait_for(lambda: self._closing or self._has_capacity())
            if self._closing:
                raise RuntimeError("the pool is closed")
            self._enqueue((request, client_address))

    def _enqueue(self, work: Work) -> None:
        self._queue.append(work)
        # An idle worker stays counted until it runs, so a burst can outnumber the idle
        # workers already woken: each request beyond them needs a new thread.
        if len(self._queue) <= self._idle:
            self._cond.notify()
        elif len(self._threads) < self._max_workers:
            self._start_worker()

    def _start_worker(self) -> None:
        self._serial += 1
        thread = threading.Thread(target=self._work, name=f"{self._name}-{self._serial}",
                                  daemon=self._daemon)
        self._threads.add(thread)
        thread.start()

    # -- the workers ----------------------------------------------------------------

    def _work(self) -> None:
        me = threading.current_thread()
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._closing and not self._surplus():
                    self._idle += 1
                    cond.wait()
                    self._idle -= 1
                if self._surplus() or not self._queue:  # shrinking, or closing and done
                    self._threads.discard(me)
                    cond.notify_all()
                    return
                work = self._queue.popleft()
                self._busy += 1
            try:
                self._run(*work)
            except BaseException:  # run() handles errors; this is a last resort
                logger.exception("worker %s: request %r escaped its error handling",
                                 me.name, work[1])
            with cond:
                was_full = not self._has_capacity()
                self._busy -= 1
                self._completed += 1
                cond.notify_all()  # a submit() may be waiting for the slot
            if was_full:
                self._on_capacity()

    def _surplus(self) -> bool:
        return len(self._threads) > self._max_workers

    # -- control --------------------------------------------------------------------

    def resize(self, max_workers: int) -> None:
        """Change the thread limit; surplus threads exit after their current request."""
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        with self._cond:
            was_full = not self._has_capacity()
            self._max_workers = max_workers
            while len(self._queue) > self._idle and len(self._threads) < max_workers:
                self._start_worker()
            self._cond.notify_all()
            freed = was_full and self._has_capacity()
        if freed:
            self._on_capacity()

    def close(self, *, wait: bool = True, timeout: float | None = None) -> bool:
        """Refuse new work; let the workers finish what is queued, then stop them.

        Returns:
            True if every worker stopped (always, unless *wait* is false or *timeout*
            expired first).
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            if wait:
                self._cond.wait_for(lambda: not self._threads, timeout)
            return not self._threads

    def statistics(self) -> PoolStatistics:
        with self._cond:
            return PoolStatistics(
                max_workers=self._max_workers, max_queue=self._max_queue,
                workers=len(self._threads), busy=self._busy, queued=len(self._queue),
                completed=self._completed)
