"""WorkerPool on its own: how many threads a burst of work gets."""

from __future__ import annotations

import threading
import time
from typing import Any

from sockserve.concurrency.pool import WorkerPool
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import IO_TIMEOUT, wait_for


def test_a_burst_after_a_quiet_spell_starts_enough_workers() -> None:
    # One finished request leaves one idle worker.  A burst of four, submitted before
    # that worker wakes, must not all wait for it: each request beyond the idle
    # workers starts a thread (up to max_workers).
    together = threading.Barrier(4, timeout=IO_TIMEOUT)
    done = threading.Semaphore(0)

    def run(request: Any, client_address: Any) -> None:
        if request == "burst":
            together.wait()  # BrokenBarrierError if the four do not run at once
        done.release()

    pool = WorkerPool(run, max_workers=8, max_queue=8)
    try:
        pool.submit("warm-up", None)
        assert done.acquire(timeout=IO_TIMEOUT)
        # Holding the pool's lock keeps the idle worker from waking until all four wait.
        with pool._lock:
            for _ in range(4):
                assert pool.submit_nowait("burst", None)
        for _ in range(4):
            assert done.acquire(timeout=IO_TIMEOUT), "a burst request did not run"
        assert not together.broken
        assert pool.statistics().workers == 4
    finally:
        pool.close(timeout=IO_TIMEOUT)


def test_quick_requests_are_served_while_long_ones_hold_workers() -> None:
    # Two requests that block until released hold two workers; the third worker
    # serves the quick ones meanwhile, whatever order the wake-ups happen in.
    release = threading.Event()
    quick_done = threading.Semaphore(0)
    long_done = threading.Semaphore(0)

    def run(request: Any, client_address: Any) -> None:
        if request == "long":
            assert release.wait(IO_TIMEOUT)
            long_done.release()
        else:
            quick_done.release()

    pool = WorkerPool(run, max_workers=3, max_queue=20)
    try:
        for request in ["long", "long"] + ["quick"] * 10:
            assert pool.submit_nowait(request, None)
        for _ in range(10):
            assert quick_done.acquire(timeout=IO_TIMEOUT), "a quick request waited"
        assert not long_done.acquire(blocking=False)  # the long ones still run
        wait_for(lambda: pool.statistics().busy == 2, what="the quick worker done")
        release.set()
        for _ in range(2):
            assert long_done.acquire(timeout=IO_TIMEOUT)
        assert pool.statistics().workers <= 3
    finally:
        release.set()
        pool.close(timeout=IO_TIMEOUT)


@settings(max_examples=40, deadline=None)
@given(max_workers=st.integers(1, 6),
       requests=st.lists(st.sampled_from(["long", "quick"]), min_size=1, max_size=30),
       pauses=st.lists(st.booleans(), max_size=30))
def test_no_request_waits_behind_long_ones_while_a_worker_is_free(
        max_workers: int, requests: list[str], pauses: list[bool]) -> None:
    # Whatever the order of submissions (and of the wake-ups they race with): while
    # fewer long requests block than there are workers, every quick one completes;
    # the threads never outnumber max_workers; everything completes once released.
    longs = requests.count("long")
    release = threading.Event()
    done = threading.Semaphore(0)
    peak = [0]

    def run(request: Any, client_address: Any) -> None:
        peak[0] = max(peak[0], threading.active_count())
        if request == "long":
            assert release.wait(IO_TIMEOUT)
        done.release()

    before = threading.active_count()
    pool = WorkerPool(run, max_workers=max_workers, max_queue=len(requests))
    try:
        for n, request in enumerate(requests):
            assert pool.submit_nowait(request, n)
            if n < len(pauses) and pauses[n]:
                time.sleep(0)  # let the workers run between some submissions
        if longs < max_workers:
            for _ in range(len(requests) - longs):
                assert done.acquire(timeout=IO_TIMEOUT), "a quick request waited"
            release.set()
            for _ in range(longs):
                assert done.acquire(timeout=IO_TIMEOUT)
        else:
            release.set()
            for _ in range(len(requests)):
                assert done.acquire(timeout=IO_TIMEOUT)
        assert peak[0] - before <= max_workers
    finally:
        release.set()
        assert pool.close(timeout=IO_TIMEOUT)


