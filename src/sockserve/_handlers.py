"""Request handlers: one instance per request, ``setup() → handle() → finish()``.

Same attributes, defaults and call order as the stdlib's handlers.
"""

from __future__ import annotations

import io
import socket
from typing import Any

from ._streams import StreamLimits, guarded_files


class BaseRequestHandler:
    """Base class for request handlers; subclasses define ``handle()``.

    The constructor stores ``request``, ``client_address`` and ``server``, then runs
    ``setup()``, ``handle()`` and ``finish()``.  ``finish()`` runs even when
    ``handle()`` raises, but not when ``setup()`` does.
    """

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self) -> None:
        """Prepare for ``handle()``; does nothing by default."""

    def handle(self) -> None:
        """Serve the request; does nothing by default."""

    def finish(self) -> None:
        """Clean up after ``handle()``; does nothing by default."""


class StreamRequestHandler(BaseRequestHandler):
    """Gives ``handle()`` file objects over the connection: ``rfile`` and ``wfile``."""

    # rfile is buffered, or reading a line would cost one recv() per byte; wfile is
    # unbuffered by default, so a reply is on the wire as soon as write() returns.
    rbufsize = -1
    wbufsize = 0

    # Applied to the connection with settimeout() when not None.
    timeout: float | None = None

    # Set TCP_NODELAY; worth it only with a buffered wfile (wbufsize != 0), which
    # already coalesces small writes.
    disable_nagle_algorithm = False

    def setup(self) -> None:
        self.connection = self.request
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.wfile: Any
        limits = StreamLimits.from_server(self.server)
        if limits is not None:  # the server sets timeouts or a line limit (_streams.py)
            self.rfile, self.wfile = guarded_files(self.connection, limits, self.rbufsize,
                                                   self.wbufsize)
            return
        self.rfile = self.connection.makefile("rb", self.rbufsize)
        if self.wbufsize == 0:
            self.wfile = _SocketWriter(self.connection)
        else:
            self.wfile = self.connection.makefile("wb", self.wbufsize)

    def finish(self) -> None:
        if not self.wfile.closed:
            try:
                self.wfile.flush()
            except OSError:
                pass  # the peer is gone (e.g. ECONNABORTED); nothing left to deliver
        try:
            self.wfile.close()  # a buffered file tries to flush again: as above
        except OSError:
            pass
        finally:
            self.rfile.close()


class _SocketWriter(io.BufferedIOBase):
    """A writable file that sends each ``write()`` whole, holding nothing back.

    ``socket.makefile('wb', 0)`` would give a raw file whose ``write()`` may send only
    part of the data; ``sendall()`` sends it all, so no ``flush()`` is ever needed.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        if type(b) is bytes:  # the usual case: no memoryview needed for its size
            return len(b)
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self) -> int:
        return self._sock.fileno()


class DatagramRequestHandler(BaseRequestHandler):
    """Gives ``handle()`` the packet as ``rfile`` and collects the reply in ``wfile``.

    The reply is sent to the client in ``finish()``, as one datagram (an empty one if
    nothing was written, as in the stdlib).
    """

    def setup(self) -> None:
        self.packet, self.socket = self.request
        self.rfile = io.BytesIO(self.packet)
        self.wfile = io.BytesIO()

    def finish(self) -> None:
        # A reply its client cannot take is dropped and counted by sockserve's
        # servers, as a datagram may be lost, rather than raised with a traceback.
        if not self.client_address and self._reply_dropped("the client has no address"):
            return  # an unbound Unix client: nowhere to reply to
        try:
            self.socket.sendto(self.wfile.getvalue(), self.client_address)
        except BlockingIOError:  # its queue stayed full for write_timeout (SO_SNDTIMEO)
            if not self._reply_dropped("it does not read"):
                raise
        except (ConnectionRefusedError, FileNotFoundError):  # its socket is gone
            if not self._reply_dropped("its socket is gone"):
                raise

    def _reply_dropped(self, reason: str) -> bool:
        """Tell the server; False if it is not one of sockserve's (then the error is
        the caller's, as in the stdlib)."""
        dropped = getattr(self.server, "_sockserve_reply_dropped", None)
        if dropped is None:
            return False
        dropped(self.client_address, reason)
        return True
