"""sockserve server classes that combine mix-ins, for ``socketserver_api.py``.

``socketserver_api.py MODULE:CLASS`` serves one class by name, and sockserve exports no
class for a pre-forked server whose workers each run a thread pool or a green hub;
this module names them.  It re-exports sockserve's handler bases, so ``handlers.make_handlers()`` builds the
very same echo handlers on them as on ``sockserve`` itself:

    python bench/servers/socketserver_api.py sockserve_models:PreForkThreadPoolTCPServer workers=2
"""

from __future__ import annotations

from sockserve import (
    DatagramRequestHandler,
    GreenMixIn,
    PreForkMixIn,
    StreamRequestHandler,
    TCPServer,
    ThreadPoolMixIn,
)

__all__ = ["DatagramRequestHandler", "PreForkGreenTCPServer", "PreForkThreadPoolTCPServer",
           "StreamRequestHandler"]


class PreForkThreadPoolTCPServer(PreForkMixIn, ThreadPoolMixIn, TCPServer):
    """``workers`` processes accepting on one socket, each serving on its own pool."""


class PreForkGreenTCPServer(PreForkMixIn, GreenMixIn, TCPServer):
    """``workers`` processes accepting on one socket, each with its own green hub."""
