"""The async servers' rules between accept and the handler: the sync servers' rules.

In the order of ``BaseServer._handle_request_noblock()``: the connection (or datagram)
is counted as accepted, IPv4 clients of a dual-stack socket are shown as IPv4
(``unmap_ipv4_clients``), the access list decides, then the connection limits (stream
servers), then ``verify_request()``.  Refusals are logged on ``sockserve.server`` and
counted in the server's statistics, as the sync servers do.  Each rule costs one
attribute test while its option is off.

Past ``max_connections`` a connection is rejected, whatever ``overload`` says: an
event loop has no public way to pause accepting.  (Closing the asyncio server and
opening another would do, but asyncio loses a connection it accepted and had not yet
set up when its server closes.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ._connections import client_host

if TYPE_CHECKING:
    from ._aio_serving import Serving
    from ._aio_streams import ConnectionReader

logger = logging.getLogger("sockserve.server")


def allowed(server: Any, client_address: Any) -> bool:
    """Whether the access list lets *client_address* in; a refusal is counted and logged."""
    if server.access_list.check(client_address):
        return True
    server._sockserve_counters.denied += 1
    logger.info("access denied to %s", client_address)
    return False


def admit(serving: Serving, reader: ConnectionReader, transport: asyncio.Transport,
          client_address: Any) -> bool:
    """Count *reader* as open unless ``max_connections`` or ``max_connections_per_ip``
    refuses it (then it is rejected: ``reject()``)."""
    server = serving.server
    max_total, per_ip = server.max_connections, server.max_connections_per_ip
    if max_total is not None and serving.admitted >= max_total:
        reject(serving, transport, client_address, "max_connections reached")
        return False
    if per_ip is not None:
        host = client_host(client_address)
        if host is not None:
            per_host = serving.per_host
            if per_host[host] >= per_ip:
                reject(serving, transport, client_address, "max_connections_per_ip reached")
                return False
            per_host[host] += 1
            reader._host = host
    reader._admitted = True
    serving.admitted += 1
    return True


def reject(serving: Serving, transport: asyncio.Transport, client_address: Any,
           reason: str) -> None:
    """Refuse a connection a limit does not allow: busy reply, close, count, log."""
    server = serving.server
    server._sockserve_counters.rejected += 1
    logger.warning("rejecting %s: %s", client_address, reason)
    busy_reply = server.busy_reply
    if busy_reply is not None and server.ssl_context is None:  # else before the TLS
        transport.write(busy_reply)  # handshake; sent at once: a new connection has room
    if transport.get_write_buffer_size():
        transport.abort()  # never keep a rejected client's connection open to flush it
    else:
        transport.close()


def oversized(server: Any, data: bytes, client_address: Any) -> bytes | None:
    """A datagram longer than ``max_packet_size``: its first ``max_packet_size`` bytes,
    as the stdlib's ``recvfrom()`` would return, or None (counted, logged) when
    ``drop_oversized_packets`` is set."""
    size = server.max_packet_size
    if not server.drop_oversized_packets:
        return data[:size]
    server._sockserve_counters.oversized += 1
    logger.warning("datagram from %s longer than max_packet_size (%d bytes): dropped",
                   client_address, size)
    return None
