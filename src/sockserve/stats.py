"""Statistics: live counters inside a server, frozen snapshots outside it."""

from __future__ import annotations

from dataclasses import dataclass

from .concurrency.pool import PoolStatistics
from .concurrency.prefork import SupervisorStatistics


@dataclass(slots=True)
class Counters:
    """Mutable counts kept by one server process (pre-forked workers keep their own)."""

    accepted: int = 0  # connections or datagrams taken from the socket
    denied: int = 0  # refused by verify_request() (or access rules) before any handler
    rejected: int = 0  # refused because the server was full (overload = "reject")
    tls_failed: int = 0  # TLS handshakes that failed
    tls_timed_out: int = 0  # TLS handshakes that did not finish in handshake_timeout


@dataclass(frozen=True)
class ServerStatistics:
    """``server.statistics()``: the counters, plus the pool's or workers' snapshot."""

    accepted: int
    denied: int
    rejected: int
    tls_failed: int
    tls_timed_out: int
    tls_in_progress: int  # handshakes the loop is driving now
    pool: PoolStatistics | None = None  # ThreadPoolMixIn
    workers: SupervisorStatistics | None = None  # PreForkMixIn, in the supervisor
