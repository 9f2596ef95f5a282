"""Production defaults: what sockserve's own entry points use, and how to ask for them.

Classes named like socketserver's keep the stdlib's defaults (no limits, no timeouts),
so existing code behaves as before.  Put ``ProductionDefaults`` first in a server's
bases, or use ``production()``, to get these instead; every value stays overridable.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._base import OverloadPolicy

T = TypeVar("T", bound=type)


class ProductionDefaults:
    """Limits and timeouts for servers that face real clients (see the values' reasons)."""

    # Backlog: room for bursts while the loop is busy (Linux caps it at somaxconn, 4096).
    request_queue_size = 1024
    # Restart without waiting out TIME_WAIT.  Not on datagram sockets (set back to
    # False below, DATAGRAM_EXCEPTIONS), where another socket could bind the port too
    # (CPython bpo-37228).
    allow_reuse_address = True
    # Enough for thousands of clients, low enough that a flood meets a limit before the
    # process runs out of descriptors (the default soft RLIMIT_NOFILE is often 1024+).
    max_connections: int | None = 1000
    max_connections_per_ip: int | None = None  # off: clients behind NAT share an address
    overload: OverloadPolicy = "pause"
    # nginx: keepalive_timeout 75 s, client_header/body_timeout 60 s, send_timeout 60 s.
    idle_timeout: float | None = 60.0
    read_timeout: float | None = 30.0
    write_timeout: float | None = 30.0
    connection_lifetime: float | None = None  # off: long transfers are legitimate
    max_line_length: int | None = 64 * 1024  # like asyncio's StreamReader limit
    handshake_timeout = 30.0  # AnyIO's TLS default
    drain_timeout: float | None = 30.0  # systemd's and Kubernetes' default grace period is 30 s
    max_packet_size = 65535  # a UDP datagram's maximum payload (the stdlib reads 8192)
    drop_oversized_packets = True  # never hand a handler a silently truncated datagram
    daemon_threads = True  # never keep the process alive for a stuck handler
    # Dual-stack sockets show IPv4 clients as ('a.b.c.d', port).  Not for datagrams
    # (DATAGRAM_EXCEPTIONS): a handler replying through self.server.socket, as stdlib
    # code may, could not send to that address from an IPv6 socket.
    unmap_ipv4_clients = True
    # Pre-forked workers drain for drain_timeout themselves; the supervisor waits a
    # little longer before SIGKILL, so a worker is only killed when it is stuck.
    graceful_timeout = 35.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "socket_type", None) != socket.SOCK_DGRAM:
            return
        for name in DATAGRAM_EXCEPTIONS:  # unless the class itself asks for them
            if _first_to_define(cls, name) is ProductionDefaults:
                setattr(cls, name, False)


# Production values that stay off on datagram servers (the reasons are above).
DATAGRAM_EXCEPTIONS = ("allow_reuse_address", "unmap_ipv4_clients")


def _first_to_define(cls: type, name: str) -> type | None:
    """The class in *cls*'s MRO whose own attribute *name* is the one it sees."""
    return next((base for base in cls.__mro__ if name in vars(base)), None)


def production(server_class: T, **overrides: Any) -> T:
    """*server_class* with ``ProductionDefaults`` applied, then *overrides*.

    Example::

        Server = production(sockserve.ThreadPoolTCPServer, max_workers=64)
    """
    return type(server_class.__name__, (ProductionDefaults, server_class), overrides)  # type: ignore[return-value]
