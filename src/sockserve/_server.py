"""The socket servers: TCPServer, UDPServer and the Unix-domain servers.

Same hooks, attributes and defaults as the stdlib's; Unix socket files are cleaned up
(``_listen.py``) and stream connections are tracked for limits and drain.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections.abc import Collection
from typing import Any

from ._base import BaseServer, RequestDropped
from ._listen import OwnedSocketFile, is_filesystem_path, remove_stale_socket_file
from .address import make_listening
from .stats import DROP_WARNING_INTERVAL

logger = logging.getLogger("sockserve.server")

__all__ = ["BaseServer", "TCPServer", "UDPServer", "UnixStreamServer", "UnixDatagramServer"]

# A plain int: socket.MSG_TRUNC is an IntFlag member, and `&` with it runs enum code.
_MSG_TRUNC = int(socket.MSG_TRUNC)


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
        self._socket_files: list[OwnedSocketFile] = []
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
            self._socket_files.append(OwnedSocketFile.after_bind(self.server_address))
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
        files, self._socket_files = getattr(self, "_socket_files", []), []
        for socket_file in files:
            socket_file.remove()
        for sock in self.extra_sockets:
            sock.close()
        self.socket.close()

    @classmethod
    def from_socket(cls, sock: socket.socket, RequestHandlerClass: Any) -> Any:
        """A server on a socket bound elsewhere; see ``from_sockets()``."""
        return cls.from_sockets([sock], RequestHandlerClass)

    @classmethod
    def from_sockets(cls, socks: list[socket.socket], RequestHandlerClass: Any, *,
                     own_files: bool | Collection[socket.socket] = True) -> Any:
        """One server on sockets bound elsewhere: ``address.bind_sockets()`` (several
        addresses), an inherited descriptor (``fd://N``, a restart, systemd).

        Each socket must already be bound, all of this server's type; a stream socket
        that does not listen yet is made to (``request_queue_size``).  The first becomes ``self.socket`` (and ``server_address``), the
        others ``extra_sockets``; the server owns them all, and the Unix socket files
        among them (removed on close) unless *own_files* is False, or the collection of
        those sockets whose files it owns (not a file systemd or a parent process
        made).  ``server_bind()``/``server_activate()`` are not called.

        Raises:
            ValueError: no socket, or one of another type than ``socket_type``.
            AddressError: a socket is not bound, or is a connected one.
        """
        if not socks or any(sock.type != cls.socket_type for sock in socks):
            raise ValueError(f"{cls.__name__} needs sockets of type "
                             f"{socket.SocketKind(cls.socket_type).name}")
        for sock in socks:
            make_listening(sock, cls.request_queue_size, f"socket {sock.fileno()}")
        server = cls(socks[0].getsockname(), RequestHandlerClass, bind_and_activate=False)
        server.socket.close()
        server.socket, server.extra_sockets = socks[0], list(socks[1:])
        server.address_family = socks[0].family
        owned = socks if own_files is True else own_files or ()
        for sock in socks:
            name = sock.getsockname()
            if sock.family == getattr(socket, "AF_UNIX", None) and is_filesystem_path(name) \
                    and any(sock is mine for mine in owned):
                server._socket_files.append(OwnedSocketFile.after_bind(name))
        return server

    def _sockserve_share_listeners(self) -> None:
        """Other processes accept on these sockets too (pre-forked workers, a restart's
        new copy): each is woken for every connection and only one wins, so never wait
        in accept() for what another took.  Stream listeners become non-blocking (the
        flag belongs to the open file, so it covers every process; accepted sockets
        stay blocking).  A datagram socket stays blocking for the replies that leave
        through it, and receives with MSG_DONTWAIT instead."""
        if self.socket_type == socket.SOCK_DGRAM:
            self._sockserve_receive_flags = int(socket.MSG_DONTWAIT)
        else:
            for listener in (self.socket, *self.extra_sockets):
                listener.setblocking(False)

    @property
    def server_addresses(self) -> list[Any]:
        """Every address served: ``server_address`` first."""
        return [self.server_address, *(s.getsockname() for s in self.extra_sockets)]

    def disown_socket_file(self) -> None:
        """Leave the Unix socket files on close: another process serves them now."""
        self._socket_files = []

    def fileno(self) -> int:
        return self.socket.fileno()

    def get_request(self) -> tuple[Any, Any]:
        return (self._sockserve_listener or self.socket).accept()

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
        self._sockserve_connections.release(request)
        request.close()


class UDPServer(TCPServer):
    """A datagram server: each packet is a request ``(data, socket)``."""

    allow_reuse_address = False
    allow_reuse_port = False
    socket_type = socket.SOCK_DGRAM
    max_packet_size = 8192
    # The stdlib hands the handler the first max_packet_size bytes of a longer
    # datagram; with this set such a datagram is dropped, logged and counted instead.
    drop_oversized_packets = False
    # Flags for every receive: pre-forked workers share the socket and must not block
    # in recvfrom() after another took the datagram, while the socket stays blocking
    # for the replies that leave through it (PreForkMixIn sets MSG_DONTWAIT).
    _sockserve_receive_flags = 0

    def get_request(self) -> tuple[Any, Any]:
        listener = self._sockserve_listener or self.socket  # replies leave from it too
        receive_flags = self._sockserve_receive_flags
        if not self.drop_oversized_packets:
            data, client_addr = listener.recvfrom(self.max_packet_size, receive_flags)
            return (data, listener), client_addr
        data, _, flags, client_addr = listener.recvmsg(self.max_packet_size, 0, receive_flags)
        if flags & _MSG_TRUNC:  # recvmsg(2): the datagram was longer than asked
            self._sockserve_counters.oversized += 1
            logger.warning("datagram from %s longer than max_packet_size (%d bytes): "
                           "dropped", client_addr, self.max_packet_size)
            raise RequestDropped(errno.EMSGSIZE, "oversized datagram dropped")
        return (data, listener), client_addr

    _sockserve_drops_unlogged = 0  # replies dropped since the last warning
    _sockserve_drop_logged_at = -DROP_WARNING_INTERVAL

    def _sockserve_before_serving(self) -> None:
        """With a ``write_timeout``, replies wait for room at most that long
        (``SO_SNDTIMEO``): a Unix datagram client that does not read would otherwise
        hold the handler replying to it for ever.  Without one the socket is left as
        it is (its replies wait for ever, as the stdlib's do, unless the application
        set the option itself)."""
        super()._sockserve_before_serving()
        if self.write_timeout is None:
            return
        seconds = max(self.write_timeout, 1e-6)  # 0 would mean "no limit"
        timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))
        for sock in (self.socket, *self.extra_sockets):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)

    def _sockserve_reply_dropped(self, client_address: Any, reason: str) -> None:
        """A handler's reply could not be sent: counted, and logged now and then."""
        self._sockserve_counters.replies_dropped += 1
        self._sockserve_drops_unlogged += 1
        now = time.monotonic()
        if now - self._sockserve_drop_logged_at >= DROP_WARNING_INTERVAL:
            logger.warning("%d datagram replies dropped; the last, to %s: %s",
                           self._sockserve_drops_unlogged, client_address, reason)
            self._sockserve_drop_logged_at, self._sockserve_drops_unlogged = now, 0

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
