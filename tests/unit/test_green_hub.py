"""The green hub on its own: submissions from many threads, none lost."""

from __future__ import annotations

import collections
import os
import socket
import sys
import threading

import pytest

from tests.helpers import IO_TIMEOUT, wait_for

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
                hub.submit(hub.adopt(server_end), answer)

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

        hub.submit(hub.adopt(quiet), wait_quietly)
        hub.submit(hub.adopt(busy), echo)
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

                hub.submit(hub.adopt(server_end), serve)
                client_end.settimeout(IO_TIMEOUT)
                assert client_end.recv(10) == b"done"
    finally:
        assert hub.close(wait=True, timeout=IO_TIMEOUT)
    assert found == ["fresh"] * 3


def test_adopting_something_else_than_a_socket_fails_at_once() -> None:
    hub = green.Hub()
    try:
        with pytest.raises(TypeError, match="sockets"):
            hub.adopt(object())
        assert len(hub) == 0
    finally:
        assert hub.close(wait=True, timeout=IO_TIMEOUT)


def test_cancelled_timers_do_not_pile_up_behind_a_long_one() -> None:
    timers = green._Timers()
    timers.add(10**9, "a long-lived waiter")  # stays at the top of the heap
    for _ in range(10_000):
        timers.cancel(timers.add(1.0, "a waiter that was woken first"))
    assert len(timers) < 300


