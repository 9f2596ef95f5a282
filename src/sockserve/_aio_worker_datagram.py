"""Async datagram handlers in a pre-forked worker: stop reading, keep replying.

A stopping worker (SIGTERM, ``max_requests``, a reload) must leave the datagrams that
wait on the socket it shares with the other workers to them, while the handlers it
has started finish and send their replies.  uvloop cannot stop reading a datagram
transport short of closing it, and a closed transport drops what is sent through it.
So in a worker the endpoint's transport only reads, and the handlers send through a
``ReplyTransport``: a copy of the shared socket of the endpoint's address, of its own,
which stays open until serving ends.  Both loops take the same path.

A worker's own SO_REUSEPORT socket leaves its group only once closed, and what waits
on it then is lost; so once the loop's copy of it is closed, what waits is read and
served here, and the socket closed at once.  Replies never go through it (its twin,
the shared socket of the same address, sends them), so nothing else keeps it open.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from asyncio import trsock
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._aio_datagram import DATAGRAM_IGNORED_ERRNOS, DatagramServing
from ._aio_serving import CLOSE_TIMEOUT, SETTLE_PASSES, duplicate

if TYPE_CHECKING:
    from ._aio_serving import Serving

logger = logging.getLogger("sockserve.aio")

# What read_what_waits() reads at most per datagram: asyncio's transport's own size.
MAX_DATAGRAM = 256 * 1024
# Whatever the socket's own mode (a plain int: socket's MSG_* are slower IntFlags).
DONTWAIT = int(socket.MSG_DONTWAIT)
# A reply the socket cannot take yet (a Unix client's full queue) is tried again after
# this long, doubling up to RETRY_MAX: a Unix datagram socket polls writable even then,
# so waiting for writability would spin.
RETRY_FIRST = 0.001
RETRY_MAX = 0.05


class ReplyTransport(asyncio.DatagramTransport):
    """What a worker's datagram handlers send through (``self.transport``)."""

    def __init__(self, transport: asyncio.DatagramTransport, reply_from: socket.socket,
                 protocol: DatagramServing, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport  # the endpoint's: it reads until stop_reading()
        self._sock = duplicate(reply_from)
        self._extra_socket = trsock.TransportSocket(self._sock)  # as the loops show it
        self._protocol = protocol
        self._loop = loop
        self._queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._queued = 0  # bytes
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_FIRST
        self._closing = False
        self._flushed: asyncio.Future[None] | None = None

    def stop_reading(self) -> None:
        """Take no more datagrams from the socket; replies still go out."""
        self._transport.close()

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return  # as asyncio's transport, once closed
        if not self._queue and self._send(data, addr):
            return
        self._queue.append((bytes(data), addr))
        self._queued += len(data)
        if self._retry is None:
            self._retry = self._loop.call_later(self._retry_delay, self._flush)

    def _send(self, data: Any, addr: Any) -> bool:
        """Send one datagram now; False if the socket cannot take it yet."""
        try:
            if addr is None:
                self._sock.send(data, DONTWAIT)
            else:
                self._sock.sendto(data, DONTWAIT, addr)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:  # reported as the endpoint's transport would
            if exc.errno not in DATAGRAM_IGNORED_ERRNOS:
                self._protocol.error_received(exc)
        return True

    def _flush(self) -> None:
        """Send what is queued, in order, until the socket cannot take more."""
        self._retry = None
        queue = self._queue
        while queue:
            data, addr = queue[0]
            if not self._send(data, addr):
                self._retry_delay = min(2 * self._retry_delay, RETRY_MAX)
                self._retry = self._loop.call_later(self._retry_delay, self._flush)
                return
            queue.popleft()
            self._queued -= len(data)
        self._retry_delay = RETRY_FIRST
        if self._closing:
            self._close_socket()

    def _close_socket(self) -> None:
        self._sock.close()
        if self._flushed is not None and not self._flushed.done():
            self._flushed.set_result(None)

    def close(self) -> None:
        """Stop reading and close; replies still queued go out first (``closed()``
        waits for them)."""
        if self._closing:
            return
        self._closing = True
        self._transport.close()
        if self._queue:
            self._flushed = self._loop.create_future()
        else:
            self._close_socket()

    async def closed(self) -> None:
        """Wait, at most ``CLOSE_TIMEOUT``, for what ``close()`` left to send."""
        if self._flushed is not None:
            done, _ = await asyncio.wait([self._flushed], timeout=CLOSE_TIMEOUT)
            if not done:
                logger.warning("%d datagram replies not sent %.0f s after serving "
                               "stopped (a client that does not read?): dropped",
                               len(self._queue), CLOSE_TIMEOUT)
                self.abort()

    def abort(self) -> None:
        self._closing = True
        self._transport.abort()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._queue.clear()
        self._queued = 0
        self._close_socket()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._extra_socket
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._queued

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class WorkerDatagramServing(DatagramServing):
    """``DatagramServing`` in a pre-forked worker: handlers reply through a
    ``ReplyTransport``, and each datagram is a request toward ``max_requests``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None and self.server._aio_worker is not None
        self.transport = ReplyTransport(
            self.transport, self.server._aio_worker.shared_twin(self.socket), self,
            self.serving.loop)
        # Counted only if there is a limit to count toward.
        self.took_request = self.serving.took_request if self.server.max_requests else None

    def _dispatch(self, item: tuple[bytes, Any, Any, Any]) -> None:
        if self.took_request is not None:  # admitted: a request
            self.took_request()
        super()._dispatch(item)

    async def aclose(self) -> None:
        await super().aclose()
        if isinstance(self.transport, ReplyTransport):
            await self.transport.closed()


async def stop_reading(serving: Serving, socks: Sequence[socket.socket],
                       own: Sequence[socket.socket]) -> None:
    """A stopping worker's datagram endpoints (one for each of *socks*) stop reading;
    what waits on the worker's *own* sockets is read and served, then they close."""
    waiting = []
    for sock, endpoint in zip(socks, serving.endpoints):
        if isinstance(endpoint.transport, ReplyTransport):
            endpoint.transport.stop_reading()
            if any(sock is mine for mine in own):
                waiting.append((sock, endpoint))
    for sock, endpoint in waiting:
        # Nothing is sent through the loop's copy: it closes within a pass.
        await asyncio.wait([endpoint.closed], timeout=CLOSE_TIMEOUT)
        read_what_waits(sock, endpoint)
        sock.close()
    serving.accepting = False


def read_what_waits(sock: socket.socket, endpoint: DatagramServing) -> None:
    """Serve the datagrams queued on *sock*: until none is left, or ``SETTLE_PASSES``
    of them (under a flood the queue refills as fast as it is read)."""
    for _ in range(SETTLE_PASSES):
        try:
            data, addr = sock.recvfrom(MAX_DATAGRAM, DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            endpoint.error_received(exc)
            continue
        endpoint.datagram_received(data, addr)
