"""The echo handlers, written once as plain socketserver handler code.

``make_handlers(module)`` builds them on any module with the socketserver API, so the
very same handler code runs on the stdlib's servers and on sockserve's models.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from _peer import CHUNK


def make_handlers(module: ModuleType) -> tuple[type[Any], type[Any]]:
    """The (stream, datagram) echo handler classes, based on *module*'s handlers."""

    class StreamEcho(module.StreamRequestHandler):  # type: ignore[name-defined, misc]
        """Echoes whatever arrives, as it arrives, until the client closes."""

        def handle(self) -> None:
            while True:
                # read1() returns what one recv() brings: no waiting for a full buffer.
                data = self.rfile.read1(CHUNK)
                if not data:
                    return
                self.wfile.write(data)  # wbufsize 0: a sendall(), nothing held back

    class DatagramEcho(module.DatagramRequestHandler):  # type: ignore[name-defined, misc]
        """Echoes each datagram."""

        def handle(self) -> None:
            self.wfile.write(self.rfile.read())

    return StreamEcho, DatagramEcho