def fail_next_thread_start(monkeypatch: Any,
                           error: BaseException = RuntimeError("can't start new thread")
                           ) -> None:
    """The next ``Thread.start()`` raises *error*; by default as when the process may
    not start more threads."""
    real_start = threading.Thread.start
    failed = False

    def start(thread: threading.Thread) -> None:
        nonlocal failed
        if not failed:
            failed = True
            raise error
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)


def test_a_request_no_worker_can_take_is_refused_not_left_queued(monkeypatch: Any) -> None:
    ran = []
    done = threading.Semaphore(0)

    def run(request: Any, client_address: Any) -> None:
        ran.append(request)
        done.release()

    pool = WorkerPool(run, max_workers=1, max_queue=0)
    try:
        fail_next_thread_start(monkeypatch)
        try:
            pool.submit_nowait("first", None)
        except RuntimeError:
            pass
        else:
            raise AssertionError("a request with no worker to run it was accepted")
        assert pool.statistics().queued == 0  # no phantom holding the only slot
        assert pool.submit_nowait("second", None)
        assert done.acquire(timeout=IO_TIMEOUT)
        assert ran == ["second"]
    finally:
        pool.close(timeout=IO_TIMEOUT)


def test_a_request_queues_when_busy_workers_will_come_back(monkeypatch: Any) -> None:
    release = threading.Event()
    started = threading.Event()
    done = threading.Semaphore(0)

    def run(request: Any, client_address: Any) -> None:
        if request == "long":
            started.set()
            assert release.wait(IO_TIMEOUT)
        done.release()

    pool = WorkerPool(run, max_workers=2, max_queue=2)
    try:
        assert pool.submit_nowait("long", None)
        assert started.wait(IO_TIMEOUT)
        fail_next_thread_start(monkeypatch)
        assert pool.submit_nowait("next", None)  # no second thread, but it waits its turn
        assert pool.statistics().queued == 1
        release.set()
        for _ in range(2):
            assert done.acquire(timeout=IO_TIMEOUT)
        assert pool.statistics().completed == 2
    finally:
        pool.close(timeout=IO_TIMEOUT)


def test_a_refused_capacity_check_is_answered_when_a_request_ends() -> None:
    # The server pauses on has_capacity(reserve=...) == False (TLS handshakes hold the
    # reserve) even though the pool itself is not full: the next request to end must
    # still call on_capacity(), or the paused loop is never woken.
    release = threading.Event()
    woken = threading.Event()
    done = threading.Semaphore(0)

    def run(request: Any, client_address: Any) -> None:
        assert release.wait(IO_TIMEOUT)
        done.release()

    pool = WorkerPool(run, max_workers=2, max_queue=0, on_capacity=woken.set)
    try:
        assert pool.submit_nowait("one", None)
        assert not pool.has_capacity(reserve=1)  # one busy + one handshake = full
        release.set()
        assert done.acquire(timeout=IO_TIMEOUT)
        assert woken.wait(IO_TIMEOUT)
    finally:
        pool.close(timeout=IO_TIMEOUT)


def test_a_full_pool_queues_an_accepted_request_past_its_limit() -> None:
    release = threading.Event()
    started = threading.Event()
    done = threading.Semaphore(0)

    def run(request: Any, client_address: Any) -> None:
        started.set()
        assert release.wait(IO_TIMEOUT)
        done.release()

    pool = WorkerPool(run, max_workers=1, max_queue=0)
    try:
        assert pool.submit_nowait("one", None)
        assert started.wait(IO_TIMEOUT)
        assert not pool.submit_nowait("two", None)
        pool.submit("two", None)  # returns at once: nothing accepted is refused
        assert pool.statistics().queued == 1
        release.set()
        for _ in range(2):
            assert done.acquire(timeout=IO_TIMEOUT)
    finally:
        pool.close(timeout=IO_TIMEOUT)


def test_a_thread_start_failing_otherwise_leaves_no_phantom_either(monkeypatch: Any) -> None:
    fail_next_thread_start(monkeypatch, MemoryError())
    done = threading.Semaphore(0)
    pool = WorkerPool(lambda request, client_address: done.release(), max_workers=1,
                      max_queue=1)
    try:
        try:
            pool.submit_nowait("first", None)
        except MemoryError:
            pass
        else:
            raise AssertionError("the MemoryError was swallowed")
        stats = pool.statistics()
        assert stats.workers == 0 and stats.queued == 0
        assert pool.submit_nowait("second", None)
        assert done.acquire(timeout=IO_TIMEOUT)
    finally:
        assert pool.close(timeout=IO_TIMEOUT)
