"""Unchanged blocking stream handlers, without a thread per connection.

``GreenMixIn`` hands each accepted connection to one hub thread (concurrency/green.py)
that runs its handler in a greenlet; ``self.request`` is a socket whose blocking calls
switch to the other connections, so ``StreamRequestHandler`` code written for
``ThreadingTCPServer`` runs as it is.  Needs the optional greenlet package
(``pip install 'sockserve[green]'``) and Linux's epoll.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from ._mixins import _ConcurrencyMixIn, run_request
from ._server import TCPServer
from .concurrency.green import Hub, require_greenlet


class GreenMixIn(_ConcurrencyMixIn):
    """Serve each stream connection in a greenlet on one hub thread.

    Semantics follow ``ThreadingMixIn``: the serving loop only accepts, the hub
    serves the connections, and ``server_close()`` waits for them to end when
    ``block_on_close`` is true (``drain_timeout`` bounds that, as for threads).  The
    hub thread is a daemon: a process that exits without ``server_close()`` abandons
    its open connections.  Handlers must not block outside their socket's I/O.
    """

    block_on_close = True
    _green_hub: Hub | None = None
    _green_hub_lock = threading.Lock()

    @property
    def hub(self) -> Hub:
        """The server's hub, started on first use (after a pre-fork, in the worker),
        and again should it fail (its connections end; see ``Hub``)."""
        hub = self._green_hub
        if hub is None or hub.failed:
            with self._green_hub_lock:
                if self._green_hub is None or self._green_hub.failed:
                    self._green_hub = Hub(name=f"{type(self).__name__}-hub")
                hub = self._green_hub
        return hub

    def _sockserve_forked(self) -> None:
        self._green_hub = None  # a parent's hub has no thread here
        self._green_hub_lock = threading.Lock()
        super()._sockserve_forked()

    def _sockserve_check_settings(self) -> None:
        super()._sockserve_check_settings()
        require_greenlet()
        if getattr(self, "socket_type", socket.SOCK_STREAM) != socket.SOCK_STREAM:
            raise TypeError(f"{type(self).__name__}: the green model serves stream "
                            "connections; use a pool or pre-fork for datagrams")

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to the hub, which serves it in a greenlet."""
        hub = self.hub
        green = hub.adopt(request)
        # At once, not when the hub gets to it: a drain must be able to cut it meanwhile.
        self._sockserve_connections.replace(request, green)
        try:
            hub.submit(green, lambda sock: self.process_request_greenlet(sock, client_address))
        except BaseException:
            self._sockserve_end(green)  # *request* is detached: end the connection here
            raise

    def process_request_greenlet(self, request: Any, client_address: Any) -> None:
        """Serve one connection on the hub, reporting errors via handle_error()."""
        run_request(self, request, client_address)

    def server_close(self) -> None:
        super().server_close()
        if self._green_hub is not None:
            self._green_hub.close(wait=self.block_on_close)


class GreenTCPServer(GreenMixIn, TCPServer):
    pass


if hasattr(socket, "AF_UNIX"):
    from ._server import UnixStreamServer

    class GreenUnixStreamServer(GreenMixIn, UnixStreamServer):
        pass
