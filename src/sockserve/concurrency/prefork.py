"""Worker processes under a supervisor: fork, watch, replace, stop.

The supervisor knows nothing about sockets: it forks ``target`` N times and keeps N
running.  It watches children through pidfds (Linux 5.3+, ``os.pidfd_open``), which a
selector can wait on from any thread, so no SIGCHLD handler is needed and the parent
may run in a non-main thread; elsewhere it polls ``waitpid(WNOHANG)``.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("sockserve.prefork")

# A worker that dies sooner than this after its start counts as a crash loop, and its
# replacement is delayed (doubling up to RESPAWN_DELAY_MAX) so that a worker which
# cannot start does not turn into a fork bomb (gunicorn's arbiter halts instead).
QUICK_DEATH = 1.0
RESPAWN_DELAY_FIRST = 0.1
RESPAWN_DELAY_MAX = 2.0
# How often to poll for exited children where pidfds are not available.
POLL_WITHOUT_PIDFD = 0.05
# The signals that ask a worker to stop.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# Signals that mean something to the supervisor under the runner (reload, scale,
# restart), and nothing to a worker: a worker that gets one (its whole process group
# signalled) goes on serving.
SUPERVISOR_SIGNALS = frozenset({signal.SIGHUP, signal.SIGUSR2, signal.SIGTTIN,
                                signal.SIGTTOU})
# Blocked across fork() until the new worker has its own handlers for them: until
# then it has the parent's, or (under the runner) the default ones, which end it.
BLOCKED_WHILE_STARTING = STOP_SIGNALS | SUPERVISOR_SIGNALS


# prctl(2): the signal a process gets when the thread that forked it ends.
PR_SET_PDEATHSIG = 1


def find_prctl() -> Callable[..., int] | None:
    """libc's prctl(2), looked up once in the supervisor, before it forks (a lookup in
    a child of a threaded process could wait on a lock a thread held at the fork).
    None off Linux, or without ctypes."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    return prctl


def end_with_parent(prctl: Callable[..., int] | None, parent: int) -> None:
    """In a new worker: have the kernel send it SIGTERM when the supervisor dies, even
    by SIGKILL, so that no worker serves on as an orphan (with *prctl*, on Linux).

    The SIGTERM waits, blocked, until the worker's handler is in place
    (``Supervisor.spawn``), and then stops it gracefully.  The fork happens on the
    supervisor's loop thread, whose end means the workers are being stopped anyway.
    """
    if prctl is not None and prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0 \
            and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # it died before the call above


