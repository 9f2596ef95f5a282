"""Statistics: live counters inside a server, frozen snapshots outside it."""

from __future__ import annotations

from dataclasses import dataclass

from .concurrency.pool import PoolStatistics
from .concurrency.prefork import SupervisorStatistics


# Dropped datagram replies are logged at most this often (with how many since).
DROP_WARNING_INTERVAL = 10.0


@dataclass(slots=True)
class Counters:
    """Mutable counts kept by one server process (pre-forked workers keep their own)."""

    accepted: int = 0  # connections or datagrams taken from the socket
    denied: int = 0  # refused by verify_request() (or access rules) before any handler
    rejected: int = 0  # refused by a limit (max_connections, per-IP, a full pool)
    tls_failed: int = 0  # TLS handshakes that failed
    tls_timed_out: int = 0  # TLS handshakes that did not finish in handshake_timeout
    oversized: int = 0  # datagrams dropped for exceeding max_packet_size
    replies_dropped: int = 0  # datagram replies their client could not take (see docs)


@dataclass(frozen=True)
class ServerStatistics:
    """``server.statistics()``: the counters, plus the pool's or workers' snapshot."""

    accepted: int
    denied: int
    rejected: int
    tls_failed: int
    tls_timed_out: int
    tls_in_progress: int  # handshakes the loop is driving now
    connections: int  # stream connections open now
    oversized: int  # datagrams dropped for exceeding max_packet_size
    replies_dropped: int  # async datagram replies dropped: too many waited for room
    pool: PoolStatistics | None = None  # ThreadPoolMixIn
    workers: SupervisorStatistics | None = None  # PreForkMixIn, in the supervisor


@dataclass(frozen=True)
class DrainReport:
    """What ``drain()`` (or ``server_close()`` with ``drain_timeout``) did."""

    open: int  # connections open when the drain began (and any taken from the backlog)
    finished: int  # of those, closed by their handlers before the deadline
    cut: int  # shut down at the deadline (counted in ``finished`` no more)
