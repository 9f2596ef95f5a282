"""TLS for the async stream servers: a handshake per connection, inside its task.

The listener accepts plain connections, so the access list, the connection limits and
``verify_request()`` decide before any handshake (as in the sync servers), and every
connection reads ``server.ssl_context`` when it is accepted: assigning a new context
(a certificate reload) applies to the next connection.  ``loop.start_tls()`` (asyncio
and uvloop) then upgrades the connection with ``ssl_handshake_timeout`` =
``server.handshake_timeout``; the handler runs once it has succeeded and talks through
the TLS transport (``writer.get_extra_info("ssl_object")``, ``"peercert"``).  Failures
and timeouts are logged at INFO on ``sockserve.tls`` and counted, as in ``tls.py``.

``start_tls()`` switches the transport to its TLS protocol before its first wait.  That
part runs inside ``connection_made()`` (``StartedHandshake``), before the loop reads
from the socket: a connection task starts one loop pass later (before Python 3.12), and
uvloop would by then have handed the client's first TLS record to the plain protocol,
where the handshake never sees it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._aio_serving import Serving
    from ._aio_streams import ConnectionReader

logger = logging.getLogger("sockserve.tls")

# A handshake that fails this close to its deadline failed because of it: the loop's own
# timer aborts it (ConnectionAbortedError), and uvloop's clock counts milliseconds.
DEADLINE_SLACK = 0.01


class StartedHandshake:
    """``loop.start_tls()`` run up to its first wait; awaiting it finishes the handshake.

    Raises (on construction): whatever ``start_tls()`` raises before waiting.
    """

    __slots__ = ("_coro", "_yielded", "_result", "deadline")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport,
                 reader: ConnectionReader, context: ssl.SSLContext, timeout: float) -> None:
        self.deadline = loop.time() + timeout
        coro: Coroutine[Any, Any, asyncio.Transport | None] = loop.start_tls(
            transport, reader, context, server_side=True, ssl_handshake_timeout=timeout)
        self._coro = coro
        self._result: asyncio.Transport | None = None
        try:
            self._yielded: Any = coro.send(None)
        except StopIteration as done:  # never in practice: a handshake needs the peer
            self._yielded, self._result = _DONE, done.value

    def __await__(self) -> Generator[Any, Any, asyncio.Transport | None]:
        coro, value = self._coro, self._yielded
        if value is _DONE:
            return self._result
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation: start_tls() closes the transport
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]


_DONE: Any = object()


def start_handshake(serving: Serving, reader: ConnectionReader, transport: asyncio.Transport,
                    context: ssl.SSLContext, client_address: Any) -> StartedHandshake | None:
    """Begin the handshake of an accepted connection, from ``connection_made()``.

    Returns None (the failure counted, the connection closed) if it cannot start.
    """
    server = serving.server
    # The handshake's data must not pause the plain transport under the TLS one: the
    # reader counts as paused until the handler's transport replaces it (_upgraded()).
    reader._read_paused = True
    try:
        handshake = StartedHandshake(serving.loop, transport, reader, context,
                                     server.handshake_timeout)
    except Exception as exc:
        logger.info("TLS with %s: handshake failed: %s", client_address, exc)
        server._sockserve_counters.tls_failed += 1
        reader.connection_lost(None)
        transport.abort()
        return None
    serving.handshakes += 1
    return handshake


def tls_gone_before_handshake(server: Any) -> None:
    """A TLS client reset before its address could be read: a failed handshake."""
    logger.info("TLS: handshake failed: a client reset its connection before it began")
    server._sockserve_counters.tls_failed += 1


async def finish_handshake(serving: Serving, reader: ConnectionReader,
                           handshake: StartedHandshake, client_address: Any) -> bool:
    """Await the handshake in the connection's task; True once the reader is upgraded.

    Error handling: a failure or a timeout is logged, counted and closes the connection
    (False); cancellation (the server stops) counts as a failure and is re-raised.
    """
    counters = serving.server._sockserve_counters
    try:
        transport = await handshake
    except asyncio.CancelledError:
        logger.info("TLS with %s: server stopping", client_address)
        counters.tls_failed += 1
        reader.connection_lost(None)
        raise
    except Exception as exc:
        # start_tls() has closed the connection, and the reader hears no more of it (the
        # TLS protocol reports a lost connection only after a handshake).  A timeout
        # shows as the loop's ConnectionAbortedError at the deadline.
        if serving.loop.time() >= handshake.deadline - DEADLINE_SLACK:
            logger.info("TLS with %s: handshake timed out", client_address)
            counters.tls_timed_out += 1
        else:
            logger.info("TLS with %s: handshake failed: %s", client_address, exc)
            counters.tls_failed += 1
        reader.connection_lost(None)
        return False
    finally:
        serving.handshakes -= 1
    if transport is None or transport.get_extra_info("ssl_object") is None:
        # The client went away before the handshake could begin: uvloop's start_tls()
        # then hands back a closed transport, whose protocol never hears of the loss.
        logger.info("TLS with %s: handshake failed: the connection was closed",
                    client_address)
        counters.tls_failed += 1
        reader.connection_lost(None)
        if transport is not None:
            transport.abort()
        return False
    reader._upgraded(transport)
    return True
