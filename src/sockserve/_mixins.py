"""Concurrency mix-ins (a thread or a process per request) and the ready-made servers.

A mix-in must come before the server class in the bases, as in the stdlib:
``class S(ThreadingMixIn, TCPServer)``.  Written the other way round the stdlib silently
serves one request at a time; here defining such a class warns.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import threading
import warnings
from typing import TYPE_CHECKING, Any

from ._connections import ConnectionRegistry
from ._server import BaseServer, TCPServer, UDPServer
from .stats import DrainReport

# Mix-ins are used with a server class; type-check them as if they had it as base.
if TYPE_CHECKING:
    _ServerBase = BaseServer
else:
    _ServerBase = object


class _ConcurrencyMixIn(_ServerBase):
    """Warns when a subclass lists the mix-in after the server class (a silent no-op).

    ``_sockserve_forked()`` runs first thing in a forked worker (``PreForkMixIn``): a
    mix-in drops there what belongs to the parent (its pool, its locks).
    """

    # Handlers run off the loop's thread: a connection whose TLS handshake completes
    # just after the loop stopped can still be handed over (see BaseServer).
    _sockserve_handshake_grace_on_stop = 1.0

    def _sockserve_forked(self) -> None:
        """In a worker just forked: let go of the parent's threads and locks."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "process_request", None) is BaseServer.process_request:
            warnings.warn(
                f"{cls.__qualname__} lists its concurrency mix-in after the server class, "
                "so the mix-in's process_request() is never used and requests are served "
                "one at a time; put the mix-in first",
                RuntimeWarning, stacklevel=3,
            )


def run_request(server: BaseServer, request: Any, client_address: Any) -> None:
    """A request's whole life away from the loop: handler, error report, shutdown."""
    try:
        server.finish_request(request, client_address)
    except Exception:
        server.handle_error(request, client_address)
    finally:
        server._sockserve_end(request)


