"""Async datagram handlers in a pre-forked worker: stop reading, keep replying.

A stopping worker (SIGTERM, ``max_requests``, a reload) must leave the datagrams that
wait on the socket it shares with the other workers to them, while the handlers it
has started finish and send their replies.  It closes the loop's transports, which
only read (uvloop has no other way to stop reading); replies go through each
endpoint's ``ReplyTransport`` (``_aio_replies``), on a copy of the shared socket, until
serving ends.

A worker's own SO_REUSEPORT socket leaves its group only once closed, and what waits
on it then is lost; so once the loop's copy of it is closed, what waits is read and
served here, and the socket closed at once.  Replies never go through it (its twin,
the shared socket of the same address, sends them), so nothing else keeps it open.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

from ._aio_datagram import DatagramServing
from ._aio_replies import CLOSE_TIMEOUT, DONTWAIT
from ._aio_serving import SETTLE_PASSES

if TYPE_CHECKING:
    from ._aio_serving import Serving

# What read_what_waits() reads at most per datagram: asyncio's transport's own size.
MAX_DATAGRAM = 256 * 1024


class WorkerDatagramServing(DatagramServing):
    """``DatagramServing`` in a pre-forked worker: each datagram is a request toward
    ``max_requests``; *own* is the worker's own SO_REUSEPORT socket it serves, if so."""

    def __init__(self, serving: Serving, reply_socket: socket.socket,
                 own: socket.socket | None) -> None:
        super().__init__(serving, reply_socket)
        self.own = own
        # Counted only if there is a limit to count toward.
        self.took_request = serving.took_request if self.server.max_requests else None

    def _dispatch(self, item: tuple[bytes, Any, Any, Any]) -> None:
        if self.took_request is not None:  # admitted: a request
            self.took_request()
        super()._dispatch(item)


async def stop_reading(serving: Serving) -> None:
    """A stopping worker's datagram endpoints stop reading; what waits on its own
    sockets is read and served, then they close."""
    own = []
    for endpoint in serving.endpoints:
        if endpoint.transport is not None:
            endpoint.transport.stop_reading()
            if isinstance(endpoint, WorkerDatagramServing) and endpoint.own is not None:
                own.append((endpoint.own, endpoint))
    for sock, endpoint in own:
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
