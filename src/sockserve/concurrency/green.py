"""A hub thread that runs blocking socket code on greenlets, switching at I/O.

Each connection's handler runs in its own greenlet; its socket is a ``GreenSocket``
whose blocking calls (``recv``, ``sendall``, and the files ``makefile()`` builds on
them) switch to the hub when they would block, and resume when epoll reports the
socket ready.  Unchanged blocking handler code thus serves thousands of connections
from one thread: an idle connection is a socket, a greenlet and its saved stack.

Readiness is edge-triggered and remembered per socket, as nginx does
(``ngx_unix_recv``): a read that returns less than asked for has emptied the kernel's
queue, so the next read waits for the next edge instead of trying a ``recv()`` that
would fail with EAGAIN.  One request then costs one ``recv()`` and one ``send()``.

Only I/O on these sockets cooperates: other blocking calls in a handler (``time.sleep``,
a database driver's socket) stop every connection of the hub while they block.
"""

from __future__ import annotations

import collections
import contextvars
import errno
import heapq
import io
import itertools
import logging
import os
import _socket
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

try:
    from greenlet import getcurrent, greenlet  # type: ignore[import-untyped,unused-ignore]
except ImportError:  # an optional extra: pip install sockserve[green]
    greenlet = None

logger = logging.getLogger("sockserve.green")

# Registered once per socket for both directions; EPOLLRDHUP reports a peer's
# half-close as readable (EOF) even while we only wait to write.
_WATCH = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLPRI \
    | select.EPOLLET if hasattr(select, "epoll") else 0
_READABLE = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR \
    | select.EPOLLPRI if hasattr(select, "epoll") else 0
_WRITABLE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR \
    if hasattr(select, "epoll") else 0
# After these a short read no longer means an empty queue, so every read is tried:
# the peer closed or reset (the FIN waits behind the data a short read returned and
# brings no new edge), or urgent data came (tcp_recvmsg stops at the urgent mark).
_TRY_EVERY_READ = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR | select.EPOLLPRI \
    if hasattr(select, "epoll") else 0
_TIMED_OUT = object()  # what the hub hands a waiter whose deadline passed
# Greenlets kept waiting for the next connection when theirs ends.
IDLE_GREENLETS = 64
# The longest wait of one epoll/poll call: they take at most INT_MAX milliseconds
# (about 24.8 days), and a read without an idle limit waits "for ever" (a year,
# _streams.FOREVER).  A longer wait is made of several.
MAX_POLL_WAIT = 86400.0

_recv = socket.socket.recv
_recv_into = socket.socket.recv_into
_send = socket.socket.send
_read1 = io.BufferedReader.read1
# A socket's family and type as plain ints: socket.socket's properties convert them to
# enum members in Python code (1 µs for both, on every connection).
_family = _socket.socket.family.__get__
_type = _socket.socket.type.__get__
# Plain ints: socket's MSG_* are IntFlag members, and `flags & socket.MSG_DONTWAIT`
# runs enum code (0.6 µs, 5 % of a small request on a green socket).
_DONTWAIT = int(getattr(socket, "MSG_DONTWAIT", 0))
_WAITALL = int(getattr(socket, "MSG_WAITALL", 0))


def require_greenlet() -> None:
    """Raise a clear error where the optional greenlet package is missing."""
    if greenlet is None:
        raise RuntimeError("the green model needs the greenlet package: "
                           "pip install 'sockserve[green]'")
    if not hasattr(select, "epoll"):
        raise RuntimeError("the green model needs epoll (Linux)")


