"""Framed handlers served on the serving loop: no thread per connection.

A ``MessageRequestHandler`` declares its framing ("line", "length" or "chunk") and
is called once per complete message; it returns the reply.  ``EventedMixIn`` keeps
every connection in the serving loop's selector: an idle connection is a socket, a
small buffer and a handler object, never a thread.  Handlers run on the loop, like
asyncio Protocol callbacks, so they must not block; put blocking work elsewhere.
"""

from __future__ import annotations

import errno
import logging
import math
import selectors
import socket
import ssl
import time
from typing import Any

from ._mixins import _ConcurrencyMixIn
from ._server import TCPServer
from ._wakeup import Waker
from .framing import Framer, FramingName, make_framer

logger = logging.getLogger("sockserve.server")

RECEIVE_SIZE = 64 * 1024
# Stop reading from a client whose replies pile up unread (it does not read): resume
# once they are sent.  Bounded memory per connection, like a Protocol's pause_reading.
OUTPUT_HIGH_WATER = 256 * 1024


class MessageRequestHandler:
    """One instance per connection; ``handle_message()`` once per message.

    Attributes: ``request`` (the socket), ``client_address``, ``server`` as usual.
    """

    framing: FramingName = "line"
    max_message_size = 64 * 1024

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server
        self.closing = False

    def setup(self) -> None:
        """Called once the connection is accepted."""

    def handle_message(self, message: bytes) -> bytes | None:
        """Serve one message; the returned bytes (if any) are sent as the reply."""
        raise NotImplementedError

    def finish(self) -> None:
        """Called once when the connection ends, whichever side ends it."""

    def close(self) -> None:
        """End the connection once the replies so far are sent."""
        self.closing = True


# A non-blocking socket that cannot go on now: plain, or TLS (a partial record to read,
# a full buffer to write to).
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Connection:
    """One client on the loop: receive, frame, call the handler, send."""

    __slots__ = ("server", "sock", "handler", "framer", "output", "events", "served",
                 "held")

    def __init__(self, server: Any, sock: socket.socket, handler: MessageRequestHandler,
                 framer: Framer) -> None:
        self.server = server
        self.sock = sock
        self.handler = handler
        self.framer = framer
        self.output = bytearray()
        self.events = selectors.EVENT_READ
        self.served = False  # a message has been handled
        # Messages received but held back while the replies so far pile up unsent.
        self.held: list[bytes] = []

    @property
    def between_messages(self) -> bool:
        """Its first message served, no part of the next one read, its replies sent."""
        return self.served and not self.framer.pending and not self.output and not self.held

    def sockserve_ready(self, events: int) -> None:
        try:
            if events & selectors.EVENT_WRITE:
                self._flush()
            if self.held:
                self._serve(self.held)  # before reading more, in order
            elif events & selectors.EVENT_READ and self.events & selectors.EVENT_READ:
                self._receive()
        except ConnectionError as exc:  # reset or gone: nothing more can be sent
            logger.debug("%s: %s", self.handler.client_address, exc)
            self.end()
            return
        except Exception:  # e.g. EBADF: the handler closed its socket
            self.server.handle_error(self.sock, self.handler.client_address)
            self.end()
            return
        if self.sock.fileno() < 0 or (self.handler.closing and not self.output):
            self.end()
        else:
            self._watch()

    def _receive(self) -> None:
        buffer = self.server._evented_buffer
        try:
            count = self.sock.recv_into(buffer)
        except WOULD_BLOCK:
            return
        except ConnectionError:
            count = 0
        if not count:
            self.handler.closing = True  # the client is done: send what is left, end
            return
        try:
            messages = self.framer.feed(memoryview(buffer)[:count])
        except Exception:  # a frame too long
            self._fail()
            return
        self._serve(messages)

    def _serve(self, messages: list[bytes]) -> None:
        """Call the handler for each message in turn; once the replies so far pile up
        unsent, hold the rest back until they are sent (bounded memory per client)."""
        handler, framer = self.handler, self.framer
        for n, message in enumerate(messages):
            if handler.closing:
                break  # close() asked for no more
            if len(self.output) >= OUTPUT_HIGH_WATER:
                self.held = messages[n:]
                return
            self.served = True
            try:
                reply = handler.handle_message(message)
            except Exception:
                self._fail()
                return
            if reply is not None:
                self._send(framer.frame(reply))
        if self.held:
            self.held = []
        if framer.pending and not handler.closing:
            try:
                framer.feed(b"")  # raises now if what is left can no longer fit
            except Exception:
                self._fail()

    def _fail(self) -> None:
        """The handler or the framing failed: report it, send the replies to earlier
        messages, then end (no more messages are served)."""
        self.server.handle_error(self.sock, self.handler.client_address)
        self.handler.closing = True
        self.held = []

    def _send(self, data: bytes) -> None:
        if not self.output:
            try:
                sent = self.sock.send(data)
            except WOULD_BLOCK:
                sent = 0
            data = data[sent:]
        self.output += data

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.output)
        except WOULD_BLOCK:
            return
        del self.output[:sent]

    def _watch(self) -> None:
        """Select for writing while output waits; stop reading while it piles up."""
        wanted = selectors.EVENT_WRITE if self.output else 0
        if len(self.output) < OUTPUT_HIGH_WATER and not self.handler.closing \
                and not self.held:
            wanted |= selectors.EVENT_READ
        if wanted != self.events:
            self.events = wanted
            selector = self.server._sockserve_selector
            if selector is not None:
                selector.modify(self.sock, wanted or selectors.EVENT_READ, self)

    def end(self) -> None:
        """Unregister, let the handler finish, close through the server's hooks."""
        selector = self.server._sockserve_selector
        if selector is not None:
            try:
                selector.unregister(self.sock)  # found even if its handler closed it
            except (KeyError, ValueError):
                pass  # not registered (yet, or any more)
        self.server._evented_connections.discard(self)
        try:
            self.handler.finish()
        except Exception:
            self.server.handle_error(self.sock, self.handler.client_address)
        finally:
            self.server._sockserve_end(self.sock)


