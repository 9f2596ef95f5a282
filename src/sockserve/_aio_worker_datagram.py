"""Async datagram handlers in a pre-forked worker: stop reading, keep replying.

A stopping worker (SIGTERM, ``max_requests``, a reload) must leave the datagrams that
wait on the socket it shares with the other workers to them, while the handlers it
has started finish and send their replies.  asyncio could simply stop reading; uvloop
cannot short of closing its transport, and a closed uvloop transport drops whatever is
sent through it.  So a worker's handlers are given a ``ReplyTransport``: it sends
through the endpoint's transport until the worker stops reading, and then, with that
transport closed, through a copy of the socket of its own.  Both loops take the same
path.

A worker's own SO_REUSEPORT socket is read until it has had nothing waiting for two
loop passes, then closed the same way: what the kernel queued there would die with it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._aio_datagram import DATAGRAM_IGNORED_ERRNOS, DatagramServing
from ._aio_serving import CLOSE_TIMEOUT, SETTLE_PASSES

if TYPE_CHECKING:
    from ._aio_serving import Serving

logger = logging.getLogger("sockserve.aio")

# What read_what_waits() reads at most per datagram: asyncio's transport's own size
# (larger ones are cut to it, as there).
MAX_DATAGRAM = 256 * 1024

# Whatever the socket's own mode (a plain int: socket's MSG_* are slower IntFlags).
DONTWAIT = int(socket.MSG_DONTWAIT)


class ReplyTransport(asyncio.DatagramTransport):
    """What a worker's datagram handlers send through (``self.transport``)."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: DatagramServing,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport  # the endpoint's: it reads until stop_reading()
        self._protocol = protocol
        self._loop = loop
        self._sock: socket.socket | None = None  # after stop_reading(): sends replies
        self._queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._closing = False
        self._flushed: asyncio.Future[None] | None = None
        # Until stop_reading(), sendto() is the endpoint's own: no call in between.
        self.sendto = transport.sendto  # type: ignore[method-assign]

    def stop_reading(self, reply_from: socket.socket) -> None:
        """Take no more datagrams from the socket; replies still go out, through a
        copy of *reply_from* (the socket itself, or a shared twin of a worker's own)."""
        if self._sock is not None or self._closing:
            return
        self._sock = reply_from.dup()
        del self.sendto  # this class's from now on
        self._transport.close()

    def sendto(self, data: Any, addr: Any = None) -> None:
        """After ``stop_reading()`` (and ``close()``: then dropped, as asyncio does)."""
        if self._sock is None or self._closing:
            return
        if not self._queue and self._send(data, addr):
            return
        if not self._queue:
            self._loop.add_writer(self._sock.fileno(), self._flush)
        self._queue.append((bytes(data), addr))

    def _send(self, data: Any, addr: Any) -> bool:
        """Send one datagram now; False if the socket cannot take it yet."""
        assert self._sock is not None
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
        """The socket can take more: send what is queued, in order."""
        queue = self._queue
        while queue:
            data, addr = queue[0]
            if not self._send(data, addr):
                return
            queue.popleft()
        self._stop_writing()
        if self._closing:
            self._close_socket()

    def _stop_writing(self) -> None:
        if self._sock is not None and self._sock.fileno() >= 0:
            self._loop.remove_writer(self._sock.fileno())

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._flushed is not None and not self._flushed.done():
            self._flushed.set_result(None)

    def close(self) -> None:
        """Close; replies still queued go out first (``closed()`` waits for them)."""
        if self._closing:
            return
        self._closing = True
        if self._sock is None:
            self._transport.close()
            return
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
        if self._sock is None:
            self._transport.abort()
            return
        self._stop_writing()
        self._queue.clear()
        self._close_socket()

    def is_closing(self) -> bool:
        return self._closing or (self._sock is None and self._transport.is_closing())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._sock is None:
            return self._transport.get_extra_info(name, default)
        if name == "socket":
            return self._sock
        if name == "sockname":
            return self._sock.getsockname()
        return default

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class WorkerDatagramServing(DatagramServing):
    """``DatagramServing`` in a pre-forked worker: handlers reply through a
    ``ReplyTransport``, and each datagram is a request toward ``max_requests``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport = ReplyTransport(self.transport, self, self.serving.loop)
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
                       shared: Sequence[socket.socket]) -> None:
    """A stopping worker's datagram endpoints (one for each of *socks*) stop reading.

    The shared sockets' datagrams are the other workers' from now on.  A worker's own
    SO_REUSEPORT socket leaves its group only once closed, and what waits on it then
    is lost: so once the loop's copy of it is closed, what waits is read and served
    here, and the socket closed at once.  Replies to it go through its shared twin (the
    same address).
    """
    own = []
    for sock, endpoint in zip(socks, serving.endpoints):
        transport = endpoint.transport
        assert isinstance(transport, ReplyTransport)
        if any(sock is other for other in shared):
            transport.stop_reading(sock)
        else:
            twin = next((other for other in shared
                         if other.getsockname() == sock.getsockname()), sock)
            transport.stop_reading(twin)
            own.append((sock, endpoint))
    for sock, endpoint in own:
        await endpoint.closed
        read_what_waits(sock, endpoint)
        sock.close()
    serving.accepting = False


def read_what_waits(sock: socket.socket, endpoint: DatagramServing) -> None:
    """Serve the datagrams queued on *sock* (at most ``SETTLE_PASSES``: under a flood
    the queue refills as fast as it is read)."""
    for _ in range(SETTLE_PASSES):
        try:
            data, addr = sock.recvfrom(MAX_DATAGRAM, DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            endpoint.error_received(exc)
            continue
        endpoint.datagram_received(data, addr)