if hasattr(os, "fork"):
    # What a ForkingMixIn child writes to its parent as it ends its connection: its pid
    # (4 bytes, below PIPE_BUF: the writes of several children never mix).
    DONE = struct.Struct("i")

    class ForkingMixIn(_ConcurrencyMixIn):
        """Serve each request in a new child process (``os.fork()``).

        At most ``max_children`` children run at once; the loop reaps exited children
        after every request and every ``timeout`` seconds, so none stays a zombie.
        """

        timeout: float | None = 300
        active_children: set[int] | None = None
        max_children = 40
        # If true, server_close() waits until all child processes complete.
        block_on_close = True
        # While a drain waits for the children's connections, or the loop waits at
        # max_connections for a child to exit: how often it reaps.
        _sockserve_reap_interval = 0.05
        _sockserve_capacity_poll = _sockserve_reap_interval
        # pid -> the registry's entry for the connection that child serves: counted
        # by the limits until the child is reaped, and cut through the child.
        _sockserve_child_connections: dict[int, ChildConnection] | None = None
        # A child writes its pid (DONE) here as it ends its connection.
        _sockserve_done_pipe: tuple[int, int] | None = None

        def collect_children(self, *, blocking: bool = False) -> None:
            """Reap exited children; above ``max_children``, wait until one exits."""
            self._sockserve_read_done()
            if self.active_children is None:
                return
            # Over the limit, waitpid(-1) reaps any exited child in one call per child;
            # it may reap a child we did not fork, so only do it when we must.
            while len(self.active_children) >= self.max_children:
                try:
                    pid, _ = os.waitpid(-1, 0)
                    self._sockserve_child_ended(pid)
                except ChildProcessError:
                    for pid in self.active_children.copy():  # no children left at all
                        self._sockserve_child_ended(pid)
                except OSError:
                    break
            for pid in self.active_children.copy():
                try:
                    reaped, _ = os.waitpid(pid, 0 if blocking else os.WNOHANG)
                    if reaped:  # 0: still running
                        self._sockserve_child_ended(reaped)
                except ChildProcessError:
                    self._sockserve_child_ended(pid)  # somebody else reaped it
                except OSError:
                    pass

        def _sockserve_child_ended(self, pid: int) -> None:
            if self.active_children is not None:
                self.active_children.discard(pid)
            entry = (self._sockserve_child_connections or {}).pop(pid, None)
            if entry is not None:
                self._sockserve_connections.release(entry)
                entry.close()

        def _sockserve_reclaim(self) -> bool:
            self.collect_children()  # ended connections, exited children: free places
            return True

        def _sockserve_has_capacity(self) -> bool:
            # Children free their place by ending, which nothing announces: look first.
            if super()._sockserve_has_capacity():
                return True
            self._sockserve_reclaim()
            return super()._sockserve_has_capacity()

        def _sockserve_read_done(self) -> None:
            """Release the connections the children have said they ended."""
            pipe = self._sockserve_done_pipe
            entries = self._sockserve_child_connections or {}
            while pipe is not None:
                try:
                    data = os.read(pipe[0], DONE.size * 256)
                except (BlockingIOError, InterruptedError):
                    return
                if not data:
                    return
                for (pid,) in DONE.iter_unpack(data):
                    entry = entries.get(pid)  # kept until reaped: it holds the pidfd
                    if entry is not None:
                        self._sockserve_connections.release(entry)

        def _sockserve_finish_connections(self, timeout: float | None,
                                          counts_before: tuple[int, int] | None = None
                                          ) -> DrainReport:
            # A child's connection is released when the child is reaped: reap meanwhile.
            done = threading.Event()

            def reap() -> None:
                while not done.wait(self._sockserve_reap_interval):
                    self._sockserve_reclaim()

            reaper = threading.Thread(target=reap, name="sockserve-reap", daemon=True)
            reaper.start()
            try:
                return super()._sockserve_finish_connections(timeout, counts_before)
            finally:
                done.set()
                reaper.join()

        def handle_timeout(self) -> None:
            """Reap children after ``timeout`` seconds of inactivity."""
            self.collect_children()

        def service_actions(self) -> None:
            """Reap children on every turn of ``serve_forever()``."""
            self.collect_children()

        def process_request(self, request: Any, client_address: Any) -> None:
            """Fork; the child serves the request and exits, the parent closes its copy."""
            # Reap first: under handle_request() alone nothing else may (each exited
            # child holds a registry entry and a pidfd until then).
            self.collect_children()
            if isinstance(request, socket.socket) and self._sockserve_done_pipe is None:
                self._sockserve_done_pipe = os.pipe()
                for end in self._sockserve_done_pipe:  # a full pipe never holds a child
                    os.set_blocking(end, False)
            pid = os.fork()
            if pid:
                if self.active_children is None:
                    self.active_children = set()
                self.active_children.add(pid)
                self._sockserve_hand_to_child(pid, request)
                self.close_request(request)
                return
            # The child must never return into the server loop: os._exit() in finally.
            status = 1
            try:
                # Another thread may have held the registry's lock across the fork.
                self._sockserve_connections = ConnectionRegistry()
                for entry in (self._sockserve_child_connections or {}).values():
                    entry.close()  # its siblings' pidfds
                self._sockserve_child_connections = None
                self.finish_request(request, client_address)
                status = 0
            except Exception:
                self.handle_error(request, client_address)
            finally:
                try:
                    # With the stdlib's quick shutdown_request(), say so before the
                    # client sees the end: the parent, asked about a limit by that
                    # client's next connection, finds this first.  An override may
                    # take its time (a lingering close): then only once it is done.
                    quick = _ends_quickly(self)
                    if quick:
                        self._sockserve_say_done()
                    self._sockserve_end(request)
                    if not quick:
                        self._sockserve_say_done()
                finally:
                    os._exit(status)

        def _sockserve_say_done(self) -> None:
            """In a child: tell the parent that its connection has ended."""
            if self._sockserve_done_pipe is not None:
                # Full: the parent has not read for a while; reaping frees the place.
                with contextlib.suppress(OSError):
                    os.write(self._sockserve_done_pipe[1], DONE.pack(os.getpid()))

        def _sockserve_hand_to_child(self, pid: int, request: Any) -> None:
            """The connection is the child *pid*'s now (stream servers): its registry
            entry stands for it until the child is reaped."""
            if not isinstance(request, socket.socket):
                return  # a datagram: no connection
            entry = ChildConnection(pid)
            if self._sockserve_child_connections is None:
                self._sockserve_child_connections = {}
            self._sockserve_child_connections[pid] = entry
            self._sockserve_connections.replace(request, entry)

        def server_close(self) -> None:
            super().server_close()
            self.collect_children(blocking=self.block_on_close)
            # Children left running (block_on_close = False) are on their own now.
            entries, self._sockserve_child_connections = self._sockserve_child_connections, {}
            for entry in (entries or {}).values():
                self._sockserve_connections.release(entry)
                entry.close()
            pipe, self._sockserve_done_pipe = self._sockserve_done_pipe, None
            for fd in pipe or ():
                os.close(fd)

    def _ends_quickly(server: Any) -> bool:
        """Whether *server* ends a connection with the stdlib's own hooks (shut down,
        close), not overrides that may take their time."""
        cls = type(server)
        return cls.shutdown_request is TCPServer.shutdown_request and \
            cls.close_request is TCPServer.close_request

    class ChildConnection:
        """A connection a ``ForkingMixIn`` child serves, as the parent's registry holds
        it.  The parent keeps no descriptor of it (the client sees the connection end
        when the child closes it, as in the stdlib), so ``shutdown()``, which a drain's
        cut calls, ends the child instead (SIGKILL), and the connection with it."""

        __slots__ = ("pid", "_pidfd", "_gone")

        def __init__(self, pid: int) -> None:
            self.pid = pid
            # A pidfd names this process and no other, even once it is reaped and its
            # pid reused (Linux 5.3+); elsewhere the pid, while it is not reaped.
            self._pidfd: int | None = None
            self._gone = False
            if hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal"):
                try:
                    self._pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    self._gone = True  # ended and reaped already: never signal its pid
                except OSError:
                    pass  # a kernel without pidfds

        def shutdown(self, how: int) -> None:
            if self._gone:
                return
            try:
                # SIGKILL: whatever SIGTERM handler the child inherited, it ends.
                if self._pidfd is not None:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                else:
                    os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass  # it has ended (or its pidfd is closed: it was reaped)

        def close(self) -> None:
            """The child is reaped: let its pidfd go."""
            pidfd, self._pidfd = self._pidfd, None
            if pidfd is not None:
                os.close(pidfd)




