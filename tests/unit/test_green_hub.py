"""The green hub on its own: submissions from many threads, none lost."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.helpers import IO_TIMEOUT

green = pytest.importorskip("sockserve.concurrency.green")
pytest.importorskip("greenlet")


def test_submissions_racing_from_many_threads_are_all_served() -> None:
    """Each served socket answers once; a lost wake-up leaves some unanswered.

    (Reading the eventfd after clearing the "wake pending" flag swallowed a
    concurrent submit's wake-up and stalled the inbox for good: 1 run in 7 of the
    200-client integration test hung before the fix.)
    """
    hub = green.Hub()
    pairs = [socket.socketpair() for _ in range(400)]
    try:
        def answer(sock: socket.socket) -> None:
            sock.sendall(b"served")
            sock.close()

        def submit(chunk: list[tuple[socket.socket, socket.socket]]) -> None:
            for server_end, _ in chunk:
                hub.submit(server_end, answer)

        threads = [threading.Thread(target=submit, args=(pairs[i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(IO_TIMEOUT)
        for _, client_end in pairs:
            client_end.settimeout(IO_TIMEOUT)
            assert client_end.recv(10) == b"served"
    finally:
        assert hub.close(wait=True, timeout=IO_TIMEOUT)
        for server_end, client_end in pairs:
            server_end.close()
            client_end.close()


def test_a_waiting_greenlet_times_out_while_others_run() -> None:
    hub = green.Hub()
    quiet, quiet_peer = socket.socketpair()
    busy, busy_peer = socket.socketpair()
    outcome: dict[str, object] = {}
    try:
        def wait_quietly(sock: socket.socket) -> None:
            sock.settimeout(0.1)
            try:
                sock.recv(1)
            except TimeoutError as exc:
                outcome["quiet"] = exc
            finally:
                sock.close()

        def echo(sock: socket.socket) -> None:
            with sock:
                outcome["busy"] = sock.recv(10)
                sock.sendall(b"done")

        hub.submit(quiet, wait_quietly)
        hub.submit(busy, echo)
        busy_peer.settimeout(IO_TIMEOUT)
        busy_peer.sendall(b"go")
        assert busy_peer.recv(10) == b"done"
        assert hub.close(wait=True, timeout=IO_TIMEOUT)  # the quiet one ended too
        assert isinstance(outcome["quiet"], TimeoutError) and outcome["busy"] == b"go"
    finally:
        for sock in (quiet, quiet_peer, busy, busy_peer):
            sock.close()


def test_each_connection_starts_in_a_fresh_context() -> None:
    """Greenlets are reused between connections; context variables are not."""
    import contextvars

    seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="fresh")
    hub = green.Hub()
    found = []
    try:
        for number in range(3):
            server_end, client_end = socket.socketpair()
            with client_end:

                def serve(sock: socket.socket, number: int = number) -> None:
                    with sock:
                        found.append(seen.get())
                        seen.set(f"set by connection {number}")
                        sock.sendall(b"done")

                hub.submit(server_end, serve)
                client_end.settimeout(IO_TIMEOUT)
                assert client_end.recv(10) == b"done"
    finally:
        assert hub.close(wait=True, timeout=IO_TIMEOUT)
    assert found == ["fresh"] * 3


def test_submitting_something_else_than_a_socket_fails_at_once() -> None:
    hub = green.Hub()
    try:
        with pytest.raises(TypeError, match="sockets"):
            hub.submit(object(), lambda sock: None)
        assert len(hub) == 0
    finally:
        assert hub.close(wait=True, timeout=IO_TIMEOUT)