class EventedMixIn(_ConcurrencyMixIn):
    """Serve ``MessageRequestHandler`` subclasses from the serving loop itself.

    Thousands of mostly idle connections cost no thread.  When the loop stops (shutdown,
    drain, a recycling worker), each connection is served until it is between messages
    and then ended (see ``_evented_linger``).  ``handle_request()`` serves one
    connection to its end before returning.
    """

    _evented_buffer: bytearray
    # After the loop stops: how long a connection may take to send its first message,
    # or the rest of the one it is in, before it is ended (a drain's deadline replaces
    # this).  A client's next message takes a round trip; a silent one must not hold up
    # the stop.
    stop_grace = 1.0
    # A TLS handshake in progress at the stop may complete (blocking the loop's thread
    # up to this long), then its connection lingers with the others.
    _sockserve_handshake_grace_on_stop = 1.0

    def _sockserve_check_settings(self) -> None:
        super()._sockserve_check_settings()
        if getattr(self, "socket_type", socket.SOCK_STREAM) != socket.SOCK_STREAM:
            raise TypeError(f"{type(self).__name__}: the evented model serves stream "
                            "connections; use a pool or pre-fork for datagrams")

    def process_request(self, request: Any, client_address: Any) -> None:
        handler_class = self.RequestHandlerClass
        if not (isinstance(handler_class, type) and
                issubclass(handler_class, MessageRequestHandler)):
            raise TypeError(f"{type(self).__name__} serves MessageRequestHandler "
                            f"subclasses, not {handler_class!r}")
        request.setblocking(False)
        handler = handler_class(request, client_address, self)
        framer = make_framer(handler.framing, handler.max_message_size)
        connection = _Connection(self, request, handler, framer)
        if "_evented_buffer" not in self.__dict__:  # one receive buffer for all
            self._evented_buffer = bytearray(RECEIVE_SIZE)
        handler.setup()  # if it raises, the caller reports it and closes the request
        self._evented_connections.add(connection)
        if handler.closing or request.fileno() < 0:  # close() in setup(), or it closed
            connection.end()                          # its socket: nothing to serve
            return
        selector = self._sockserve_selector
        if selector is not None:
            try:
                selector.register(request, selectors.EVENT_READ, connection)
            except BaseException:  # e.g. epoll's watch limit: the caller reports it
                connection.end()
                raise
            return
        self._serve_blocking(connection)  # handle_request(): no loop to come back to

    def _serve_blocking(self, connection: _Connection) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(connection.sock, selectors.EVENT_READ)
            while connection in self._evented_connections:
                selector.modify(connection.sock, connection.events or selectors.EVENT_READ)
                for _, ready in selector.select():
                    connection.sockserve_ready(ready)

    @property
    def _evented_connections(self) -> set[_Connection]:
        connections: set[_Connection] = self.__dict__.setdefault("_evented_connections", set())
        return connections

    def _sockserve_loop_ended(self, waker: Waker, stopped: bool) -> None:
        try:
            if stopped:
                self._evented_linger(waker)
        finally:
            for connection in list(self._evented_connections):
                try:
                    connection._flush()
                except OSError as exc:
                    if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                        logger.debug("flushing %s: %s", connection.handler.client_address,
                                     exc)
                connection.end()

    def _evented_linger(self, waker: Waker) -> None:
        """After a normal stop: serve each connection until it is between messages,
        then end it, for at most ``stop_grace`` seconds, or, during a drain, until the
        drain's deadline, where what is left is cut.  Waiting for a first message too
        means that a connection accepted just before the stop is answered, not dropped.

        Uses a selector of its own: the loop's still holds the listeners.
        """
        connections = self._evented_connections
        loop_selector = self._sockserve_selector
        if not connections or loop_selector is None:
            return
        try:
            selector = selectors.DefaultSelector()
        except OSError:  # out of descriptors, say: no grace then
            return
        grace_until = time.monotonic() + self.stop_grace
        with selector:
            selector.register(waker, selectors.EVENT_READ)
            for connection in list(connections):
                try:
                    loop_selector.unregister(connection.sock)
                    selector.register(connection.sock,
                                      connection.events or selectors.EVENT_READ, connection)
                except (KeyError, ValueError, OSError):  # its handler closed the socket
                    connection.end()
            self._sockserve_selector = selector
            try:
                wait: float | None = 0.0  # first, what already waits unread
                while connections:
                    active = set()
                    for key, events in selector.select(wait):
                        if key.fileobj is waker:
                            self._sockserve_read_wakeups(waker)
                        else:
                            key.data.sockserve_ready(events)
                            active.add(key.data)
                    # Quiet ones (nothing more to read right now) end between messages.
                    for connection in list(connections):
                        if connection not in active and connection.between_messages:
                            connection.end()
                    drain_until = self._sockserve_drain_until
                    left = (grace_until if drain_until is None else drain_until) \
                        - time.monotonic()
                    if left <= 0:
                        if drain_until is not None:
                            self._sockserve_connections.cut_all()  # counted as cut
                        return
                    # Look again before waiting while some are busy (pipelining).
                    wait = 0.0 if active else None if left == math.inf else left
            finally:
                self._sockserve_selector = loop_selector


class EventedTCPServer(EventedMixIn, TCPServer):
    pass


if hasattr(socket, "AF_UNIX"):
    from ._server import UnixStreamServer

    class EventedUnixStreamServer(EventedMixIn, UnixStreamServer):
        pass