class _Timers:
    """Deadlines of waiting greenlets, soonest first.

    A cancelled entry stays in the heap until it reaches the top, so when most of the
    heap is cancelled it is rebuilt (as asyncio's loop does): otherwise one long live
    timer at the top would pin every later cancelled one (guarded files set a timeout
    on every call, so each wait adds one).
    """

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._order = itertools.count()
        self._cancelled = 0

    def add(self, deadline: float, waiter: Any) -> list[Any]:
        entry = [deadline, next(self._order), waiter]
        heapq.heappush(self._heap, entry)
        return entry

    def __len__(self) -> int:
        return len(self._heap)

    def cancel(self, entry: list[Any]) -> None:
        if entry[2] is not None:
            entry[2] = None
            self._cancelled += 1
            if self._cancelled > 100 and self._cancelled * 2 > len(self._heap):
                self._heap = [live for live in self._heap if live[2] is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def next_timeout(self, now: float) -> float:
        """Seconds until the soonest deadline, -1 for none (epoll's "forever")."""
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        return min(MAX_POLL_WAIT, max(0.0, heap[0][0] - now)) if heap else -1

    def pop_due(self, now: float) -> list[Any]:
        due = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if entry[2] is None:
                self._cancelled -= 1
            else:
                due.append(entry[2])
                entry[2] = None  # out of the heap: cancel() must not count it
        return due


class Hub:
    """One thread, one epoll, a greenlet per connection.

    ``submit()`` (any thread) hands over an accepted socket and the function that
    serves it; the hub thread adopts the socket as a ``GreenSocket`` and runs the
    function in a new greenlet.  ``close()`` lets the connections end, then stops.
    """

    def __init__(self, name: str = "sockserve-green-hub") -> None:
        require_greenlet()
        self._epoll = select.epoll()
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wakeup, select.EPOLLIN)
        self._inbox: collections.deque[tuple[Any, Callable[[Any], None]]] = \
            collections.deque()
        self._wake_pending = False
        self._sockets: dict[int, GreenSocket | GreenSSLSocket] = {}
        self._timers = _Timers()
        # Connections submitted (by the serving loop's thread) and finished (by the
        # hub's): two counters, each written by one side only.
        self._submitted = self._finished = 0
        self._submit_lock = threading.Lock()
        self._idle: list[Any] = []  # greenlets waiting for their next connection
        self._closing = False
        self._failed = False  # the hub loop raised (a bug): see _fail()
        self._greenlet: Any = None  # the hub thread's own (main) greenlet
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        """Connections submitted and not yet served to their end."""
        return self._submitted - self._finished

    @property
    def alive(self) -> bool:
        """Whether the hub thread still runs (it stops once closed and empty)."""
        return self._thread.is_alive()

    @property
    def failed(self) -> bool:
        """Whether the hub stopped on an error of its own (it serves no more)."""
        return self._failed

    # -- any thread ------------------------------------------------------------

    def adopt(self, sock: Any) -> GreenSocket | GreenSSLSocket:
        """*sock* as a green socket of this hub (same descriptor; the timeout the
        handler sees is kept).  A plain socket's descriptor moves to a new
        ``GreenSocket`` (*sock* is detached); a TLS socket changes class in place.

        Raises:
            TypeError: *sock* is no socket the hub can serve (it is left as it was).
        """
        if not isinstance(sock, socket.socket):
            raise TypeError(f"the green model serves sockets, not {type(sock).__name__}")
        green: GreenSocket | GreenSSLSocket
        timeout = sock.gettimeout()
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(0.0)
            sock.__class__ = GreenSSLSocket
            green = sock  # type: ignore[assignment]
        elif type(sock) is socket.socket:
            sock.setblocking(False)
            green = GreenSocket(_family(sock), _type(sock), sock.proto, sock.detach())
        else:
            raise TypeError(f"the green model serves sockets, not {type(sock).__name__}")
        green._green_init(self, timeout)
        return green

    def submit(self, green: GreenSocket | GreenSSLSocket,
               serve: Callable[[Any], None]) -> None:
        """Serve *green* (from ``adopt()``) by calling ``serve(green)`` in a greenlet.

        Raises:
            RuntimeError: the hub is closed (the caller still owns *green*).
        """
        with self._submit_lock:  # against close() and _fail(): counted here means served
            if self._closing:
                raise RuntimeError("the hub has failed" if self._failed
                                   else "the hub is closed")
            self.watch(green)
            self._submitted += 1
            self._inbox.append((green, serve))  # before _fail() takes the inbox
        self._wake()

    def close(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Stop once every connection has ended; with *wait*, wait for that.

        Returns False if *timeout* passed first (the hub then stops by itself later).
        """
        with self._submit_lock:
            self._closing = True
        self._wake()
        if wait and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _wake(self) -> None:
        # One eventfd write per batch of submissions; _take_inbox() clears the flag.
        if not self._wake_pending:
            self._wake_pending = True
            with self._submit_lock:  # not once _run() has closed it: the number is reused
                if self._wakeup >= 0:
                    os.eventfd_write(self._wakeup, 1)

    # -- the hub thread ----------------------------------------------------------

    def _run(self) -> None:
        self._greenlet = getcurrent()
        epoll, sockets, timers = self._epoll, self._sockets, self._timers
        wakeup, readable, writable = self._wakeup, _READABLE, _WRITABLE
        try_every_read = _TRY_EVERY_READ
        try:
            while not (self._closing and not len(self)):
                timeout = timers.next_timeout(time.monotonic()) if timers else -1
                for fd, events in epoll.poll(timeout):
                    if fd == wakeup:
                        self._take_inbox()
                        continue
                    sock = sockets.get(fd)
                    if sock is None:
                        continue
                    if events & readable:
                        sock._readable = True
                        if events & try_every_read:
                            sock._short_read_empties = False
                    if events & writable:
                        sock._writable = True
                    waiter = sock._waiter
                    if waiter is not None and \
                            (sock._writable if sock._wants_write else sock._readable):
                        sock._waiter = None
                        waiter.switch()
                if timers:
                    for waiter in timers.pop_due(time.monotonic()):
                        waiter.switch(_TIMED_OUT)
        except BaseException:
            logger.critical("the green hub failed; ending its connections", exc_info=True)
            self._fail()
        finally:
            for worker in self._idle:
                worker.throw()  # GreenletExit: it ends where it waits
            self._idle.clear()
            epoll.close()
            with self._submit_lock:
                os.close(wakeup)
                self._wakeup = -1

    def _fail(self) -> None:
        """After an error in the hub loop (a bug): end the connections rather than
        abandon them.  Each handler waiting on the hub, and each one still in the inbox
        at its first wait, gets ConnectionAbortedError, so its own error handling and
        clean-up run (handle_error(), the socket closed, the connection released);
        ``submit()`` refuses new ones."""
        with self._submit_lock:
            self._closing = self._failed = True
        for sock in list(self._sockets.values()):
            waiter = sock._waiter
            if waiter is not None:
                try:
                    waiter.throw(ConnectionAbortedError("the green hub failed"))
                except BaseException:
                    logger.exception("a green connection failed to end")
        try:
            self._take_inbox()
        except BaseException:
            logger.exception("green connections not yet started failed to end")

    def _take_inbox(self) -> None:
        # In this order: a submit() that saw _wake_pending still set appended its
        # socket before the flag is cleared here, so the loop below takes it; one
        # that sees it clear writes again.  (Clearing first, then reading, could
        # swallow that write and leave the flag set with nobody to clear it.)
        try:
            os.eventfd_read(self._wakeup)
        except BlockingIOError:
            pass
        self._wake_pending = False
        inbox, idle = self._inbox, self._idle
        while inbox:
            green, serve = inbox.popleft()
            worker = idle.pop() if idle else greenlet(self._serve, parent=self._greenlet)
            worker.switch(green, serve)

    def _serve(self, sock: Any, serve: Callable[[Any], None]) -> None:
        """A greenlet's life: serve connections, waiting idle between them (a new
        greenlet costs a fresh frame stack, an mmap: without reuse, short connections
        ran at 8.05k/s instead of 11.8k/s)."""
        current = getcurrent()
        while True:
            # Each connection in a fresh context; set on the greenlet rather than with
            # Context.run(), which would put one more C frame on every saved stack.
            current.gr_context = contextvars.Context()
            try:
                serve(sock)
            except BaseException:  # serve() reports its own errors; this is a last resort
                logger.exception("a green connection ended with an unhandled error")
            finally:
                self._finished += 1
            if self._closing or len(self._idle) >= IDLE_GREENLETS:
                return
            self._idle.append(current)
            sock, serve = self._greenlet.switch()

    def watch(self, sock: GreenSocket | GreenSSLSocket) -> None:
        """Have epoll report *sock*'s readiness to the hub (``submit()`` does it)."""
        fd = sock.fileno()
        self._sockets[fd] = sock  # first: an event may come as soon as it is registered
        self._epoll.register(fd, _WATCH)

    def forget(self, sock: Any) -> None:
        """Stop watching *sock* (about to be closed or detached); any thread."""
        fd = sock.fileno()
        if self._sockets.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # the hub has stopped, or the descriptor is gone already

    def wait(self, sock: Any, write: bool, timeout: float | None) -> None:
        """Block the calling greenlet until *sock* is ready, at most *timeout* seconds.

        Outside the hub thread (a handler's helper thread using the socket) this
        blocks that thread with poll(), as a plain socket would.

        Raises:
            BlockingIOError: *timeout* is 0.0 (a non-blocking socket).
            TimeoutError: *timeout* passed first.
        """
        if timeout is not None and timeout <= 0:
            if timeout == 0.0:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            raise TimeoutError("timed out")
        current = getcurrent()
        if current.parent is not self._greenlet:  # not a connection's greenlet
            _poll_wait(sock, write, timeout)
            return
        if self._failed:  # nobody would wake it
            raise ConnectionAbortedError("the green hub failed")
        sock._waiter = current
        sock._wants_write = write
        timer = None if timeout is None else \
            self._timers.add(time.monotonic() + timeout, sock._waiter)
        try:
            outcome = self._greenlet.switch()
        finally:
            sock._waiter = None
            if timer is not None:
                self._timers.cancel(timer)
        if outcome is _TIMED_OUT:
            raise TimeoutError("timed out")


