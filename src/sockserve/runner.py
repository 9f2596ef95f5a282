"""Run a server as a service: signals, graceful drain, reload, zero-downtime restart.

``run(server)`` serves in a background thread while the calling thread — the main
thread — waits for signals.  Their handlers do nothing; the signal numbers arrive
through a socket (``signal.set_wakeup_fd``), so no server code runs inside a signal
handler, and no signal is blocked: threads the server starts, and the processes they
start, get the usual signal behaviour.  What each signal does:

=========  ===============================================================
SIGTERM,   graceful drain (``server.drain(drain_timeout)``); a second one stops at
SIGINT     once (connections cut, pre-forked workers killed), and if handlers still
           run 2 s later (the cut cannot reach one that does not use its socket),
           the process exits without them
SIGHUP     reload: ``reload()`` callback (e.g. certificates), then
           ``server.reload()`` (pre-fork: replace every worker); a failure is
           logged and serving goes on as before
SIGTTIN    one more worker process (pre-fork) or pool thread
SIGTTOU    one fewer
SIGUSR2    zero-downtime restart: start a new copy of this program that inherits
           the listening sockets, wait until it serves, then drain this one
=========  ===============================================================

The previous handlers are restored on return.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from ._base import BaseServer
from .errors import SockServeError
from .stats import DrainReport

logger = logging.getLogger("sockserve.runner")

HANDLED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN,
                             signal.SIGTTOU, signal.SIGUSR2})
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# How often the signal wait also checks whether the server stopped by itself, or has
# begun to serve (to tell a restarting predecessor).
LIVENESS_CHECK = 0.2
# A restarted copy that has not reported ready by then is killed; this one keeps serving.
RESTART_READY_TIMEOUT = 30.0
# After a second stop signal has cut every connection, how long handlers get to return
# before the process exits without them: a handler that does not touch its socket (a
# computation, a wait on something else) would otherwise keep it alive, and threads
# cannot be killed.
STOP_NOW_GRACE = 2.0

# The environment a restarted copy finds: the inherited listening descriptors
# (comma-separated), and where to report that it is serving.
ENV_LISTEN_FD = "SOCKSERVE_LISTEN_FD"
# systemd passes activated sockets from descriptor 3 on (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3
ENV_READY_FD = "SOCKSERVE_READY_FD"


class Signals:
    """The signals *signums*, received as numbers on a socket while in use (a ``with``
    block, in the main thread): their Python handlers do nothing, and the C-level
    handler writes each number to the socket (``signal.set_wakeup_fd``)."""

    def __init__(self, signums: Iterable[int]) -> None:
        self._signums = frozenset(signums)
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._queue: collections.deque[int] = collections.deque()
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1

    def __enter__(self) -> Signals:
        global _active
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(),
                                                 warn_on_full_buffer=False)
        for signum in self._signums:
            self._previous[signum] = signal.signal(signum, _noted)
        _active = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _active
        _active = None
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._reader.close()
        self._writer.close()

    def fileno(self) -> int:
        return self._reader.fileno()

    def next(self, timeout: float | None, among: frozenset[int] | None = None) -> int | None:
        """The next signal received (of *among*, if given; the others stay queued),
        waiting up to *timeout* seconds; None if none came."""
        found = self._take(among)
        if found is None:
            select.select([self._reader], [], [], timeout)
            found = self._take(among)
        return found

    def _take(self, among: frozenset[int] | None) -> int | None:
        while True:
            try:
                data = self._reader.recv(256)
            except (BlockingIOError, InterruptedError):
                break
            self._queue.extend(signum for signum in data if signum in self._signums)
        for signum in self._queue:
            if among is None or signum in among:
                self._queue.remove(signum)
                return signum
        return None


def _noted(signum: int, frame: object) -> None:
    """The Python-level handler: nothing to do, the number is on the wake-up socket."""


# The Signals in use.  A process forked meanwhile (a ForkingMixIn child, a pre-forked
# worker) gets the handlers it would have had without them: its signals are its own,
# not numbers written into this process's socket.
_active: Signals | None = None


def _after_fork_in_child() -> None:
    global _active
    if _active is not None:
        _active._restore()
        _active = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def run(server: BaseServer, *, drain_timeout: float | None = 30.0,
        reload: Callable[[], None] | None = None,
        restart_argv: Sequence[str] | None = None,
        poll_interval: float = 0.5) -> DrainReport | None:
    """Serve until a stop signal, drain, close.  Must be called from the main thread.

    Args:
        server: a bound server; ``run()`` closes it before returning.
        drain_timeout: how long open connections may finish after SIGTERM/SIGINT.
        reload: called on SIGHUP before ``server.reload()``.
        restart_argv: the command that starts a new copy on SIGUSR2 (default: this
            process's own command line, ``sys.orig_argv``).

    Returns:
        The drain report, or None if the server stopped on its own.

    Raises:
        Whatever ended ``serve_forever()`` (after the server is closed).

    Resource handling: the server is closed and the signal handlers restored on return.
    """
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("run() must be called from the main thread (signals go there)")
    failures: list[BaseException] = []
    reports: list[DrainReport] = []
    stopping_copies: list[subprocess.Popen[bytes]] = []
    if os.environ.get(ENV_READY_FD) is not None:  # a restarted copy: its predecessor
        _share_listeners(server)                  # still takes connections too

    def serve() -> None:
        try:
            server.serve_forever(poll_interval)
        except BaseException as exc:
            failures.append(exc)

    loop = threading.Thread(target=serve, name="sockserve-serve", daemon=True)
    drainer: threading.Thread | None = None
    stop_now = _StopNow(server)
    with Signals(HANDLED_SIGNALS) as signals:
        try:
            loop.start()
            told_ready = False
            while loop.is_alive() or (drainer is not None and drainer.is_alive()):
                if not told_ready and server.is_serving():
                    notify_ready()
                    told_ready = True
                signum = signals.next(LIVENESS_CHECK)
                stop_now.check()
                if signum is None:
                    continue
                name = signal.Signals(signum).name
                if signum == signal.SIGUSR2:
                    if drainer is not None:
                        logger.warning("SIGUSR2 while stopping: ignored")
                        continue
                    signum = _restart(server, restart_argv, signals, stopping_copies)
                    if signum is None:
                        continue  # not restarted: still serving
                    name = signal.Signals(signum).name
                if signum in STOP_SIGNALS or signum == signal.SIGUSR2:
                    if drainer is None:
                        logger.info("%s: draining (up to %s s)", name, drain_timeout)
                        drainer = threading.Thread(
                            target=lambda: reports.append(server.drain(drain_timeout)),
                            name="sockserve-drain", daemon=True)
                        drainer.start()
                    else:
                        logger.warning("%s again: stopping now", name)
                        stop_now()
                elif signum == signal.SIGHUP:
                    logger.info("SIGHUP: reloading")
                    _keep_serving(reload, server.reload)
                else:
                    _keep_serving(lambda: server.scale(+1 if signum == signal.SIGTTIN else -1))
        finally:
            _close(server, loop, signals, stopping_copies, stop_now)
    if failures:
        raise failures[0]
    return reports[0] if reports else None


class _StopNow:
    """A second stop signal: ``server.stop_now()``; and if the server still serves or
    closes ``STOP_NOW_GRACE`` seconds later, the process exits without it."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.deadline: float | None = None

    def __call__(self) -> None:
        self.server.stop_now()
        if self.deadline is None:
            self.deadline = time.monotonic() + STOP_NOW_GRACE

    def check(self) -> None:
        """Called, while the server serves or closes, as signals are waited for."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            message = (f"the server is still running {STOP_NOW_GRACE:g} s after stopping "
                       "now: exiting without waiting for its handlers")
            if not _logged_to_stderr(logger, logging.ERROR):
                # A logging queue's listener, say, would not get to write it.
                try:
                    os.write(2, f"sockserve: {message}\n".encode())
                except OSError:
                    pass
            logger.error("%s", message)
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(1)


def _logged_to_stderr(log: logging.Logger, level: int) -> bool:
    """Whether a record of *level* from *log* is written to stderr as it is logged:
    by a stream handler on stderr it reaches, or by logging's last resort."""
    if not log.isEnabledFor(level):
        return False
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = log
    while current is not None:
        handlers += current.handlers
        current = current.parent if current.propagate else None
    if not handlers:
        handlers = [logging.lastResort] if logging.lastResort is not None else []
    for handler in handlers:
        stream = getattr(handler, "stream", None)
        if type(handler) is logging.StreamHandler or handler is logging.lastResort:
            try:
                on_stderr = stream is sys.stderr or stream.fileno() == 2  # type: ignore[union-attr]
            except (AttributeError, OSError, ValueError):
                on_stderr = False
            if on_stderr and level >= handler.level:
                return True
    return False


def _keep_serving(*actions: Callable[[], None] | None) -> None:
    """Run *actions* in turn; one that fails is logged and serving goes on as before."""
    for action in actions:
        if action is None:
            continue
        try:
            action()
        except Exception:
            logger.exception("failed; still serving as before")
            return


def _close(server: Any, loop: threading.Thread, signals: Signals,
           copies: list[subprocess.Popen[bytes]], stop_now: _StopNow) -> None:
    """Stop serving and close the server, from a thread, while a stop signal still
    means "at once" (closing may wait for connections, or a pool's threads); then wait
    for restarted copies told to stop (a stop signal kills them)."""
    def close() -> None:
        if loop.is_alive():
            server.shutdown()
        loop.join()
        server.server_close()

    if not loop.is_alive():
        logger.info("the server stopped serving; closing it")
    closer = threading.Thread(target=close, name="sockserve-close", daemon=True)
    closer.start()
    while closer.is_alive():
        signum = signals.next(LIVENESS_CHECK)
        stop_now.check()
        if signum in STOP_SIGNALS:
            logger.warning("%s while closing: stopping now", signal.Signals(signum).name)
            stop_now()
    closer.join()
    for copy in copies:
        while copy.poll() is None:
            if signals.next(LIVENESS_CHECK, STOP_SIGNALS) is not None:
                copy.kill()
        logger.info("the new process %d has stopped", copy.pid)


def _share_listeners(server: Any) -> None:
    share = getattr(server, "_sockserve_share_listeners", None)
    if share is not None:
        share()


def _restart(server: Any, argv: Sequence[str] | None, signals: Signals,
             stopping: list[subprocess.Popen[bytes]]) -> int | None:
    """Start a copy of this program on the same listening sockets.

    The copy inherits the listening descriptors (``pass_fds``) and a pipe on which it
    reports that it serves.  Both processes accept on the one socket meanwhile, so no
    connection attempt is refused.

    Returns:
        SIGUSR2 once the copy serves (this process then drains); a stop signal that
        came meanwhile (the copy gets SIGTERM, so it drains what it accepted, and is
        added to *stopping*; this process drains as for any stop); None if the copy
        failed (it is killed; this process serves on).
    """
    # sys.orig_argv keeps "-m sockserve", which sys.argv has already turned into a path.
    command = list(argv) if argv is not None else [sys.executable, *sys.orig_argv[1:]]
    listen_fds = [sock.fileno() for sock in (server.socket, *server.extra_sockets)]
    ready_read, ready_write = os.pipe()
    env = dict(os.environ, **{ENV_LISTEN_FD: ",".join(map(str, listen_fds)),
                              ENV_READY_FD: str(ready_write)})
    logger.info("SIGUSR2: starting %s", " ".join(command))
    _share_listeners(server)  # both processes accept on the sockets until this one drains
    try:
        child = subprocess.Popen(command, env=env, pass_fds=(*listen_fds, ready_write))
    except OSError as exc:
        logger.error("restart failed: %s; still serving", exc)
        os.close(ready_read)
        os.close(ready_write)
        return None
    os.close(ready_write)
    try:
        outcome = _wait_ready(child, ready_read, signals)
    finally:
        os.close(ready_read)
    if outcome == "ready":
        logger.info("restarted process %d is serving; draining this one", child.pid)
        server.disown_socket_file()  # the new process serves it now
        return signal.SIGUSR2
    if isinstance(outcome, int):
        logger.warning("%s during the restart: stopping the new process %d",
                       signal.Signals(outcome).name, child.pid)
        child.terminate()
        stopping.append(child)
        return outcome
    child.kill()
    child.wait()
    logger.error("restarted process %d %s; killed it, still serving", child.pid, outcome)
    return None


def _wait_ready(child: subprocess.Popen[bytes], ready: int, signals: Signals) -> str | int:
    """Wait for *child* to report on *ready*: "ready", what went wrong, or a stop
    signal that came first (other signals stay queued for later)."""
    deadline = time.monotonic() + RESTART_READY_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"did not report ready within {RESTART_READY_TIMEOUT:.0f} s"
        readable, _, _ = select.select([ready, signals.fileno()], [], [],
                                        min(left, LIVENESS_CHECK))
        if ready in readable:
            return "ready" if os.read(ready, 1) == b"1" else "ended before serving"
        stop = signals.next(0, STOP_SIGNALS)
        if stop is not None:
            return stop
        if child.poll() is not None:
            return f"ended before serving (status {child.returncode})"


def inherited_listen_fds() -> list[int]:
    """Listening descriptors this process was given: by a restarting predecessor, or
    by systemd socket activation (sd_listen_fds(3): LISTEN_FDS descriptors from 3 on,
    meant for us only if LISTEN_PID is our pid).  Empty if none; the variables are
    removed, as sd_listen_fds(unset_environment=1) does, so children do not see them."""
    return inherited_listen_sockets().fds


class Inherited(NamedTuple):
    fds: list[int]
    from_restart: bool  # a restarting predecessor's: this process takes their files over


def inherited_listen_sockets() -> Inherited:
    """``inherited_listen_fds()``, and whether they come from a restarting predecessor
    (whose Unix socket files this process then owns) rather than systemd.  The
    descriptors are made non-inheritable, so processes a handler starts do not keep
    the listening sockets open.

    Raises:
        SockServeError: LISTEN_FDS names a descriptor this process was not given.
    """
    ready = os.environ.get(ENV_READY_FD)
    if ready is not None and ready.isdigit():
        os.set_inheritable(int(ready), False)
    value = os.environ.pop(ENV_LISTEN_FD, "")
    if value:
        fds = [int(fd) for fd in value.split(",") if fd]
        from_restart = True
    else:
        listen_pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS", "0")
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
        if listen_pid != str(os.getpid()) or not count.isdigit():
            return Inherited([], False)
        fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
        from_restart = False
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            source = ENV_LISTEN_FD if from_restart else "LISTEN_FDS"
            raise SockServeError(f"{source} names descriptor {fd}, which this process "
                                 f"was not given: {exc.strerror}") from None
    return Inherited(fds, from_restart)


def notify_ready() -> None:
    """Tell a restarting predecessor that this process serves (once; no-op otherwise).
    A predecessor already gone is no reason to stop: this process serves on."""
    value = os.environ.pop(ENV_READY_FD, None)
    if value is None:
        return
    fd = int(value)
    try:
        os.write(fd, b"1")
    except OSError as exc:  # EPIPE: it died meanwhile
        logger.warning("could not tell the restarting process: %s", exc)
    finally:
        os.close(fd)
