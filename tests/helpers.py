"""Client-side helpers for the tests: real sockets, every step with a timeout."""

from __future__ import annotations

import socket
from typing import Any

# Every blocking client step in the suite uses this; pytest-timeout backs it up.
IO_TIMEOUT = 5.0


def connect(address: Any, family: int = socket.AF_INET) -> socket.socket:
    """A connected stream client with IO_TIMEOUT set."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(IO_TIMEOUT)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def recv_all(sock: socket.socket) -> bytes:
    """Everything until the server closes its side."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