def _poll_wait(sock: Any, write: bool, timeout: float | None) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT if write else select.POLLIN)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = None if deadline is None else \
            min(MAX_POLL_WAIT, max(0.0, deadline - time.monotonic()))
        if poller.poll(None if wait is None else wait * 1000):
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError("timed out")
    if write:
        sock._writable = True
    else:
        sock._readable = True


def _check_timeout(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if value < 0:
        raise ValueError("Timeout value out of range")
    return value


class _Cooperative:
    """What both green socket kinds share: the timeout the handler sees, while the
    descriptor itself stays non-blocking, and the readiness the hub last saw."""

    if not TYPE_CHECKING:  # (mypy would take it for the attributes' only home)
        __slots__ = ()  # GreenSocket's slots or GreenSSLSocket's __dict__ hold them
    _hub: Hub
    _green_timeout: float | None
    _readable: bool
    _writable: bool
    _short_read_empties: bool
    _waiter: Any
    _wants_write: bool

    def _green_init(self, hub: Hub, timeout: float | None) -> None:
        self._hub = hub
        self._green_timeout = timeout
        self._readable = self._writable = True
        # TCP returns less than asked only once its queue is empty (tcp_recvmsg); a
        # Unix socket also stops between writers or at passed descriptors.
        self._short_read_empties = _family(self) in (socket.AF_INET, socket.AF_INET6)
        self._waiter = None
        self._wants_write = False

    def settimeout(self, value: float | None) -> None:
        self._green_timeout = _check_timeout(value)

    def gettimeout(self) -> float | None:
        return self._green_timeout

    def setblocking(self, flag: bool) -> None:
        self._green_timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._green_timeout != 0.0

    def _deadline(self) -> float | None:
        timeout = self._green_timeout
        return None if not timeout else time.monotonic() + timeout

    def makefile(self, mode: str = "r", buffering: int | None = None,
                 **kwargs: Any) -> Any:
        file = super().makefile(mode, buffering, **kwargs)  # type: ignore[misc]
        if type(file) is io.BufferedReader:  # "rb", buffered: see _GreenReader
            size = buffering if buffering is not None and buffering > 0 else \
                io.DEFAULT_BUFFER_SIZE
            raw = file.detach()
            raw.__class__ = _GreenSocketIO
            file = _GreenReader(raw, size)
        return file

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send *file* with ``sendall()`` (``socket.sendfile()`` waits on a selector of
        its own, which would stop the hub)."""
        self._check_sendfile_params(file, offset, count)  # type: ignore[attr-defined]
        if offset:
            file.seek(offset)
        total = 0
        while count is None or total < count:
            chunk = file.read(65536 if count is None else min(65536, count - total))
            if not chunk:
                break
            self.sendall(chunk)  # type: ignore[attr-defined]
            total += len(chunk)
        return total

    def detach(self) -> int:
        self._hub.forget(self)
        return super().detach()  # type: ignore[misc, no-any-return]

    def _real_close(self, *args: Any) -> None:
        # Where the descriptor really closes: close() defers it while a makefile()
        # file is open, and that file must go on working until then.
        if self.fileno() >= 0:  # type: ignore[attr-defined]
            self._hub.forget(self)
        super()._real_close(*args)  # type: ignore[misc]


class GreenSocket(_Cooperative, socket.socket):
    """A connected stream socket whose blocking calls yield to the hub."""

    __slots__ = ("_hub", "_green_timeout", "_readable", "_writable", "_short_read_empties",
                 "_waiter", "_wants_write")

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if flags:
            if flags & _WAITALL and not flags & _DONTWAIT:
                return self._recv_all(bufsize, flags & ~_WAITALL)
            return self._flagged(_recv, bufsize, flags)  # type: ignore[no-any-return]
        while True:
            if self._readable or self._green_timeout == 0.0:
                try:
                    data = _recv(self, bufsize)
                except BlockingIOError:
                    self._readable = False
                else:
                    if 0 < len(data) < bufsize and self._short_read_empties:
                        self._readable = False  # a short read emptied the queue
                    return data
            self._hub.wait(self, False, self._green_timeout)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if flags:
            if flags & _WAITALL and not flags & _DONTWAIT:
                return self._recv_into_all(buffer, nbytes, flags & ~_WAITALL)
            return self._flagged(_recv_into, buffer, nbytes, flags)  # type: ignore[no-any-return]
        while True:
            if self._readable or self._green_timeout == 0.0:
                try:
                    count = _recv_into(self, buffer, nbytes)
                except BlockingIOError:
                    self._readable = False
                else:
                    # len() of a buffer is at most its size in bytes: "short" is sure.
                    if count and count < (nbytes or len(buffer)) and self._short_read_empties:
                        self._readable = False  # a short read emptied the queue
                    return count
            self._hub.wait(self, False, self._green_timeout)

    def _flagged(self, call: Callable[..., Any], *args: Any) -> Any:
        """A read with flags (MSG_PEEK...), without the short-read shortcut; with
        MSG_DONTWAIT it never waits, as on a plain socket."""
        if args[-1] & _DONTWAIT:
            return call(self, *args)
        return self._other(False, call, *args)

    def _recv_all(self, size: int, flags: int) -> bytes:
        """MSG_WAITALL on a descriptor that is non-blocking (where the kernel ignores
        it): read until *size* bytes or end-of-file."""
        chunks, got = [], 0
        while got < size and (data := self.recv(size - got, flags)):
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)

    def _recv_into_all(self, buffer: Any, nbytes: int, flags: int) -> int:
        with memoryview(buffer) as view, view.cast("B") as whole:
            size, got = nbytes or len(whole), 0
            while got < size and (count := self.recv_into(whole[got:size], 0, flags)):
                got += count
            return got

    def send(self, data: Any, flags: int = 0) -> int:
        if flags & _DONTWAIT:
            return _send(self, data, flags)
        while True:
            if self._writable or self._green_timeout == 0.0:
                try:
                    return _send(self, data, flags)
                except BlockingIOError:
                    self._writable = False
            self._hub.wait(self, True, self._green_timeout)

    def sendall(self, data: Any, flags: int = 0) -> None:
        if flags & _DONTWAIT:  # never waits: raises when the buffer fills, as a plain one
            return socket.socket.sendall(self, data, flags)
        sent = 0
        if self._writable and type(data) is bytes:  # the usual case: one send() does
            try:
                sent = _send(self, data, flags)
            except BlockingIOError:
                self._writable = False
            else:
                if sent == len(data):
                    return
                self._writable = False  # a short send: the kernel's buffer is full
        deadline = self._deadline()  # for the whole call, as socket.sendall (3.5+)
        with memoryview(data) as view, view.cast("B") as whole:
            remaining = whole[sent:]
            while remaining:
                if self._writable:
                    try:
                        sent = _send(self, remaining, flags)
                    except BlockingIOError:
                        self._writable = False
                        continue
                    remaining = remaining[sent:]
                elif deadline is None:
                    self._hub.wait(self, True, self._green_timeout)
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("timed out")
                    self._hub.wait(self, True, left)

    def _other(self, write: bool, call: Callable[..., Any], *args: Any) -> Any:
        """Any other I/O call: try it, wait on EAGAIN."""
        while True:
            try:
                return call(self, *args)
            except BlockingIOError:
                if write:
                    self._writable = False
                else:
                    self._readable = False
            self._hub.wait(self, write, self._green_timeout)

    def dup(self) -> GreenSocket:
        """A duplicate on the same hub, with the same timeout (socket.dup(2) semantics)."""
        copy = self._hub.adopt(socket.socket(self.family, self.type, self.proto,
                                             fileno=os.dup(self.fileno())))
        copy._green_timeout = self._green_timeout
        self._hub.watch(copy)
        return copy  # type: ignore[return-value]

    def recvfrom(self, bufsize: int, flags: int = 0) -> Any:
        return self._other(False, socket.socket.recvfrom, bufsize, flags)

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> Any:
        return self._other(False, socket.socket.recvfrom_into, buffer, nbytes, flags)

    def recvmsg(self, *args: Any) -> Any:
        return self._other(False, socket.socket.recvmsg, *args)

    def recvmsg_into(self, *args: Any) -> Any:
        return self._other(False, socket.socket.recvmsg_into, *args)

    def sendto(self, *args: Any) -> Any:
        return self._other(True, socket.socket.sendto, *args)

    def sendmsg(self, *args: Any) -> Any:
        return self._other(True, socket.socket.sendmsg, *args)


class GreenSSLSocket(_Cooperative, ssl.SSLSocket):
    """A TLS connection (handshake done) whose blocking calls yield to the hub.

    TLS may hold decrypted bytes the kernel no longer has, so reads are always tried
    and only ``SSLWantReadError``/``SSLWantWriteError`` make them wait.
    """

    def _ssl_call(self, call: Callable[..., Any], *args: Any) -> Any:
        """*call*, waiting on the hub while TLS wants to read or write; the timeout
        covers the whole call, as in the ssl module.  Non-blocking, the ssl module's
        own SSLWantReadError/SSLWantWriteError come through."""
        timeout = self._green_timeout
        deadline = None if not timeout else time.monotonic() + timeout
        while True:
            try:
                return call(self, *args)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                if timeout == 0.0:
                    raise
                write = isinstance(exc, ssl.SSLWantWriteError)
                if write:
                    self._writable = False
                else:
                    self._readable = False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("timed out") from None
                self._hub.wait(self, write, left)

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        return self._ssl_call(ssl.SSLSocket.read, len, buffer)

    def send(self, data: Any, flags: int = 0) -> int:
        return self._ssl_call(ssl.SSLSocket.send, data, flags)  # type: ignore[no-any-return]

    def write(self, data: Any) -> int:
        return self.send(data)

    def do_handshake(self, block: bool = False) -> None:
        self._ssl_call(ssl.SSLSocket.do_handshake)

    def unwrap(self) -> Any:
        return self._ssl_call(ssl.SSLSocket.unwrap)


class _GreenSocketIO(socket.SocketIO):
    """SocketIO with the checks it repeats on every call done once, for speed."""

    def readinto(self, b: Any) -> int | None:
        if self._timeout_occurred:  # type: ignore[has-type]
            raise OSError("cannot read from timed out object")
        try:
            return self._sock.recv_into(b)  # type: ignore[attr-defined, no-any-return]
        except TimeoutError:
            self._timeout_occurred = True
            raise
        except BlockingIOError:
            return None  # a non-blocking socket, as SocketIO


class _GreenReader(io.BufferedReader):
    """``makefile("rb")`` for a green socket: ``read1(n)`` waits for data before
    it allocates its *n*-byte result (C's BufferedReader allocates first), so an idle
    connection does not hold a ``read1(65536)``'s 64 KiB while it waits."""

    def read1(self, size: int = -1) -> bytes:
        self.peek(1)  # waits, then reads into our own buffer
        return _read1(self, size)
