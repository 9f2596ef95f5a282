"""The socket servers: TCPServer, UDPServer and the Unix-domain servers.

Same hooks, attributes and defaults as the stdlib's; Unix socket files are cleaned up
(``_listen.py``) and stream connections are tracked for limits and drain.
"""

from __future__ import annotations

import socket
from typing import Any

from ._base import BaseServer
from ._listen import OwnedSocketFile, is_filesystem_path, remove_stale_socket_file

__all__ = ["BaseServer", "TCPServer", "UDPServer", "UnixStreamServer", "UnixDatagramServer"]


class TCPServer(BaseServer):
    """A stream-socket server; ``AF_UNIX`` subclasses reuse it, as in the stdlib."""

    address_family = socket.AF_INET
    socket_type = socket.SOCK_STREAM
    request_queue_size = 5
    allow_reuse_address = False
    allow_reuse_port = False

    def __init__(self, server_address: Any, RequestHandlerClass: Any,
                 bind_and_activate: bool = True) -> None:
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        self._socket_file: OwnedSocketFile | None = None
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    def server_bind(self) -> None:
        """Set the reuse options, bind, and read back the bound address."""
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.allow_reuse_port and hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        unix_file = self.address_family == getattr(socket, "AF_UNIX", None) and \
            is_filesystem_path(self.server_address)
        if unix_file:
            remove_stale_socket_file(self.server_address, self.socket_type)
        self.socket.bind(self.server_address)
        if unix_file:
            self._socket_file = OwnedSocketFile.after_bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        self.socket.listen(self.request_queue_size)

    def server_close(self) -> None:
        """Close the listening socket and remove the Unix socket file it created.

        With ``drain_timeout`` set, open connections first get that long to finish
        and are then cut, so closing never hangs on idle keep-alive clients.
        """
        if self.drain_timeout is not None:
            self._sockserve_finish_connections(self.drain_timeout)
        socket_file = getattr(self, "_socket_file", None)
        if socket_file is not None:
            self._socket_file = None
            socket_file.remove()
        self.socket.close()

    @classmethod
    def from_socket(cls, sock: socket.socket, RequestHandlerClass: Any) -> Any:
        """A server on a socket bound elsewhere: ``address.bind_sockets()``, an
        inherited descriptor (``fd://N``, a restart), systemd socket activation.

        The socket must already be bound (and listening, for streams); the server owns
        it from now on.  ``server_bind()`` and ``server_activate()`` are not called.
        """
        server = cls(sock.getsockname(), RequestHandlerClass, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        server.address_family = sock.family
        return server

    def disown_socket_file(self) -> None:
        """Leave the Unix socket file on close: another process serves it now."""
        self._socket_file = None

    def fileno(self) -> int:
        return self.socket.fileno()

    def get_request(self) -> tuple[Any, Any]:
        return self.socket.accept()

    def shutdown_request(self, request: Any) -> None:
        """Half-close the connection so the client sees EOF, then close it."""
        try:
            # Explicitly shut down: close() alone does not end the connection while a
            # forked child or another reference still holds the descriptor.
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client may already be gone
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        self._sockserve_connections.release(request.fileno())
        request.close()


class UDPServer(TCPServer):
    """A datagram server: each packet is a request ``(data, socket)``."""

    allow_reuse_address = False
    allow_reuse_port = False
    socket_type = socket.SOCK_DGRAM
    max_packet_size = 8192

    def get_request(self) -> tuple[Any, Any]:
        data, client_addr = self.socket.recvfrom(self.max_packet_size)
        return (data, self.socket), client_addr

    def server_activate(self) -> None:
        """Datagram sockets do not listen()."""

    def shutdown_request(self, request: Any) -> None:
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """The socket is shared by every request; nothing to close."""


if hasattr(socket, "AF_UNIX"):

    class UnixStreamServer(TCPServer):
        address_family = socket.AF_UNIX

    class UnixDatagramServer(UDPServer):
        address_family = socket.AF_UNIX
