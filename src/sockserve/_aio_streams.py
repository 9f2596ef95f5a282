"""The receiving side an async stream handler talks to: ``ConnectionReader``.

It sits directly on the connection's asyncio protocol rather than on asyncio's
StreamReader: the reader *is* the protocol, so a chunk that arrives while the handler
waits in ``read_some()`` is handed straight to it (no copy through a buffer), and the
handler is resumed from the callback that brought the data (``_aio_driver``).  A future
is created only when a read is awaited by another task than the handler's.
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, cast

from ._aio_driver import WAIT, Resumable, suspend
from ._aio_limits import LIFETIME_EXCEEDED, WRITE_TIMEOUT, ConnectionLimits
from ._aio_writer import ConnectionWriter, expire
from .errors import LineTooLong

if TYPE_CHECKING:
    from ._aio_serving import Serving

if sys.version_info >= (3, 12):
    _current_task = asyncio.current_task  # C, takes the loop
else:  # Python 3.10-3.11: current_task() is Python code around this dict lookup
    _current_task = getattr(asyncio.tasks, "_current_tasks").get

# readline()'s default limit, as asyncio's streams (64 KiB, asyncio.streams._DEFAULT_LIMIT).
READ_LIMIT = 64 * 1024
# Unread bytes above which the transport stops reading from the socket, so a client
# that sends faster than the handler reads fills its own send buffer, not our memory
# (twice the line limit, as asyncio's StreamReader).  Reading resumes at half of it, or
# at once when the handler waits for more data.
READ_HIGH_WATER = 2 * READ_LIMIT
# What one read returns at most by default, and the size of the per-loop receive buffer
# of the BufferedProtocol path (asyncio's selector transport reads 256 KiB at a time).
READ_CHUNK = 64 * 1024
RECEIVE_BUFFER_SIZE = 256 * 1024


class LineTooLongError(LineTooLong):
    """A line (or a ``readuntil()`` record) was longer than the limit allowed.

    A ``LineTooLong`` (the sync servers' error), so a ``SockServeError`` and a
    ``ValueError``.
    """


class ConnectionReader(Resumable, asyncio.Protocol):
    """The receiving side of a connection: awaitable reads over a buffer the transport fills.

    Also the connection's asyncio protocol; its ``data_received()`` & co. are for the
    transport only.  One coroutine at a time may wait on a reader.

    Attributes:
        timeout: seconds a read (or a writer's ``drain()``) may wait before raising
            ``TimeoutError``; None waits forever.  Set from the handler's ``timeout``.
            The server's timeouts (``_aio_limits``) apply too; the shorter one wins.
    """

    __slots__ = ("_serving", "_buffer", "_waiter", "_eof", "_exception",
                 "_transport", "_read_paused", "_write_paused", "_drain_waiters",
                 "_lost", "_closed", "writer", "_timeout", "_timed", "_limits",
                 "_call_deadline", "_line_limit", "_admitted", "_host", "_tls", "_life_timer",
                 "__weakref__")

    def __init__(self, serving: Serving) -> None:
        # Resumable: when the protocol resumes the handler itself (_aio_driver), the
        # handler coroutine, its task and context, what the task waits on, whether
        # the handler waits on this reader now (then _handover > 0: read_some() takes
        # a chunk of up to that many bytes), and what a direct step left for the task.
        super().__init__()
        self._serving = serving
        self._buffer = bytearray()
        self._waiter: asyncio.Future[bytes | None] | None = None
        self._eof = False
        self._exception: BaseException | None = None
        self._transport: asyncio.Transport | None = None
        self._read_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._lost = False
        self._closed: asyncio.Future[None] | None = None
        self.writer: ConnectionWriter | None = None
        self._timeout: float | None = None
        # Whether any wait is bounded (the handler's timeout or the server's limits):
        # one test keeps the untimed read path as fast as it was.
        self._timed = False
        self._limits: ConnectionLimits | None = None
        self._call_deadline: float | None = None  # read_timeout of the current read call
        self._line_limit = READ_LIMIT  # readline()'s default limit: max_line_length
        self._admitted = False  # counted as open (max_connections, statistics, drain)
        self._host: str | None = None  # counted against max_connections_per_ip
        self._tls = False
        self._life_timer: asyncio.TimerHandle | None = None

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._timeout = value
        self._timed = value is not None or self._limits is not None

    def _apply_limits(self, limits: ConnectionLimits) -> None:
        """Enforce the server's timeouts on this connection (before its handler runs)."""
        self._limits = limits
        self._timed = True
        if limits.deadline is not None:
            self._life_timer = self._serving.loop.call_at(limits.deadline, self._lifetime_over)

    def _read_limit(self, fresh: bool) -> tuple[float | None, str]:
        """How long a read's wait may take, and the TimeoutError message after that.

        *fresh*: no data has come during this read call yet (the idle timeout applies),
        else the read timeout counted from its first byte.
        """
        limits = self._limits
        if limits is None:
            return self._timeout, f"no data for {self._timeout} s"
        now = self._serving.loop.time()
        if fresh:
            return limits.bound(limits.idle_timeout, "idle timeout", self._timeout, now)
        call_deadline = self._call_deadline
        if call_deadline is None:
            return limits.bound(None, "", self._timeout, now)
        if call_deadline <= now:
            raise TimeoutError("read timeout")
        return limits.bound(call_deadline - now, "read timeout", self._timeout, now)

    def _write_limit(self) -> tuple[float | None, str]:
        """How long ``drain()`` may wait, and the TimeoutError message after that."""
        limits = self._limits
        if limits is None:
            return self._timeout, f"timed out after {self._timeout} s"
        return limits.bound(limits.write_timeout, WRITE_TIMEOUT, self._timeout,
                            self._serving.loop.time())

    def _lifetime_over(self) -> None:
        """Timer at the connection's deadline: fail whatever waits on it, then close."""
        self._life_timer = None
        if self._parked:
            self._step(None, TimeoutError(LIFETIME_EXCEEDED))
        elif self._waiter is not None:
            expire(self._waiter, LIFETIME_EXCEEDED)
        for waiter in self._drain_waiters:
            expire(waiter, LIFETIME_EXCEEDED)
        transport = self._transport
        if transport is not None:
            # Data a client does not read must not keep the connection past its end.
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()

    def _upgraded(self, transport: asyncio.Transport) -> None:
        """The TLS handshake is done: the connection goes through *transport* now."""
        self._transport = transport
        self.writer = ConnectionWriter(transport, self)
        if self._lost:  # lost between the handshake's end and here
            self.writer.connection_lost()
        self._tls = True
        # Reading stayed "paused" during the handshake, so that data arriving with its
        # end never paused the raw transport (_aio_tls).
        self._read_paused = False
        if len(self._buffer) > READ_HIGH_WATER:
            self._read_paused = True
            transport.pause_reading()

    # -- reading ----------------------------------------------------------------

    async def read_some(self, max_bytes: int = READ_CHUNK) -> bytes:
        """Up to *max_bytes* bytes, as soon as at least one is there; b"" at EOF.

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds.
            OSError: the connection was lost with an error (after the data before it).
        """
        buffer = self._buffer
        if not buffer:
            # The direct path of _wait(), inlined: the handler's own task reads, so
            # _step() resumes it with the next chunk.  (Another task's read, even
            # while this one waits, takes _wait()'s future path.)
            if self._coro is not None and not self._timed and not self._eof \
                    and self._waiter is None \
                    and _current_task(self._serving.loop) is self._task:
                if self._read_paused:
                    self._resume_reading()
                self._handover = max_bytes
                data = await suspend()  # _step() resets _handover
            else:
                data = await self._wait(max_bytes)
            if data is not None:
                return data  # type: ignore[no-any-return]
            if not buffer:
                if self._exception is not None:
                    raise self._exception
                return b""
        if len(buffer) <= max_bytes:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:max_bytes])
            del buffer[:max_bytes]
        if self._read_paused:
            self._maybe_resume()
        return data

    async def read(self, n: int = -1) -> bytes:
        """Up to *n* bytes as soon as any are there (``read_some(n)``); everything until
        EOF when *n* is negative; b"" at EOF."""
        if n >= 0:
            return await self.read_some(n) if n else b""
        fresh = True
        while not self._eof:
            await self._wait(0, fresh)
            fresh = False
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly *n* bytes.

        Raises:
            asyncio.IncompleteReadError: EOF came first; ``partial`` has what was read.
        """
        if n < 0:
            raise ValueError("readexactly() size can not be less than zero")
        fresh = True
        while len(self._buffer) < n:
            if self._eof:
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, n)
            await self._wait(0, fresh)
            fresh = False
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        if self._read_paused:
            self._maybe_resume()
        return data

    async def readinto(self, buffer: Any) -> int:
        """Fill *buffer* (any writable bytes-like) with what is there, as ``recv_into()``:
        the number of bytes written, at least one, or 0 at EOF."""
        with memoryview(buffer) as view, view.cast("B") as target:
            if not target.nbytes:
                return 0
            if not self._buffer:
                data = await self._wait(target.nbytes)
                if data is not None:
                    target[:len(data)] = data
                    return len(data)
            n = min(len(self._buffer), target.nbytes)
            target[:n] = self._buffer[:n]
            del self._buffer[:n]
        if self._read_paused:
            self._maybe_resume()
        return n

    async def readuntil(self, separator: bytes = b"\n", limit: int | None = None) -> bytes:
        """Data up to and including *separator*, at most *limit* bytes (by default the
        server's ``max_line_length``, else ``READ_LIMIT``).

        Raises:
            LineTooLongError: *limit* bytes arrived without a separator; they stay in
                the buffer.
            asyncio.IncompleteReadError: EOF came first; ``partial`` has the data.
        """
        if not separator:
            raise ValueError("separator should be at least one-byte string")
        if limit is None:
            limit = self._line_limit
        buffer, start, fresh = self._buffer, 0, True
        while (end := buffer.find(separator, start)) < 0:
            if len(buffer) >= limit:
                raise LineTooLongError(f"no {separator!r} within {limit} bytes")
            if self._eof:
                partial = bytes(buffer)
                buffer.clear()
                raise asyncio.IncompleteReadError(partial, None)
            start = max(0, len(buffer) - len(separator) + 1)
            await self._wait(0, fresh)
            fresh = False
        end += len(separator)
        if end > limit:
            raise LineTooLongError(f"no {separator!r} within {limit} bytes")
        data = bytes(buffer[:end])
        del buffer[:end]
        if self._read_paused:
            self._maybe_resume()
        return data

    async def readline(self, limit: int | None = None) -> bytes:
        """One line with its b"\\n"; at EOF what is left (b"" when nothing is).  At most
        *limit* bytes: by default the server's ``max_line_length``, else ``READ_LIMIT``.

        Raises:
            LineTooLongError: the line is longer than *limit* bytes; as in asyncio's
                ``readline()``, the line (or, without its end, the buffer) is dropped.
        """
        try:
            return await self.readuntil(b"\n", limit)
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        except LineTooLongError:
            end = self._buffer.find(b"\n")
            del self._buffer[:len(self._buffer) if end < 0 else end + 1]
            self._maybe_resume()
            raise

    def at_eof(self) -> bool:
        """True when the peer has closed its side and the buffer is empty."""
        return self._eof and not self._buffer

    def __aiter__(self) -> ConnectionReader:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    @types.coroutine
    def _wait(self, handover: int, fresh: bool = True) -> Generator[Any, Any, bytes | None]:
        """Wait for more data, EOF or the connection's end; a chunk if handed over.

        *handover* > 0 lets the protocol hand a chunk of up to that many bytes straight
        to the caller, when the buffer is empty (read_some(), readinto()).  *fresh*: the
        first wait of a read call (see ``_read_limit()``).
        """
        delay: float | None = None
        if self._timed:
            delay, message = self._read_limit(fresh)  # raises once the lifetime is over
        if self._eof:
            if self._exception is not None and not self._buffer:
                raise self._exception
            return None
        if self._waiter is not None or self._handover:
            raise RuntimeError("another coroutine is already waiting on this reader")
        if self._read_paused:
            self._resume_reading()
        loop = self._serving.loop
        if self._coro is not None and _current_task(loop) is self._task:
            timer = None
            if delay is not None:
                timer = loop.call_later(delay, self._expire_parked, message)
            self._handover = handover or -1
            try:
                data: bytes | None = yield WAIT  # _step() resets _handover
            finally:
                if timer is not None:
                    timer.cancel()
            if fresh and self._limits is not None:
                self._start_read_call()
            return data
        waiter: asyncio.Future[bytes | None] = loop.create_future()
        self._waiter, self._handover = waiter, handover
        if delay is not None:
            timer = loop.call_later(delay, expire, waiter, message)
        else:
            timer = None
        try:
            data = yield from waiter
            if fresh and self._limits is not None:
                self._start_read_call()
            return data
        except BaseException:
            # Cancelled just after a chunk was handed over: keep it for the next read.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                data = waiter.result()
                if data:
                    self._buffer[:0] = data
            raise
        finally:
            self._waiter = None
            self._handover = 0
            if timer is not None:
                timer.cancel()

    def _start_read_call(self) -> None:
        """The current read call's first data came: its read timeout starts now."""
        assert self._limits is not None
        read_timeout = self._limits.read_timeout
        if read_timeout is not None:
            self._call_deadline = self._serving.loop.time() + read_timeout

    def _expire_parked(self, message: str) -> None:
        if self._parked:
            self._step(None, TimeoutError(message))

    def _resume_reading(self) -> None:
        self._read_paused = False
        assert self._transport is not None
        self._transport.resume_reading()

    # -- resuming the handler directly (see _aio_driver) ---------------------------

    def _step(self, value: bytes | None, exc: BaseException | None) -> None:
        """Resume the parked handler now with *value* (or *exc*), as its task would;
        if it cannot take *value* now, the data waits in the buffer for its read."""
        if not self._resume(value, exc) and value:
            self._buffer += value

    def _maybe_resume(self) -> None:
        if self._read_paused and len(self._buffer) <= READ_HIGH_WATER // 2:
            self._resume_reading()

    # -- protocol callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance() check: uvloop's transports do not subclass asyncio's.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self.writer = ConnectionWriter(transport, self)
        self._serving.connection_made(self, transport)

    def data_received(self, data: bytes) -> None:
        if self._parked:
            handover = self._handover
            if not self._buffer and 0 < len(data) <= handover:
                if not self._resume(data, None):  # _step(), inlined: the hot path
                    self._buffer += data
                return
            self._buffer += data
            self._step(None, None)
        elif (waiter := self._waiter) is not None:
            self._waiter = None
            handover = self._handover
            if not self._buffer and 0 < len(data) <= handover and not waiter.done():
                waiter.set_result(data)
                return
            self._buffer += data
            if not waiter.done():
                waiter.set_result(None)
        else:
            self._buffer += data
        if len(self._buffer) > READ_HIGH_WATER and not self._read_paused \
                and not self._parked and self._waiter is None:
            assert self._transport is not None
            self._read_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._feed_eof()
        # Keep the transport open: the handler may still write its reply.  TLS cannot
        # half-close (and asyncio warns when asked to), so a TLS connection ends here.
        return not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self.writer is not None:
            self.writer.connection_lost()
        if self._life_timer is not None:
            self._life_timer.cancel()
            self._life_timer = None
        if exc is not None and not self._eof:
            self._exception = exc
        self._feed_eof()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self._serving.connection_lost(self)

    def _feed_eof(self) -> None:
        self._eof = True
        if self._parked:
            self._step(None, None)
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()


class BufferedConnectionReader(ConnectionReader, asyncio.BufferedProtocol):
    """The reader on the BufferedProtocol path: the transport receives into a buffer
    shared by the loop's connections (asyncio's plain path allocates 256 KiB per read)."""

    __slots__ = ()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._serving.receive_buffer

    def buffer_updated(self, nbytes: int) -> None:
        # The shared buffer is reused by the next read, so its bytes are copied out now.
        self.data_received(self._serving.receive_buffer[:nbytes].tobytes())
