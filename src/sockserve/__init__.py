"""sockserve: Python's socketserver model, made ready for production.

``import sockserve as socketserver`` works: every public name of the stdlib module is
here with the same behaviour (see docs/compatibility.md for the deliberate fixes).
"""

from __future__ import annotations

import os as _os
import socket as _socket

from ._handlers import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler
from ._mixins import ThreadingMixIn, ThreadingTCPServer, ThreadingUDPServer
from ._server import BaseServer, TCPServer, UDPServer
from ._evented import EventedMixIn, EventedTCPServer, MessageRequestHandler
from ._green import GreenMixIn, GreenTCPServer
from ._workers import ThreadPoolMixIn, ThreadPoolTCPServer, ThreadPoolUDPServer
from .stats import ServerStatistics

__version__ = "0.1.0"

__all__ = [
    "BaseServer", "TCPServer", "UDPServer",
    "ThreadingUDPServer", "ThreadingTCPServer",
    "BaseRequestHandler", "StreamRequestHandler",
    "DatagramRequestHandler", "ThreadingMixIn",
    # sockserve's own
    "ThreadPoolMixIn", "ThreadPoolTCPServer", "ThreadPoolUDPServer", "ServerStatistics",
    "EventedMixIn", "EventedTCPServer", "MessageRequestHandler",
    "GreenMixIn", "GreenTCPServer",
]

if hasattr(_os, "fork"):
    from ._mixins import ForkingMixIn, ForkingTCPServer, ForkingUDPServer
    from ._prefork import PreForkMixIn, PreForkTCPServer, PreForkUDPServer

    __all__ += ["ForkingUDPServer", "ForkingTCPServer", "ForkingMixIn",
                "PreForkMixIn", "PreForkTCPServer", "PreForkUDPServer"]

if hasattr(_socket, "AF_UNIX"):
    from ._mixins import ThreadingUnixDatagramServer, ThreadingUnixStreamServer
    from ._server import UnixDatagramServer, UnixStreamServer

    from ._workers import ThreadPoolUnixDatagramServer, ThreadPoolUnixStreamServer
    from ._green import GreenUnixStreamServer
    from ._evented import EventedUnixStreamServer

    __all__ += ["UnixStreamServer", "UnixDatagramServer",
                "ThreadingUnixStreamServer", "ThreadingUnixDatagramServer",
                "ThreadPoolUnixStreamServer", "ThreadPoolUnixDatagramServer",
                "GreenUnixStreamServer", "EventedUnixStreamServer"]
    if hasattr(_os, "fork"):
        from ._mixins import ForkingUnixDatagramServer, ForkingUnixStreamServer
        from ._prefork import PreForkUnixDatagramServer, PreForkUnixStreamServer

        __all__ += ["ForkingUnixStreamServer", "ForkingUnixDatagramServer",
                    "PreForkUnixStreamServer", "PreForkUnixDatagramServer"]
