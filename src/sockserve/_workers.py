"""Mix-ins with a fixed number of workers: ``ThreadPoolMixIn`` (threads) and the
ready-made pool servers.  The work itself is done by ``concurrency.pool.WorkerPool``.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
from typing import Any

from ._mixins import _ConcurrencyMixIn, run_request
from ._server import TCPServer, UDPServer
from .concurrency.pool import WorkerPool
from .stats import ServerStatistics

logger = logging.getLogger("sockserve.pool")


class ThreadPoolMixIn(_ConcurrencyMixIn):
    """Serve requests on a bounded pool of threads.

    At most ``max_workers`` threads run handlers and at most ``max_queue`` accepted
    requests wait for one.  When both are full the ``overload`` policy applies:

    - ``"pause"`` (default): stop accepting; new clients wait in the kernel backlog
      (up to ``request_queue_size``) and are accepted as soon as a worker is free.
    - ``"reject"``: accept, send ``busy_reply`` if set, close, and count it.

    ``set_max_workers()`` resizes the pool at run time.
    """

    max_workers = 16
    max_queue = 64
    # Daemon workers do not keep the process alive; server_close() still stops them.
    daemon_threads = False
    # If true, server_close() waits for running and queued requests to finish.
    block_on_close = True

    _pool_instance: WorkerPool | None = None
    _pool_lock = threading.Lock()

    @property
    def pool(self) -> WorkerPool:
        """The server's worker pool, made on first use with the current settings."""
        pool = self._pool_instance
        if pool is None:
            with self._pool_lock:
                if self._pool_instance is None:
                    if self.overload not in ("pause", "reject"):
                        raise ValueError(f"unknown overload policy {self.overload!r}")
                    self._pool_instance = WorkerPool(
                        self.process_request_thread, max_workers=self.max_workers,
                        max_queue=self.max_queue, on_capacity=self._sockserve_wake,
                        daemon=self.daemon_threads, name=f"{type(self).__name__}-worker")
                pool = self._pool_instance
        return pool

    def _sockserve_forked(self) -> None:
        # A pool the parent made (its statistics() makes one) has no threads here, and
        # its locks may have been copied held by a thread of the parent's.
        self._pool_instance = None
        self._pool_lock = threading.Lock()
        super()._sockserve_forked()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one request on a worker, reporting errors via handle_error()."""
        run_request(self, request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Queue the request for a worker, or apply the overload policy."""
        if self.overload == "pause":
            # serve_forever() accepts only while there is room; a request it accepted
            # anyway (a resize or a drain's backlog in between) is queued past
            # max_queue, never waited for: the loop must not stall.  Any other caller
            # (handle_request(), the application's own thread) waits for room.
            self.pool.submit(request, client_address, wait=not self._sockserve_on_loop_thread())
        elif not self.pool.submit_nowait(request, client_address):
            self.reject_request(request, client_address, "thread pool full")

    def _sockserve_has_capacity(self) -> bool:
        # Requests still in their TLS handshake will need a slot too: keep it for them,
        # once their client has spoken (an idle connection must not hold everyone up).
        return super()._sockserve_has_capacity() and (
            self.overload != "pause"
            or self.pool.has_capacity(reserve=self._sockserve_preparing_spoken()))

    def scale(self, delta: int) -> None:
        """One more or fewer worker thread (never fewer than one)."""
        self.set_max_workers(max(1, self.max_workers + delta))
        logger.info("pool resized to %d threads", self.max_workers)

    def set_max_workers(self, max_workers: int) -> None:
        """Change the number of worker threads while serving."""
        self.max_workers = max_workers
        self.pool.resize(max_workers)

    def statistics(self) -> ServerStatistics:
        return dataclasses.replace(super().statistics(), pool=self.pool.statistics())

    def server_close(self) -> None:
        pool = self._pool_instance
        if pool is not None and getattr(self, "socket_type", None) == socket.SOCK_DGRAM:
            # Datagram handlers reply through the server's socket: close it after them.
            pool.close(wait=self.block_on_close)
        super().server_close()
        if pool is not None:
            pool.close(wait=self.block_on_close)


class ThreadPoolTCPServer(ThreadPoolMixIn, TCPServer):
    pass


class ThreadPoolUDPServer(ThreadPoolMixIn, UDPServer):
    pass


if hasattr(socket, "AF_UNIX"):
    from ._server import UnixDatagramServer, UnixStreamServer

    class ThreadPoolUnixStreamServer(ThreadPoolMixIn, UnixStreamServer):
        pass

    class ThreadPoolUnixDatagramServer(ThreadPoolMixIn, UnixDatagramServer):
        pass
