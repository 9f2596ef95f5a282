"""Message framing for byte streams: pure code over bytes (sans-I/O), easy to fuzz.

A framer turns the bytes a connection receives into whole messages, and a reply into
the bytes to send.  ``MessageRequestHandler`` (``_evented.py``) uses one per
connection, so a handler is called once per message instead of reading the socket.
"""

from __future__ import annotations

import struct
from typing import Literal, Protocol

from .errors import SockServeError

FramingName = Literal["line", "length", "chunk"]


class FrameTooLong(SockServeError, ValueError):
    """A message is longer than the framer's ``max_size``."""


class Framer(Protocol):
    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Take received bytes; return the messages they complete (maybe none).

        Raises FrameTooLong for a message over the size limit, once the messages
        before it have been returned.
        """

    def frame(self, reply: bytes) -> bytes:
        """The bytes that carry *reply* to the peer."""

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a complete message."""


class LineFramer:
    """Messages end with ``b"\\n"`` (kept in the message, as ``readline()`` does).

    Raises FrameTooLong once *max_size* bytes arrive without a newline; the messages
    completed before it are returned first (the next ``feed()``, even of b"", raises).
    """

    def __init__(self, max_size: int = 64 * 1024) -> None:
        self._buffer = bytearray()
        self._max = max_size

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        buffer = self._buffer
        search_from = len(buffer)
        buffer += data
        messages = []
        begin = 0
        while (end := buffer.find(b"\n", search_from)) != -1:
            if end + 1 - begin > self._max:
                break
            messages.append(bytes(buffer[begin:end + 1]))
            begin = search_from = end + 1
        del buffer[:begin]
        if len(buffer) >= self._max and not messages:  # no room left for its newline
            raise FrameTooLong(f"line longer than {self._max} bytes")
        return messages  # with a too-long line left over, the next feed() raises

    def frame(self, reply: bytes) -> bytes:
        return reply

    @property
    def pending(self) -> int:
        return len(self._buffer)


class LengthPrefixFramer:
    """Each message is preceded by its length, a 4-byte big-endian unsigned integer.

    Raises FrameTooLong for a length over *max_size*; the messages completed before it
    are returned first (the next ``feed()``, even of b"", raises).
    """

    _header = struct.Struct(">I")

    def __init__(self, max_size: int = 64 * 1024) -> None:
        self._buffer = bytearray()
        self._max = max_size

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        messages: list[bytes] = []
        offset = 0
        size = self._header.size
        while len(buffer) - offset >= size:
            (length,) = self._header.unpack_from(buffer, offset)
            if length > self._max:
                if messages:
                    break  # kept: the next feed() raises
                raise FrameTooLong(f"message of {length} bytes, more than {self._max}")
            if len(buffer) - offset - size < length:
                break
            messages.append(bytes(buffer[offset + size:offset + size + length]))
            offset += size + length
        if offset:
            del buffer[:offset]
        return messages

    def frame(self, reply: bytes) -> bytes:
        return self._header.pack(len(reply)) + reply

    @property
    def pending(self) -> int:
        return len(self._buffer)


class ChunkFramer:
    """Every chunk received is a message (no framing): for echo-like protocols.  A
    chunk longer than *max_size* is split into messages of at most that size."""

    def __init__(self, max_size: int = 64 * 1024) -> None:
        self._max = max_size

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        size = self._max
        if len(data) <= size:
            return [bytes(data)] if data else []
        return [bytes(data[at:at + size]) for at in range(0, len(data), size)]

    def frame(self, reply: bytes) -> bytes:
        return reply

    @property
    def pending(self) -> int:
        return 0


FRAMERS: dict[str, type[LineFramer] | type[LengthPrefixFramer] | type[ChunkFramer]] = {
    "line": LineFramer, "length": LengthPrefixFramer, "chunk": ChunkFramer}


def make_framer(name: FramingName, max_size: int) -> Framer:
    """The framer called *name*.

    Raises:
        ValueError: an unknown name.
    """
    try:
        return FRAMERS[name](max_size)
    except KeyError:
        raise ValueError(f"unknown framing {name!r}; choose one of {sorted(FRAMERS)}") from None
