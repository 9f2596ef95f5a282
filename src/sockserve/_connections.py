"""The stream connections a server has accepted and not yet closed.

One registry per server process: it answers "how many are open" (``max_connections``),
"how many from this address" (``max_connections_per_ip``), and lets a drain wait for
them and cut the ones left at its deadline.
"""

from __future__ import annotations

import collections
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any


def client_host(client_address: Any) -> str | None:
    """The IP address of an inet client (IPv4-mapped IPv6 shown as IPv4), else None."""
    if isinstance(client_address, tuple) and client_address and isinstance(client_address[0], str):
        host = client_address[0]
        return host[7:] if host.startswith("::ffff:") and "." in host else host
    return None


class ConnectionRegistry:
    """Open connections, each known by the socket object that serves it now.

    Not by descriptor: a handler may close its socket before the server releases it
    (its ``fileno()`` is then -1, and the number may already serve a new connection).
    A TLS wrap or a green adoption serves the connection through a new object:
    ``replace()`` follows it.  Registered objects are alive, so their ids are unique.

    Args:
        on_release: called (outside the lock) after a connection is released, so a
            serving loop paused at ``max_connections`` can resume.
    """

    def __init__(self, on_release: Callable[[], None] = lambda: None) -> None:
        self._cond = threading.Condition()
        self._open: dict[int, tuple[Any, str | None]] = {}  # id(socket) -> (socket, host)
        self._per_host: collections.Counter[str] = collections.Counter()
        self._on_release = on_release
        self._cut: set[int] = set()  # ids of the cut ones
        self.finished_total = 0  # released without having been cut
        self.cut_total = 0  # cut by cut_all()

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, sock: Any, client_address: Any, *, max_total: int | None = None,
              max_per_host: int | None = None) -> str | None:
        """Record an accepted connection, unless a limit says no.

        Returns:
            None if recorded, else the name of the limit that refused it.
        """
        host = client_host(client_address)
        with self._cond:
            if max_total is not None and len(self._open) >= max_total:
                return "max_connections"
            if host is not None and max_per_host is not None and \
                    self._per_host[host] >= max_per_host:
                return "max_connections_per_ip"
            self._open[id(sock)] = (sock, host)
            if host is not None:
                self._per_host[host] += 1
            return None

    def replace(self, old: Any, sock: Any) -> None:
        """The connection served through *old* is now served through *sock* (e.g. an
        SSLSocket); if it was cut meanwhile (through *old*, which may no longer hold
        it), *sock* is shut down now."""
        with self._cond:
            entry = self._open.pop(id(old), None)
            if entry is None:
                return
            self._open[id(sock)] = (sock, entry[1])
            cut = id(old) in self._cut
            if cut:
                self._cut.discard(id(old))
                self._cut.add(id(sock))
        if cut:
            shut_down(sock)

    def release(self, sock: Any) -> None:
        """Forget the connection served through *sock* (about to be closed, or closed
        already); unknown sockets are ignored."""
        key = id(sock)
        with self._cond:
            entry = self._open.pop(key, None)
            if entry is None:
                return
            host = entry[1]
            if host is not None:
                self._per_host[host] -= 1
                if not self._per_host[host]:
                    del self._per_host[host]
            if key in self._cut:
                self._cut.discard(key)
            else:
                self.finished_total += 1
            self._cond.notify_all()
        self._on_release()

    def wait_empty(self, timeout: float | None) -> bool:
        """Wait until every connection is released; False if *timeout* came first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._open:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def counts(self) -> tuple[int, int]:
        """(finished_total, cut_total), read together."""
        with self._cond:
            return self.finished_total, self.cut_total

    def open_and_counts(self) -> tuple[int, int, int]:
        """(open now, finished_total, cut_total), read together."""
        with self._cond:
            return len(self._open), self.finished_total, self.cut_total

    def cut_all(self) -> int:
        """Shut down every open connection in both directions; returns how many.

        A handler blocked in recv() then sees end-of-file and one blocked in send()
        an error, so each ends through its usual error handling and releases itself
        (counted as cut, not finished).
        """
        with self._cond:
            fresh = {key: sock for key, (sock, _) in self._open.items() if key not in self._cut}
            self._cut.update(fresh)
            self.cut_total += len(fresh)
        for sock in fresh.values():
            shut_down(sock)
        return len(fresh)


def shut_down(sock: Any) -> None:
    """Shut *sock* down in both directions, if it is still open."""
    try:
        if isinstance(sock, ssl.SSLSocket):
            # socket.socket's own: an SSLSocket's would also drop its TLS state, which
            # a handshake still in progress then trips over.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or reset
