"""Run a server as a service: signals, graceful drain, reload, zero-downtime restart.

``run(server)`` serves in a background thread while the calling thread — the main
thread, before any other thread starts — waits for signals with ``sigtimedwait()``.
The signals are blocked rather than handled, so no code runs inside a signal handler
and threads the server starts later inherit the block (the signal stays pending for
``sigtimedwait()``).  What each signal does:

=========  ===============================================================
SIGTERM,   graceful drain (``server.drain(drain_timeout)``); a second one stops at
SIGINT     once (connections cut, pre-forked workers killed)
SIGHUP     reload: ``reload()`` callback (e.g. certificates), then
           ``server.reload()`` (pre-fork: replace every worker)
SIGTTIN    one more worker process (pre-fork) or pool thread
SIGTTOU    one fewer
SIGUSR2    zero-downtime restart: start a new copy of this program that inherits
           the listening sockets, wait until it serves, then drain this one
=========  ===============================================================

The previous signal mask is restored on return.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ._base import BaseServer
from .stats import DrainReport

logger = logging.getLogger("sockserve.runner")

HANDLED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN,
                             signal.SIGTTOU, signal.SIGUSR2})
# How often the signal wait also checks whether the server stopped by itself.
LIVENESS_CHECK = 0.2
# A restarted copy that has not reported ready by then is killed; this one keeps serving.
RESTART_READY_TIMEOUT = 30.0

# The environment a restarted copy finds: the inherited listening descriptors
# (comma-separated), and where to report that it is serving.
ENV_LISTEN_FD = "SOCKSERVE_LISTEN_FD"
# systemd passes activated sockets from descriptor 3 on (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3
ENV_READY_FD = "SOCKSERVE_READY_FD"


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

    Resource handling: the server is closed and the signal mask restored on return.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    loop = threading.Thread(target=server.serve_forever, args=(poll_interval,),
                            name="sockserve-serve", daemon=True)
    drainer: threading.Thread | None = None
    reports: list[DrainReport] = []
    try:
        loop.start()
        notify_ready()
        while loop.is_alive() or (drainer is not None and drainer.is_alive()):
            info = signal.sigtimedwait(HANDLED_SIGNALS, LIVENESS_CHECK)
            if info is None:
                continue
            signum = info.si_signo
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
                if signum == signal.SIGUSR2 and not _restart(server, restart_argv):
                    continue
                if drainer is None:
                    logger.info("%s: draining (up to %s s)", signal.Signals(signum).name,
                                drain_timeout)
                    drainer = threading.Thread(
                        target=lambda: reports.append(server.drain(drain_timeout)),
                        name="sockserve-drain", daemon=True)
                    drainer.start()
                else:
                    logger.warning("%s again: stopping now", signal.Signals(signum).name)
                    server.stop_now()
            elif signum == signal.SIGHUP:
                logger.info("SIGHUP: reloading")
                if reload is not None:
                    reload()
                server.reload()
            else:
                server.scale(+1 if signum == signal.SIGTTIN else -1)
    finally:
        if loop.is_alive():
            server.shutdown()
        loop.join()
        server.server_close()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return reports[0] if reports else None


def _restart(server: Any, argv: Sequence[str] | None) -> bool:
    """Start a copy of this program on the same listening socket; True once it serves.

    The copy inherits the listening descriptor (``pass_fds``) and a pipe on which it
    reports readiness.  Both processes accept on the one socket meanwhile, so no
    connection attempt is refused; then this process drains.
    """
    # sys.orig_argv keeps "-m sockserve", which sys.argv has already turned into a path.
    command = list(argv) if argv is not None else [sys.executable, *sys.orig_argv[1:]]
    listen_fds = [sock.fileno() for sock in (server.socket, *server.extra_sockets)]
    ready_read, ready_write = os.pipe()
    env = dict(os.environ, **{ENV_LISTEN_FD: ",".join(map(str, listen_fds)),
                              ENV_READY_FD: str(ready_write)})
    logger.info("SIGUSR2: starting %s", " ".join(command))
    try:
        child = subprocess.Popen(command, env=env, pass_fds=(*listen_fds, ready_write))
    except OSError as exc:
        logger.error("restart failed: %s; still serving", exc)
        os.close(ready_read)
        os.close(ready_write)
        return False
    os.close(ready_write)
    try:
        import select
        readable, _, _ = select.select([ready_read], [], [], RESTART_READY_TIMEOUT)
        ready = bool(readable) and os.read(ready_read, 1) == b"1"
    finally:
        os.close(ready_read)
    if not ready:
        logger.error("restarted process %d did not become ready; killing it, still serving",
                     child.pid)
        child.kill()
        child.wait()
        return False
    logger.info("restarted process %d is serving; draining this one", child.pid)
    server.disown_socket_file()  # the new process serves it now
    return True


def inherited_listen_fds() -> list[int]:
    """Listening descriptors this process was given: by a restarting predecessor, or
    by systemd socket activation (sd_listen_fds(3): LISTEN_FDS descriptors from 3 on,
    meant for us only if LISTEN_PID is our pid).  Empty if none; the variables are
    removed, as sd_listen_fds(unset_environment=1) does, so children do not see them."""
    value = os.environ.pop(ENV_LISTEN_FD, "")
    if value:
        return [int(fd) for fd in value.split(",") if fd]
    listen_pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS", "0")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if listen_pid != str(os.getpid()) or not count.isdigit():
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))


def notify_ready() -> None:
    """Tell a restarting predecessor that this process serves (once; no-op otherwise)."""
    value = os.environ.pop(ENV_READY_FD, None)
    if value is None:
        return
    fd = int(value)
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)
