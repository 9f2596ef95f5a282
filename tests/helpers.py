"""Client-side helpers for the tests: real sockets, every step with a timeout."""

from __future__ import annotations

import os
import platform
import socket
import ssl
from typing import Any

import pytest

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


def wait_for(predicate: Any, timeout: float = IO_TIMEOUT, what: str = "condition") -> None:
    """Poll *predicate* until true, for state with no event to wait on (another process's).

    Raises AssertionError after *timeout*; never used where an Event or a reply can say
    the same thing.
    """
    import time
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def client_ctx(ca: Any, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A TLS client context trusting the test CA (a trustme.CA), offering *alpn*."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_hello(ca: Any) -> bytes:
    """The first bytes a TLS client sends (its ClientHello), for a test to send raw."""
    hello = ssl.MemoryBIO()
    conn = client_ctx(ca).wrap_bio(ssl.MemoryBIO(), hello, server_hostname="localhost")
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        return hello.read()
    raise AssertionError("a handshake completed with no server")


def listening_sockets(port: int, kind: str = "tcp") -> int:
    """How many sockets of this network namespace listen on *port* (/proc/net: TCP in
    state LISTEN, UDP bound)."""
    return len(listening_inodes(port, kind))


def listening_inodes(port: int, kind: str = "tcp") -> set[int]:
    """The inodes of the sockets that listen on *port* (see ``listening_sockets()``)."""
    inodes = set()
    for table in (f"/proc/net/{kind}", f"/proc/net/{kind}6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local, state = fields[1], fields[3]
                if int(local.rsplit(":", 1)[1], 16) == port and (kind == "udp" or state == "0A"):
                    inodes.add(int(fields[9]))
    return inodes


def socket_inodes(pid: int) -> list[int]:
    """The inodes of the sockets process *pid* has descriptors on, one per descriptor."""
    inodes = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.append(int(target[len("socket:["):-1]))
    return inodes


def descriptors_on(pid: int, sock: socket.socket) -> int:
    """How many of process *pid*'s descriptors refer to *sock*'s socket (/proc)."""
    return socket_inodes(pid).count(os.fstat(sock.fileno()).st_ino)


def unread_bytes(local: Any, remote: Any) -> int:
    """How many bytes wait unread in the kernel on the TCP socket from *local* to
    *remote* ((host, port) pairs; /proc/net's rx_queue) — what a server has not read."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                ports = (int(fields[1].rsplit(":", 1)[1], 16),
                         int(fields[2].rsplit(":", 1)[1], 16))
                if ports == (local[1], remote[1]):
                    return int(fields[4].split(":")[1], 16)
    raise LookupError(f"no TCP socket from {local} to {remote}")


def fill_datagram_queue(path: str) -> int:
    """Fill the receive queue of the Unix datagram socket at *path* with b"fill"
    datagrams, so that nothing more gets in until it reads, however many
    ``net.unix.max_dgram_qlen`` lets it hold (10 by default, 512 under systemd's
    sysctl defaults).  Returns how many were sent.

    What waits counts against the send buffer of the socket that sent it, which may
    run out first: the queue is full when a fresh socket cannot add even one.
    """
    sent = 0
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
            added = 0
            try:
                while True:
                    filler.sendto(b"fill", socket.MSG_DONTWAIT, path)
                    added += 1
            except BlockingIOError:
                pass
        sent += added  # they stay queued after their sender closes
        if not added:
            return sent


# The numbers of sendto(2) and sendmsg(2), where /proc/PID/syscall shows them.
SEND_SYSCALLS = {"x86_64": {44, 46}, "aarch64": {206, 211}}


def blocked_sending(pid: int) -> bool:
    """Whether process *pid*'s main thread waits in a send system call now."""
    numbers = SEND_SYSCALLS.get(platform.machine())
    if numbers is None:
        pytest.skip(f"no send system call numbers known for {platform.machine()}")
    with open(f"/proc/{pid}/syscall") as state:
        current = state.read().split()[0]
    return current.isdigit() and int(current) in numbers