class _RunningThreads:
    """The non-daemon request threads still running, for server_close() to join.

    Each thread removes itself when it ends, so a finished request leaves nothing
    behind (the stdlib's list held finished threads until the next request came).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()

    def append(self, thread: threading.Thread) -> None:
        if not thread.daemon:
            with self._lock:
                self._threads.add(thread)

    def discard(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.discard(thread)

    def join(self) -> None:
        while True:
            with self._lock:
                if not self._threads:
                    return
                thread = self._threads.pop()
            thread.join()

    def __len__(self) -> int:
        return len(self._threads)


class _NoThreads:
    """Stands in for _RunningThreads when ``block_on_close`` is false."""

    def append(self, thread: threading.Thread) -> None:
        pass

    def discard(self, thread: threading.Thread) -> None:
        pass

    def join(self) -> None:
        pass

    def __len__(self) -> int:
        return 0


class ThreadingMixIn(_ConcurrencyMixIn):
    """Serve each request in a new thread."""

    # Daemon threads do not keep the process alive and are not joined on close.
    daemon_threads = False
    # If true, server_close() waits until all non-daemon threads terminate.
    block_on_close = True
    _threads: _RunningThreads | _NoThreads = _NoThreads()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one request on the current thread, reporting errors via handle_error()."""
        run_request(self, request, client_address)

    def _request_thread_main(self, request: Any, client_address: Any) -> None:
        # Bookkeeping lives here, not in process_request_thread(), which subclasses
        # override: the thread stays joinable until everything it runs has returned.
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._threads.discard(threading.current_thread())

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a thread that serves the request."""
        if self.block_on_close:
            self.__dict__.setdefault("_threads", _RunningThreads())
        thread = threading.Thread(target=self._request_thread_main,
                                  args=(request, client_address))
        thread.daemon = self.daemon_threads
        self._threads.append(thread)
        try:
            thread.start()
        except BaseException:
            self._threads.discard(thread)
            raise

    def server_close(self) -> None:
        super().server_close()
        self._threads.join()


if hasattr(os, "fork"):

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        pass

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        pass


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    pass


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    pass


if hasattr(socket, "AF_UNIX"):
    from ._server import UnixDatagramServer, UnixStreamServer

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        pass

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        pass

    if hasattr(os, "fork"):

        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            pass

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            pass