def unblock_stop_signals() -> None:
    """Called by a worker once its handlers are in place (see ``Supervisor.spawn``)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED_WHILE_STARTING)


@dataclass(frozen=True)
class SupervisorStatistics:
    workers: int  # alive now
    target: int  # how many should be alive
    spawned: int  # forks so far, replacements included
    exited: int  # clean exits (exit status 0, e.g. recycled after max_requests)
    crashed: int  # any other end: non-zero status or killed by a signal


@dataclass
class _Worker:
    pid: int
    started: float
    pidfd: int | None
    place: Any = None  # what place() chose for it (e.g. a CPU)
    stopping: bool = False  # asked to stop by shrink(); no longer counts toward target
    serving: bool = False  # it said so (mark_serving())
    retired: bool = False  # stopping by itself after max_requests, already replaced
    kill_at: float | None = None  # stopping: SIGKILL if still alive then


class Supervisor:
    """Keeps ``target`` children running ``run_worker(place)``; the child never returns.

    Args:
        run_worker: called in each new child with its place; must end the process
            (``os._exit``).
        target: number of workers.
        place: called in the parent before each fork with the places of the workers
            serving now; returns the new worker's (e.g. the least used CPU).
    """

    def __init__(self, run_worker: Callable[[Any], None], target: int,
                 place: Callable[[list[Any]], Any] = lambda taken: None) -> None:
        if target < 1:
            raise ValueError("need at least one worker")
        self._run_worker = run_worker
        self._place = place
        self.target = target
        self._workers: dict[int, _Worker] = {}
        self._spawned = self._exited = self._crashed = 0
        self._respawn_delay = 0.0
        self._respawn_at = 0.0
        self._to_replace: set[int] = set()  # pids to replace one by one (reload)
        self._prctl = find_prctl()
        # How long a worker asked to stop (replaced, surplus, retired) may take before
        # it is killed; None: for ever.  The server keeps it up to date.
        self.stop_grace: float | None = None

    # -- running ---------------------------------------------------------------------

    def spawn(self) -> int:
        """Fork one worker; returns its pid (in the parent).

        The stop signals (and the supervisor's, SIGHUP and the like) stay blocked in
        the child until ``run_worker()`` has set its own handlers and unblocks them
        (``unblock_stop_signals()``): a signal that comes while the child starts is
        then handled, not fatal, and never handled by a copy of the parent's handlers.
        """
        place = self._place([w.place for w in self._workers.values() if not w.stopping])
        parent = os.getpid()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_WHILE_STARTING)
        pid = -1
        try:
            pid = os.fork()
            if pid == 0:
                try:
                    for sibling in self._workers.values():  # the parent's handles on them
                        if sibling.pidfd is not None:
                            os.close(sibling.pidfd)
                    end_with_parent(self._prctl, parent)
                    self._run_worker(place)
                finally:
                    os._exit(70)  # EX_SOFTWARE: run_worker() returned or raised
        finally:
            if pid != 0:  # the parent, whether fork() worked or not
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pidfd = None  # e.g. seccomp or an old kernel: poll instead
        self._workers[pid] = _Worker(pid, time.monotonic(), pidfd, place)
        self._spawned += 1
        return pid

    def fill(self) -> None:
        """Start workers up to ``target`` (respecting the crash-loop delay).  A fork that
        fails (EAGAIN at the process limit, ENOMEM) is retried after the same delay."""
        if time.monotonic() < self._respawn_at:
            return
        while self._serving() < self.target:
            try:
                self.spawn()
            except OSError as exc:
                logger.error("cannot fork a worker: %s", exc)
                self._back_off()
                return

    def _serving(self) -> int:
        return sum(not worker.stopping for worker in self._workers.values())

    def register(self, selector: selectors.BaseSelector) -> float | None:
        """Put every worker's pidfd in *selector* (data: "worker").

        Returns:
            The longest the caller may wait before calling ``reap()`` again.
        """
        registered = {key.fd for key in selector.get_map().values() if key.data == "worker"}
        timeout: float | None = None
        for worker in self._workers.values():
            if worker.pidfd is None:
                timeout = POLL_WITHOUT_PIDFD
            elif worker.pidfd not in registered:
                selector.register(worker.pidfd, selectors.EVENT_READ, "worker")
        pending = self._respawn_at - time.monotonic()
        if self._serving() < self.target and pending > 0:
            timeout = pending if timeout is None else min(timeout, pending)
        return timeout

    def reap(self, selector: selectors.BaseSelector | None = None) -> None:
        """Collect exited workers and log how each ended; never blocks."""
        for worker in list(self._workers.values()):
            status: int | None
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                # Reaped elsewhere (waitpid(-1), or SIGCHLD ignored): how it ended is
                # unknown, so it counts as a crash: a worker that cannot start must
                # still be respawned with the back-off, not in a fork storm.
                pid, status = worker.pid, None
            if pid == 0:
                continue
            del self._workers[worker.pid]
            if worker.pidfd is not None:
                if selector is not None and worker.pidfd in selector.get_map():
                    selector.unregister(worker.pidfd)
                os.close(worker.pidfd)
            self._account(worker, status)

    def _account(self, worker: _Worker, status: int | None) -> None:
        lived = time.monotonic() - worker.started
        code = None if status is None else os.waitstatus_to_exitcode(status)
        if code == 0:
            self._exited += 1
            logger.info("worker %d exited after %.1f s", worker.pid, lived)
        else:
            self._crashed += 1
            how = ("ended, reaped by someone else" if code is None
                   else f"killed by signal {-code}" if code < 0
                   else f"exited with status {code}")
            logger.warning("worker %d %s after %.1f s", worker.pid, how, lived)
        if code != 0 and lived < QUICK_DEATH:
            self._back_off()
        else:
            self._respawn_delay = 0.0

    def _back_off(self) -> None:
        """Delay the next fork, doubling the delay each time (up to the maximum)."""
        self._respawn_delay = min(RESPAWN_DELAY_MAX,
                                  (self._respawn_delay * 2) or RESPAWN_DELAY_FIRST)
        self._respawn_at = time.monotonic() + self._respawn_delay

    def shrink(self) -> None:
        """Ask workers above ``target`` to stop gracefully (the newest first)."""
        serving = [w for w in self._workers.values() if not w.stopping]
        serving.sort(key=lambda worker: worker.started, reverse=True)
        for worker in serving[:max(0, len(serving) - self.target)]:
            self._ask_to_stop(worker)

    def mark_serving(self, pid: int) -> None:
        """Worker *pid* has begun to serve."""
        worker = self._workers.get(pid)
        if worker is not None:
            worker.serving = True

    def serving(self) -> int:
        """How many workers serve now (started serving, not asked to stop)."""
        # list(): read from other threads (the runner) while the loop adds and removes.
        return sum(w.serving and not w.stopping for w in list(self._workers.values()))

    def retire(self, pid: int) -> None:
        """Worker *pid* is stopping by itself (it served max_requests) and finishes what
        it has open: it no longer counts toward ``target``, so ``fill()`` starts its
        replacement now rather than when it exits."""
        worker = self._workers.get(pid)
        if worker is not None:
            worker.stopping = worker.retired = True
            worker.kill_at = self._kill_time()
            self._to_replace.discard(pid)

    def replace_all(self) -> None:
        """Replace every worker now running, one at a time (see ``roll()``)."""
        self._to_replace.update(self._workers)

    def roll(self) -> None:
        """Advance a rolling replacement: when no worker is on its way out, ask the next
        old one to stop gracefully; ``fill()`` then starts its replacement at once, so
        the number of workers serving never drops by more than one.  A retired worker
        (``retire()``) finishing its connections does not hold the rotation up."""
        self._to_replace.intersection_update(self._workers)  # forget exited ones
        if not self._to_replace or any(w.stopping and not w.retired
                                       for w in self._workers.values()):
            return
        self._ask_to_stop(self._workers[self._to_replace.pop()])

    def _ask_to_stop(self, worker: _Worker) -> None:
        worker.stopping = True
        worker.kill_at = self._kill_time()
        self._signal(worker.pid, signal.SIGTERM)

    def _kill_time(self) -> float | None:
        return None if self.stop_grace is None else time.monotonic() + self.stop_grace

    def kill_overdue(self) -> float | None:
        """SIGKILL the workers asked to stop that outlived ``stop_grace`` (a handler
        that nothing ends); returns seconds until the next such deadline."""
        now = time.monotonic()
        nearest: float | None = None
        for worker in list(self._workers.values()):
            if worker.kill_at is None:
                continue
            if worker.kill_at <= now:
                worker.kill_at = None
                logger.warning("worker %d did not stop within %.1f s: killing it",
                               worker.pid, self.stop_grace)
                self._signal(worker.pid, signal.SIGKILL)
            elif nearest is None or worker.kill_at - now < nearest:
                nearest = worker.kill_at - now
        return nearest

    def kill_all(self) -> None:
        """SIGKILL every worker (a second stop request: no more waiting)."""
        for pid in list(self._workers):
            self._signal(pid, signal.SIGKILL)

    # -- stopping --------------------------------------------------------------------

    def stop(self, graceful_timeout: float | None) -> None:
        """SIGTERM every worker, wait up to *graceful_timeout* (None: until they end),
        SIGKILL the rest, reap all."""
        self.target = 0
        for pid in list(self._workers):
            self._signal(pid, signal.SIGTERM)
        deadline = None if graceful_timeout is None else time.monotonic() + graceful_timeout
        with selectors.DefaultSelector() as selector:
            while self._workers:
                self.reap(selector)
                remaining = None if deadline is None else deadline - time.monotonic()
                if not self._workers or (remaining is not None and remaining <= 0):
                    break
                poll = self.register(selector)
                selector.select(poll if remaining is None
                                else remaining if poll is None else min(poll, remaining))
        for pid in list(self._workers):
            logger.warning("worker %d did not stop within %.1f s: killing it",
                           pid, graceful_timeout)
            self._signal(pid, signal.SIGKILL)
        while self._workers:
            for worker in list(self._workers.values()):
                try:
                    os.waitpid(worker.pid, 0)  # SIGKILL cannot be ignored: this returns
                except ChildProcessError:
                    pass
                del self._workers[worker.pid]
                if worker.pidfd is not None:
                    os.close(worker.pidfd)
                self._crashed += 1

    def _signal(self, pid: int, signum: int) -> None:
        worker = self._workers.get(pid)
        try:
            if worker is not None and worker.pidfd is not None:
                signal.pidfd_send_signal(worker.pidfd, signum)  # cannot hit a reused pid
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            pass  # already gone; reap() will account for it

    def pids(self) -> list[int]:
        """The workers alive now."""
        return list(self._workers)

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(workers=len(self._workers), target=self.target,
                                    spawned=self._spawned, exited=self._exited,
                                    crashed=self._crashed)