def test_urgent_data_does_not_stall_a_reader() -> None:
    """TCP stops a read at the urgent mark: that short read is no empty queue."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=IO_TIMEOUT)
        server_side, _ = listener.accept()
    trigger_in, trigger_out = socket.socketpair()
    hub = green.Hub()
    got: list[bytes] = []
    try:
        trigger = hub.adopt(trigger_in)
        hub.watch(trigger)

        def serve(sock: socket.socket) -> None:
            with sock, trigger:
                trigger.recv(1)  # waits elsewhere while the data's edges are taken
                data = b""
                while len(data) < 6:
                    data += sock.recv(100)
                got.append(data)
                sock.sendall(b"ok")

        hub.submit(hub.adopt(server_side), serve)
        client.sendall(b"abc")
        client.send(b"!", socket.MSG_OOB)
        client.sendall(b"def")
        trigger_out.sendall(b"x")
        assert client.recv(2) == b"ok"
        assert got == [b"abcdef"]
    finally:
        client.close()
        trigger_out.close()
        assert hub.close(wait=True, timeout=IO_TIMEOUT)


def test_idle_greenlets_kept_for_reuse_are_bounded() -> None:
    """After a burst of concurrent connections, at most IDLE_GREENLETS stay waiting."""
    hub = green.Hub()
    burst = green.IDLE_GREENLETS + 36
    pairs = [socket.socketpair() for _ in range(burst)]
    try:
        def echo_once(sock: socket.socket) -> None:
            with sock:
                sock.sendall(sock.recv(10))

        for server_end, _ in pairs:  # all waiting at once: one greenlet each
            hub.submit(hub.adopt(server_end), echo_once)
        for _, client_end in pairs:
            client_end.settimeout(IO_TIMEOUT)
            client_end.sendall(b"x")
            assert client_end.recv(10) == b"x"
        wait_for(lambda: len(hub) == 0, what="every connection served")
        assert len(hub._idle) == green.IDLE_GREENLETS
    finally:
        assert hub.close(wait=True, timeout=IO_TIMEOUT)
        for server_end, client_end in pairs:
            server_end.close()
            client_end.close()


def test_a_failing_hub_ends_its_connections_instead_of_abandoning_them(
        caplog: pytest.LogCaptureFixture) -> None:
    """A bug in the hub loop must not leave connections hanging: each one waiting on
    the hub gets ConnectionAbortedError (its clean-up runs), and the hub takes no more."""
    hub = green.Hub()
    pairs = [socket.socketpair() for _ in range(3)]
    outcomes: list[BaseException] = []
    try:
        def serve(sock: socket.socket) -> None:
            try:
                sock.recv(1)  # waits on the hub
            except ConnectionAbortedError as exc:
                outcomes.append(exc)
                sock.sendall(b"cleaned up")  # would wait, were the buffer full: fails fast
            finally:
                sock.close()

        for server_end, _ in pairs:
            hub.submit(hub.adopt(server_end), serve)
        wait_for(lambda: len(hub._sockets) == 3
                 and all(sock._waiter is not None for sock in list(hub._sockets.values())),
                 what="three connections waiting on the hub")
        hub._timers.add(0.0, object())  # the bug: a timer whose waiter is no greenlet
        hub._wake()
        hub._thread.join(IO_TIMEOUT)
        assert not hub.alive and hub.failed
        assert len(outcomes) == 3
        for _, client_end in pairs:
            client_end.settimeout(IO_TIMEOUT)
            assert client_end.recv(20) == b"cleaned up"
            assert client_end.recv(1) == b""  # closed
        late, late_peer = socket.socketpair()
        adopted = hub.adopt(late)
        with pytest.raises(RuntimeError, match="hub has failed"):
            hub.submit(adopted, serve)
        adopted.close()
        late_peer.close()
    finally:
        hub.close(wait=True, timeout=IO_TIMEOUT)
        for server_end, client_end in pairs:
            server_end.close()
            client_end.close()
    assert any(record.levelname == "CRITICAL" for record in caplog.records)


def test_a_connection_submitted_while_the_hub_fails_is_ended_too() -> None:
    """submit() counts and queues a connection in one step: a failing hub that takes
    its inbox meanwhile either sees it (and ends it) or refuses it, never loses it."""
    appending, release = threading.Event(), threading.Event()

    class SlowInbox(collections.deque):  # type: ignore[type-arg]
        def append(self, item: object) -> None:
            appending.set()
            release.wait(IO_TIMEOUT)  # the hub fails while the connection is on its way
            super().append(item)

    hub = green.Hub()
    hub._inbox = SlowInbox()
    server_end, client_end = socket.socketpair()
    client_end.settimeout(IO_TIMEOUT)

    def serve(sock: socket.socket) -> None:
        try:
            sock.recv(1)
        except ConnectionAbortedError:
            pass
        finally:
            sock.close()

    submitter = threading.Thread(target=hub.submit, args=(hub.adopt(server_end), serve))
    try:
        submitter.start()
        assert appending.wait(IO_TIMEOUT)
        hub._timers.add(0.0, object())  # the bug: a timer whose waiter is no greenlet
        os.eventfd_write(hub._wakeup, 1)  # (_wake() would wait for submit()'s lock)

        def failing_hub_waits_for_the_submission() -> bool:
            frame = sys._current_frames().get(hub._thread.ident or 0)
            return frame is not None and frame.f_code.co_name == "_fail" \
                and hub._submit_lock.locked()

        # The hub fails meanwhile: it has ended, or it waits in _fail() for submit()'s
        # lock (where submit() queues while holding it).
        wait_for(lambda: not hub.alive or failing_hub_waits_for_the_submission(),
                 what="the hub to fail")
        release.set()
        submitter.join(IO_TIMEOUT)
        assert client_end.recv(1) == b""  # ended, not left hanging
        hub._thread.join(IO_TIMEOUT)
        assert hub.failed and not hub.alive
    finally:
        release.set()
        hub.close(wait=True, timeout=IO_TIMEOUT)
        server_end.close()
        client_end.close()


def test_closing_a_stopped_hub_again_writes_to_no_reused_descriptor() -> None:
    """The hub's wake-up descriptor is closed when it stops; a second close() must not
    write to whatever file has its number by then (server_close() twice)."""
    hub = green.Hub()
    wakeup = hub._wakeup
    assert hub.close(wait=True, timeout=IO_TIMEOUT)
    a, b = socket.socketpair()  # the lowest free numbers: the hub's old ones
    try:
        assert wakeup in (a.fileno(), b.fileno())
        hub._wake_pending = False  # as after the hub's last pass
        assert hub.close(wait=True, timeout=IO_TIMEOUT)
        for end in (a, b):
            end.setblocking(False)
            with pytest.raises(BlockingIOError):
                end.recv(8)
    finally:
        a.close()
        b.close()
