"""sockserve.aio: async handlers on asyncio and on uvloop, with the sync servers' lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import importlib.util
import logging
import os
import socket
import struct
import sys
import threading
import weakref
from collections.abc import Coroutine, Iterator
from typing import Any, Literal, TypeVar

import pytest

from sockserve import _aio_loop, aio
from sockserve._aio_replies import CLIENT_BACKLOG, CLOSE_TIMEOUT, ReplyTransport
from sockserve._aio_serving import duplicate
from sockserve.errors import SockServeError
from sockserve.stats import DrainReport
from sockserve.testing import serve_in_thread
from tests.helpers import IO_TIMEOUT, connect, fill_datagram_queue, recv_all, wait_for

T = TypeVar("T")
LoopName = Literal["asyncio", "uvloop"]

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
LOOPS = [
    pytest.param("asyncio"),
    pytest.param("uvloop", marks=pytest.mark.skipif(
        not HAVE_UVLOOP, reason="uvloop is not installed (pip install 'sockserve[fast]')")),
]
LOCALHOST = ("127.0.0.1", 0)


@pytest.fixture(params=LOOPS)
def loop_name(request: pytest.FixtureRequest) -> LoopName:
    name: LoopName = request.param
    return name


def run(loop_name: LoopName, main: Coroutine[Any, Any, T]) -> T:
    """Run *main* on a new event loop of the kind under test (the test's own driver)."""
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


class Echo(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        while data := await self.reader.read_some():
            self.writer.write(data)
            await self.writer.drain()


class LineEcho(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        self.writer.write(await self.reader.readline())


class Upper(aio.AsyncDatagramRequestHandler):
    async def handle(self) -> None:
        if self.packet.startswith(b"file:"):
            self.wfile.write(self.rfile.read().upper())
        else:
            self.send(self.packet.upper())


def tcp(handler: type[aio.AsyncStreamRequestHandler], loop_name: LoopName) -> aio.AsyncTCPServer:
    return aio.AsyncTCPServer(LOCALHOST, handler, loop_factory=loop_name)


def exchange(address: Any, data: bytes, family: int = socket.AF_INET) -> bytes:
    """Send *data*, half-close, and return everything the server sends back."""
    with connect(address, family) as client:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        return recv_all(client)


# -- round trips ------------------------------------------------------------------

def test_tcp_echo_round_trip(loop_name: LoopName) -> None:
    with serve_in_thread(tcp(Echo, loop_name)) as server:
        with connect(server.server_address) as client:
            for word in (b"one", b"two"):
                client.sendall(word)
                assert client.recv(100) == word
        assert exchange(server.server_address, b"x" * 100_000) == b"x" * 100_000


def test_udp_round_trip_by_send_and_by_wfile(loop_name: LoopName) -> None:
    server = aio.AsyncUDPServer(LOCALHOST, Upper, loop_factory=loop_name)
    with serve_in_thread(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(IO_TIMEOUT)
        for packet in (b"ping", b"file:pong"):
            client.sendto(packet, server.server_address)
            assert client.recv(100) == packet.upper()


def test_unix_stream_echo_replaces_a_stale_file_and_removes_its_own(
        loop_name: LoopName, unix_path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(unix_path)  # left behind, as by a crashed server
    with serve_in_thread(aio.AsyncUnixStreamServer(unix_path, LineEcho, loop_factory=loop_name)):
        assert exchange(unix_path, b"hi\n", socket.AF_UNIX) == b"hi\n"
        assert os.path.exists(unix_path)  # stopping the loop leaves the file to server_close()
    assert not os.path.exists(unix_path)


def test_unix_datagram_round_trip(loop_name: LoopName, unix_path: str) -> None:
    server = aio.AsyncUnixDatagramServer(unix_path, Upper, loop_factory=loop_name)
    client_path = unix_path + ".client"
    with serve_in_thread(server), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(client_path)  # so the reply has somewhere to go
        client.settimeout(IO_TIMEOUT)
        client.sendto(b"ping", unix_path)
        assert client.recv(100) == b"PING"
    os.unlink(client_path)
    assert not os.path.exists(unix_path)


class Burst(aio.AsyncDatagramRequestHandler):
    """``burst N SIZE``: N replies of SIZE bytes at once; anything else: one, "ok"."""

    async def handle(self) -> None:
        if self.packet.startswith(b"burst "):
            _, count, size = self.packet.split()
            for n in range(int(count)):
                self.send(b"%d:" % n + b"x" * int(size))
        else:
            self.send(b"ok")


@contextlib.contextmanager
def unix_datagram_clients(server_path: str, *names: str) -> Iterator[list[socket.socket]]:
    """Datagram clients bound next to *server_path* (``<path>.<name>``), so that
    replies have somewhere to go, with IO_TIMEOUT set; their files removed after."""
    with contextlib.ExitStack() as stack:
        clients = []
        for name in names:
            client = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
            client.bind(f"{server_path}.{name}")
            stack.callback(os.unlink, f"{server_path}.{name}")
            client.settimeout(IO_TIMEOUT)
            clients.append(client)
        yield clients


def test_a_unix_client_that_does_not_read_holds_up_no_other_client(
        loop_name: LoopName, unix_path: str) -> None:
    # The sleeper's queue is full: its 30 replies wait, and must not hold up the
    # asker's.  At most CLIENT_BACKLOG bytes wait for one client: the second burst's
    # replies (64 x 8 KiB) are dropped past it, and counted; and the asker's own that
    # must wait (20 asked for at once, its queue full) still do.
    server = aio.AsyncUnixDatagramServer(unix_path, Burst, loop_factory=loop_name)
    with serve_in_thread(server), \
            unix_datagram_clients(unix_path, "sleeper", "asker") as (sleeper, asker):
        fill_datagram_queue(unix_path + ".sleeper")
        sleeper.sendto(b"burst 30 10", unix_path)
        asker.sendto(b"ask", unix_path)
        assert asker.recv(100) == b"ok"
        sleeper.sendto(b"burst 64 8192", unix_path)
        asker.sendto(b"ask", unix_path)
        assert asker.recv(100) == b"ok"  # served after the burst: its replies are queued
        dropped = server.statistics().replies_dropped
        filled = fill_datagram_queue(unix_path + ".asker")
        asker.sendto(b"burst 20 1", unix_path)
        asker.sendto(b"ask", unix_path)  # its reply comes after the 20
        replies = [asker.recv(100) for _ in range(filled + 21)][filled:]
        assert server.statistics().replies_dropped == dropped
    assert dropped >= 64 - CLIENT_BACKLOG // 8192
    assert replies == [b"%d:x" % n for n in range(20)] + [b"ok"]


def test_stop_now_drops_the_replies_that_wait(loop_name: LoopName, unix_path: str) -> None:
    # Else serving would end only CLOSE_TIMEOUT later, for a client that does not read
    # (and the runner, after its second signal, would exit without waiting for it).
    server = aio.AsyncUnixDatagramServer(unix_path, Burst, loop_factory=loop_name)
    with serve_in_thread(server), \
            unix_datagram_clients(unix_path, "sleeper", "asker") as (sleeper, asker):
        fill_datagram_queue(unix_path + ".sleeper")
        sleeper.sendto(b"burst 30 10", unix_path)  # all wait
        asker.sendto(b"ask", unix_path)
        assert asker.recv(100) == b"ok"  # served after the burst: its replies wait
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        wait_for(lambda: not server.is_serving(), what="serving to stop")
        server.stop_now()
        stopper.join(CLOSE_TIMEOUT - 1)
        assert not stopper.is_alive(), "shutdown() waited for the replies"


def test_replies_never_wait_on_the_loop_under_a_default_socket_timeout(
        loop_name: LoopName, unix_path: str) -> None:
    # socket.setdefaulttimeout() gives new socket objects a timeout, with which a send
    # first waits to be writable: a reply to a full queue would hold the loop that long.
    server = aio.AsyncUnixDatagramServer(unix_path, Burst, loop_factory=loop_name)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60.0)  # while serving starts: its copies are made then
    try:
        with serve_in_thread(server):
            wait_for(server.is_serving, what="serving")
            socket.setdefaulttimeout(previous)
            with unix_datagram_clients(unix_path, "sleeper", "asker") as (sleeper, asker):
                fill_datagram_queue(unix_path + ".sleeper")
                sleeper.sendto(b"burst 30 10", unix_path)
                asker.sendto(b"ask", unix_path)
                assert asker.recv(100) == b"ok"
    finally:
        socket.setdefaulttimeout(previous)


def test_a_reply_that_waits_for_room_is_retried_on_a_timer_not_spun(
        loop_name: LoopName, unix_path: str) -> None:
    # A Unix datagram socket polls writable even when the client's queue is full, so
    # waiting for writability would retry without pause.  Counted over 0.3 s of loop
    # time (a window to count in, not synchronisation): a timer doubling from 1 ms
    # retries about ten times; a spin, thousands.

    async def main() -> tuple[int, list[bytes]]:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server_sock, \
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            server_sock.bind(unix_path)
            client.bind(unix_path + ".c")
            client.setblocking(False)
            transport, protocol = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, sock=duplicate(server_sock))
            replies = ReplyTransport(transport, duplicate(server_sock), protocol, loop)
            attempts = 0
            send = replies._send

            def counting_send(data: Any, addr: Any) -> bool:
                nonlocal attempts
                attempts += 1
                return send(data, addr)

            replies._send = counting_send  # type: ignore[method-assign]
            filled = fill_datagram_queue(unix_path + ".c")
            for n in range(30):  # all wait
                replies.sendto(b"%d" % n, unix_path + ".c")
            before = attempts
            await asyncio.sleep(0.3)
            retries = attempts - before
            received: list[bytes] = []
            while len(received) < filled + 30:
                received.append(await asyncio.wait_for(loop.sock_recv(client, 100),
                                                       IO_TIMEOUT))
            replies.close()
            await replies.closed()
        os.unlink(unix_path + ".c")
        return retries, received

    retries, received = _aio_loop.run(main(), aio.resolve_loop_factory(loop_name))
    assert [datagram for datagram in received if datagram != b"fill"] == \
        [b"%d" % n for n in range(30)]
    assert 0 < retries < 100


def test_a_write_after_the_connection_is_lost_is_dropped_and_drain_says_so(
        loop_name: LoopName) -> None:
    # As on asyncio's own transports; uvloop's raise RuntimeError once closed.
    outcome: list[str] = []
    done = threading.Event()

    class WriteAfterReset(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            try:
                await self.reader.read_some()
                self.writer.write(b"ready")
                await self.writer.wait_closed()  # the client resets the connection
                self.writer.write(b"lost")
                self.writer.writelines([b"lost"])
                await self.writer.drain()
            except Exception as exc:
                outcome.append(type(exc).__name__)
            finally:
                done.set()

    with serve_in_thread(tcp(WriteAfterReset, loop_name)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"x")
            assert client.recv(100) == b"ready"
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert done.wait(IO_TIMEOUT)
    assert outcome == ["ConnectionResetError"]


def test_the_loop_is_the_one_asked_for(loop_name: LoopName) -> None:
    seen: list[str] = []

    class Report(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            seen.append(type(asyncio.get_running_loop()).__module__)

    with serve_in_thread(tcp(Report, loop_name)) as server:
        assert exchange(server.server_address, b"") == b""
    assert seen[0].startswith("uvloop" if loop_name == "uvloop" else "asyncio")


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_uvloop_is_the_default_when_installed() -> None:
    with aio.AsyncTCPServer(LOCALHOST, Echo) as server:
        assert server.loop_factory is None
    import uvloop

    assert aio.resolve_loop_factory(None) is uvloop.new_event_loop


def test_a_bad_loop_name_or_a_sync_handler_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="loop_factory"):
        aio.AsyncTCPServer(LOCALHOST, Echo, loop_factory="trio")  # type: ignore[arg-type]
    import sockserve

    with pytest.raises(TypeError, match="AsyncStreamRequestHandler"):
        aio.AsyncTCPServer(LOCALHOST, sockserve.StreamRequestHandler)
    with pytest.raises(TypeError, match="AsyncDatagramRequestHandler"):
        aio.AsyncUDPServer(LOCALHOST, Echo)


# -- concurrency without threads ---------------------------------------------------

def test_200_connections_are_served_at_once_without_threads(loop_name: LoopName) -> None:
    with serve_in_thread(tcp(Echo, loop_name)) as server:
        with connect(server.server_address) as first:  # the loop is running
            first.sendall(b"0")
            assert first.recv(10) == b"0"
            threads = threading.active_count()
            clients = [connect(server.server_address) for _ in range(200)]
            try:
                for n, client in enumerate(clients):
                    client.sendall(b"%d" % n)
                # Every connection is open and waiting at once: served concurrently.
                for n, client in enumerate(clients):
                    assert client.recv(10) == b"%d" % n
                assert threading.active_count() == threads
            finally:
                for client in clients:
                    client.close()


# -- lifecycle -----------------------------------------------------------------------

def test_shutdown_from_a_handler_stops_serve_forever(loop_name: LoopName) -> None:
    class Bye(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            self.writer.write(b"bye\n")
            self.server.shutdown()  # on the loop's thread: returns at once

    with tcp(Bye, loop_name) as server:
        thread = threading.Thread(target=server.serve_forever, args=(None,))
        thread.start()
        assert exchange(server.server_address, b"") == b"bye\n"
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive()


def test_shutdown_before_serve_forever_returns_and_the_loop_then_exits(
        loop_name: LoopName) -> None:
    with tcp(Echo, loop_name) as server:
        server.shutdown()
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive()


def test_serve_forever_runs_again_after_shutdown(loop_name: LoopName) -> None:
    with tcp(LineEcho, loop_name) as server:
        for word in (b"one\n", b"two\n"):
            thread = threading.Thread(target=server.serve_forever, args=(None,))
            thread.start()
            assert exchange(server.server_address, word) == word
            server.shutdown()
            thread.join(IO_TIMEOUT)
            assert not thread.is_alive()


def test_shutdown_cancels_a_handler_waiting_for_input_and_finish_runs(loop_name: LoopName) -> None:
    waiting = threading.Event()
    calls: list[str] = []

    class Idle(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            waiting.set()
            try:
                await self.reader.read_some()
            except asyncio.CancelledError:
                calls.append("cancelled")
                raise

        async def finish(self) -> None:
            calls.append("finish")

    server = tcp(Idle, loop_name)
    with serve_in_thread(server):
        client = connect(server.server_address)
        assert waiting.wait(IO_TIMEOUT)
    with client:
        assert recv_all(client) == b""  # the server closed the connection
    assert calls == ["cancelled", "finish"]


def test_graceful_timeout_lets_a_running_handler_finish(loop_name: LoopName) -> None:
    started = threading.Event()

    class Slow(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            line = await self.reader.readline()  # arrives after shutdown() began
            self.writer.write(line)

    class Server(aio.AsyncTCPServer):
        def service_actions(self) -> None:
            started.set()

    server = Server(LOCALHOST, Slow, loop_factory=loop_name, graceful_timeout=IO_TIMEOUT)
    with server, connect(server.server_address) as client:
        thread = threading.Thread(target=server.serve_forever, args=(0.01,))
        thread.start()
        assert started.wait(IO_TIMEOUT)
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        client.sendall(b"late\n")
        assert recv_all(client) == b"late\n"
        stopper.join(IO_TIMEOUT)
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive() and not stopper.is_alive()


def test_service_actions_runs_every_poll_interval(loop_name: LoopName) -> None:
    ticks = threading.Semaphore(0)

    class Server(aio.AsyncTCPServer):
        def service_actions(self) -> None:
            ticks.release()

    with serve_in_thread(Server(LOCALHOST, Echo, loop_factory=loop_name), poll_interval=0.01):
        for _ in range(3):
            assert ticks.acquire(timeout=IO_TIMEOUT)


def test_an_error_in_service_actions_ends_serve_forever(loop_name: LoopName) -> None:
    class Server(aio.AsyncTCPServer):
        def service_actions(self) -> None:
            raise KeyError("from service_actions")

    with Server(LOCALHOST, Echo, loop_factory=loop_name) as server:
        with pytest.raises(KeyError, match="from service_actions"):
            server.serve_forever(0.01)


def test_serve_forever_inside_a_running_loop_is_refused(loop_name: LoopName) -> None:
    async def main() -> None:
        with tcp(Echo, loop_name) as server:
            with pytest.raises(RuntimeError, match="await server.serve"):
                server.serve_forever()

    run(loop_name, main())


def test_await_serve_inside_an_existing_loop(loop_name: LoopName) -> None:
    async def main() -> list[bytes]:
        replies = []
        async with aio.AsyncTCPServer(LOCALHOST, Echo) as server:
            serving = asyncio.create_task(server.serve())
            await asyncio.wait_for(server.wait_serving(), IO_TIMEOUT)
            assert server.is_serving()
            reader, writer = await asyncio.open_connection(*server.server_address)
            for word in (b"one", b"two"):
                writer.write(word)
                replies.append(await asyncio.wait_for(reader.read(100), IO_TIMEOUT))
            writer.close()
            await writer.wait_closed()
        # Leaving the block shut the server down: serve() has returned, the socket closed.
        await asyncio.wait_for(serving, IO_TIMEOUT)
        assert server.socket.fileno() == -1
        return replies

    assert run(loop_name, main()) == [b"one", b"two"]


def test_cancelling_serve_closes_connections_and_returns(loop_name: LoopName) -> None:
    async def main() -> bytes:
        with aio.AsyncTCPServer(LOCALHOST, Echo) as server:
            serving = asyncio.create_task(server.serve())
            await asyncio.wait_for(server.wait_serving(), IO_TIMEOUT)
            reader, writer = await asyncio.open_connection(*server.server_address)
            writer.write(b"hi")
            assert await asyncio.wait_for(reader.read(100), IO_TIMEOUT) == b"hi"
            serving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await serving
            rest = await asyncio.wait_for(reader.read(), IO_TIMEOUT)  # EOF: closed
            writer.close()
            await writer.wait_closed()
            return rest

    assert run(loop_name, main()) == b""


# -- hooks and errors ----------------------------------------------------------------

def test_verify_request_rejects_without_running_the_handler(loop_name: LoopName) -> None:
    ran: list[bool] = []

    class Handler(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            ran.append(True)

    class Picky(aio.AsyncTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            return bool(request.getsockname()) and False

    with serve_in_thread(Picky(LOCALHOST, Handler, loop_factory=loop_name)) as server:
        assert exchange(server.server_address, b"") == b""  # closed unanswered
    assert ran == []


def test_handler_error_is_logged_with_traceback_and_serving_goes_on(
        loop_name: LoopName, caplog: pytest.LogCaptureFixture) -> None:
    class Boom(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            if await self.reader.readline() == b"boom\n":
                raise ValueError("handler failed on purpose")
            self.writer.write(b"fine\n")

    with caplog.at_level(logging.ERROR, logger="sockserve.server"):
        with serve_in_thread(tcp(Boom, loop_name)) as server:
            with connect(server.server_address) as client:
                client.sendall(b"boom\n")
                assert recv_all(client) == b""
                client_port = client.getsockname()[1]
            assert exchange(server.server_address, b"ok\n") == b"fine\n"
    [record] = [r for r in caplog.records if r.name == "sockserve.server"]
    assert str(client_port) in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError


def test_datagram_handler_error_is_logged(
        loop_name: LoopName, caplog: pytest.LogCaptureFixture) -> None:
    class Boom(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            if self.packet == b"boom":
                raise ValueError("datagram handler failed")
            self.send(b"fine")

    server = aio.AsyncUDPServer(LOCALHOST, Boom, loop_factory=loop_name)
    with caplog.at_level(logging.ERROR, logger="sockserve.server"):
        with serve_in_thread(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(IO_TIMEOUT)
            client.sendto(b"boom", server.server_address)
            client.sendto(b"ok", server.server_address)
            assert client.recv(100) == b"fine"
    [record] = [r for r in caplog.records if r.name == "sockserve.server"]
    assert record.exc_info is not None and record.exc_info[0] is ValueError


def udp_client() -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(IO_TIMEOUT)
    return client


def test_datagram_handlers_each_start_in_a_fresh_context_in_a_task(loop_name: LoopName) -> None:
    """From 3.11 one worker task serves datagram after datagram (a task each cost more
    than a small handler), yet each handler starts in a context of its own."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    tasks: list[asyncio.Task[Any]] = []  # held, so that their ids stay distinct

    class Marks(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.append(task)
            seen = var.get()
            if self.packet == b"set":
                var.set("set")
            # The task shows the handler's context, as a task of its own would.
            shown = True
            if sys.version_info >= (3, 12):
                shown = task.get_context().get(var, "unset") == var.get()
            self.send(seen.encode() + (b"" if shown else b", but the task shows another"))

    packets = [b"get", b"set", b"get", b"set", b"set"] + [b"get"] * 10
    server = aio.AsyncUDPServer(LOCALHOST, Marks, loop_factory=loop_name)
    with serve_in_thread(server), udp_client() as client:
        for packet in packets:
            client.sendto(packet, server.server_address)
            assert client.recv(100) == b"unset"
    workers = len({id(task) for task in tasks})
    assert workers == (1 if sys.version_info >= (3, 11) else len(packets))


def test_a_datagram_handler_keeps_its_context_across_its_waits(loop_name: LoopName) -> None:
    """What a handler sets before it waits is still set after (its worker's task then
    resumes it, in the handler's own context), and the next handler starts fresh."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    class SetThenWait(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            before = var.get()
            var.set(self.packet.decode())
            await asyncio.sleep(0)
            self.send(f"{before}/{var.get()}".encode())

    server = aio.AsyncUDPServer(LOCALHOST, SetThenWait, loop_factory=loop_name)
    with serve_in_thread(server), udp_client() as client:
        for packet in (b"one", b"two", b"three"):
            client.sendto(packet, server.server_address)
            assert client.recv(100) == b"unset/" + packet


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is 3.11's")
def test_a_worker_whose_task_a_handler_changed_serves_no_more(loop_name: LoopName) -> None:
    """A done callback added to the task runs when the handler is done with it, not
    when the worker ends some day; a swallowed cancellation reaches no later handler;
    a served handler is not kept alive by its idle worker, nor by its context."""
    ran: list[str] = []
    handlers: list[weakref.ref[aio.AsyncDatagramRequestHandler]] = []
    current: contextvars.ContextVar[object] = contextvars.ContextVar("current")

    class Meddling(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.append(weakref.ref(self))
            current.set(self)  # as a logging or tracing helper would
            if self.packet == b"callback":
                task.add_done_callback(lambda _: ran.append("callback"))
            elif self.packet == b"swallow":
                task.cancel()
                try:
                    # (Not a sleep: asyncio keeps a cancelled timer, and the context
                    # it was scheduled in, until the time it was set for.)
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    pass  # swallowed, without uncancel()
            self.send(b"%d" % task.cancelling())

    server = aio.AsyncUDPServer(LOCALHOST, Meddling, loop_factory=loop_name)
    with serve_in_thread(server), udp_client() as client:
        for packet, reply in [(b"plain", b"0"), (b"callback", b"0"), (b"plain", b"0"),
                              (b"swallow", b"1"), (b"plain", b"0")]:
            client.sendto(packet, server.server_address)
            assert client.recv(100) == reply
        wait_for(lambda: ran == ["callback"], what="the done callback to run")
        wait_for(lambda: not gc.collect() and all(ref() is None for ref in handlers),
                 what="every served handler to be freed")


def test_datagram_handlers_that_wait_hold_up_nobody(loop_name: LoopName) -> None:
    """Each waiting handler keeps its own task (asyncio.timeout() relies on it), the
    next datagrams go to other workers, and all are answered."""
    gate = asyncio.Event()
    waiting_tasks: set[asyncio.Task[Any] | None] = set()

    class Gated(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            if self.packet == b"open":
                gate.set()
                self.send(b"opened")
                return
            waiting_tasks.add(asyncio.current_task())
            if sys.version_info >= (3, 11):
                async with asyncio.timeout(IO_TIMEOUT):
                    await gate.wait()
            else:
                await asyncio.wait_for(gate.wait(), IO_TIMEOUT)
            self.send(self.packet)

    server = aio.AsyncUDPServer(LOCALHOST, Gated, loop_factory=loop_name)
    waiters = {b"wait %d" % n for n in range(5)}
    with serve_in_thread(server), udp_client() as client:
        for packet in sorted(waiters):
            client.sendto(packet, server.server_address)
        client.sendto(b"open", server.server_address)
        replies = {client.recv(100) for _ in range(len(waiters) + 1)}
        assert replies == waiters | {b"opened"}
        client.sendto(b"wait again", server.server_address)  # the gate is open now
        assert client.recv(100) == b"wait again"
    assert len(waiting_tasks) >= len(waiters) and None not in waiting_tasks


def test_datagram_drain_counts_running_handlers_not_idle_workers(
        loop_name: LoopName, caplog: pytest.LogCaptureFixture) -> None:
    class Lingering(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            if self.packet == b"stuck":
                self.send(b"waiting")
                await asyncio.Event().wait()  # until cancelled
            elif self.packet == b"polite":
                self.send(b"waiting")
                await self.server.wait_draining()
                self.send(b"bye")
            else:
                self.send(self.packet)

    server = aio.AsyncUDPServer(LOCALHOST, Lingering, loop_factory=loop_name)
    with serve_in_thread(server), udp_client() as client:
        for packet in (b"stuck", b"polite"):
            client.sendto(packet, server.server_address)
            assert client.recv(100) == b"waiting"
        for _ in range(3):  # served by another worker, idle when the drain comes
            client.sendto(b"quick", server.server_address)
            assert client.recv(100) == b"quick"
        report = server.drain(0.3)
        assert client.recv(100) == b"bye"
    assert report == DrainReport(open=2, finished=1, cut=1)
    assert not [record for record in caplog.records if record.name == "asyncio"]


def test_stop_now_from_a_handler_cancels_that_handler_too(loop_name: LoopName) -> None:
    """Even from the very first step of the first handler (on 3.12+ it runs eagerly,
    before its task is tracked)."""
    class Cut(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            self.server.stop_now()
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                self.send(b"cancelled")
                raise
            self.send(b"went on")

    server = aio.AsyncUDPServer(LOCALHOST, Cut, loop_factory=loop_name)
    with serve_in_thread(server), udp_client() as client:
        for _ in range(2):  # the first datagram, then one on a running server
            client.sendto(b"cut", server.server_address)
            assert client.recv(100) == b"cancelled"


def test_a_task_factory_on_the_loop_makes_the_handler_tasks(loop_name: LoopName) -> None:
    """A task factory (instrumentation, say) sees every handler's task, stream or
    datagram, on every version: then no task is started eagerly or reused."""
    class Marked(asyncio.Task):  # type: ignore[type-arg]
        pass

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Marked:
        return Marked(coro, loop=loop, **kwargs)

    def new_loop() -> asyncio.AbstractEventLoop:
        if loop_name == "uvloop":
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            loop = asyncio.SelectorEventLoop()
        loop.set_task_factory(factory)
        return loop

    class Stream(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            self.writer.write(b"%d" % isinstance(asyncio.current_task(), Marked))

    class Datagram(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            self.send(b"%d" % isinstance(asyncio.current_task(), Marked))

    with serve_in_thread(aio.AsyncTCPServer(LOCALHOST, Stream, loop_factory=new_loop)) \
            as stream_server:
        assert exchange(stream_server.server_address, b"") == b"1"
    datagram_server = aio.AsyncUDPServer(LOCALHOST, Datagram, loop_factory=new_loop)
    with serve_in_thread(datagram_server) as server, udp_client() as client:
        for _ in range(3):
            client.sendto(b"?", server.server_address)
            assert client.recv(10) == b"1"


def test_datagrams_after_stop_now_go_to_new_workers(loop_name: LoopName) -> None:
    """stop_now() cancels every task, idle workers' too: later datagrams are still
    served (by workers that were not cancelled)."""
    class Cutter(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            if self.packet == b"cut":
                self.server.stop_now()  # from the loop's thread: at once
            self.send(self.packet)

    server = aio.AsyncUDPServer(LOCALHOST, Cutter, loop_factory=loop_name)
    with serve_in_thread(server), udp_client() as client:
        for packet in (b"one", b"cut", b"two", b"cut", b"three"):
            client.sendto(packet, server.server_address)
            assert client.recv(100) == packet


def test_setup_handle_finish_order(loop_name: LoopName) -> None:
    calls: list[str] = []

    class Handler(aio.AsyncStreamRequestHandler):
        async def setup(self) -> None:
            calls.append("setup")
            if await self.reader.readline() == b"bad setup\n":
                raise RuntimeError("setup failed")

        async def handle(self) -> None:
            calls.append("handle")
            if await self.reader.readline() == b"bad handle\n":
                raise KeyError("handle failed")

        async def finish(self) -> None:
            calls.append("finish")

    class Quiet(aio.AsyncTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            calls.append(type(sys.exc_info()[1]).__name__)

    with serve_in_thread(Quiet(LOCALHOST, Handler, loop_factory=loop_name)) as server:
        for data in (b"ok\nok\n", b"ok\nbad handle\n", b"bad setup\n"):
            assert exchange(server.server_address, data) == b""
    assert calls == ["setup", "handle", "finish",
                     "setup", "handle", "finish", "KeyError",
                     "setup", "RuntimeError"]


def test_a_silent_client_times_out_when_the_handler_has_a_timeout(
        loop_name: LoopName, caplog: pytest.LogCaptureFixture) -> None:
    class Slow(aio.AsyncStreamRequestHandler):
        timeout = 0.05

        async def handle(self) -> None:
            await self.reader.readline()

    with caplog.at_level(logging.ERROR, logger="sockserve.server"):
        with serve_in_thread(tcp(Slow, loop_name)) as server:
            with connect(server.server_address) as client:
                assert recv_all(client) == b""  # the server gave up and closed
    [record] = caplog.records
    assert record.exc_info is not None and isinstance(record.exc_info[1], TimeoutError)


# -- the reader ----------------------------------------------------------------------

def test_readline_limit_raises_a_value_error(loop_name: LoopName) -> None:
    class Limited(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            try:
                self.writer.write(await self.reader.readline(limit=10))
            except aio.LineTooLongError as exc:
                assert isinstance(exc, ValueError) and isinstance(exc, SockServeError)
                self.writer.write(b"too long\n")
            # The long line was dropped, as asyncio's readline() does: the next is read.
            self.writer.write(await self.reader.readline(limit=10))

    with serve_in_thread(tcp(Limited, loop_name)) as server:
        assert exchange(server.server_address, b"x" * 50 + b"\nnext\n") == b"too long\nnext\n"
        assert exchange(server.server_address, b"y" * 10 + b"\nok\n") == b"too long\nok\n"
        assert exchange(server.server_address, b"123456789\nend") == b"123456789\nend"


def test_reader_methods(loop_name: LoopName) -> None:
    class Reads(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            reader, out = self.reader, []
            out.append(await reader.readexactly(3))
            out.append(await reader.readuntil(b"|"))
            buffer = bytearray(2)
            out.append(bytes(buffer[:await reader.readinto(buffer)]))
            out.append(await reader.read(2))
            async for line in reader:
                out.append(line)
                if line == b"stop\n":
                    break
            out.append(await reader.read())  # everything until EOF
            assert reader.at_eof()
            try:
                await reader.readexactly(1)
            except asyncio.IncompleteReadError as exc:
                out.append(b"incomplete:%s" % exc.partial)
            self.writer.write(b",".join(out))

    with serve_in_thread(tcp(Reads, loop_name)) as server:
        data = b"abcde|fghij\nstop\nthe rest"
        assert exchange(server.server_address, data) == \
            b"abc,de|,fg,hi,j\n,stop\n,the rest,incomplete:"


def test_handler_runs_in_its_task_with_its_context_across_reads(loop_name: LoopName) -> None:
    """Reads resumed from the protocol still see the handler's task and context, and
    timeouts and cancellations on them lose no data."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    results: list[object] = []

    class Probe(aio.AsyncStreamRequestHandler):
        async def setup(self) -> None:
            var.set("from setup")

        async def handle(self) -> None:
            task = asyncio.current_task()
            for _ in range(3):
                line = await self.reader.readline()
                results.append((asyncio.current_task() is task, var.get(), line))
                await asyncio.sleep(0)  # something else awaited between reads
            try:
                await asyncio.wait_for(self.reader.read_some(), 0.01)
            except asyncio.TimeoutError:
                results.append("timed out")
            self.writer.write(b"go\n")
            results.append(await self.reader.read_some())

    with serve_in_thread(tcp(Probe, loop_name)) as server:
        with connect(server.server_address) as client:
            for n in range(3):
                client.sendall(b"%d\n" % n)
            assert client.recv(10) == b"go\n"
            client.sendall(b"after")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b""
    assert results == [(True, "from setup", b"%d\n" % n) for n in range(3)] + \
        ["timed out", b"after"]


def test_reads_from_a_child_task_and_gathered_reads(loop_name: LoopName) -> None:
    """Reads awaited by another task than the handler's take the future path."""
    class Fanout(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            first = await asyncio.create_task(self.reader.readline())
            second, _ = await asyncio.gather(self.reader.readline(), asyncio.sleep(0))
            third = await self.reader.readline()  # the handler's own task again
            self.writer.write(first + second + third)

    with serve_in_thread(tcp(Fanout, loop_name)) as server:
        assert exchange(server.server_address, b"a\nb\nc\n") == b"a\nb\nc\n"


def test_concurrent_reads_on_one_reader_are_refused(loop_name: LoopName) -> None:
    errors: list[str] = []

    class Twice(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            waiting = asyncio.create_task(self.reader.read_some())
            await asyncio.sleep(0)  # the child task now waits on the reader
            try:
                await self.reader.read_some()
            except RuntimeError as exc:
                errors.append(str(exc))
            self.writer.write(b"ready:")
            self.writer.write(await waiting)

    with serve_in_thread(tcp(Twice, loop_name)) as server:
        with connect(server.server_address) as client:
            assert client.recv(6) == b"ready:"  # both reads were tried before any data
            client.sendall(b"data")
            assert recv_all(client) == b"data"
    assert errors == ["another coroutine is already waiting on this reader"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() is new in 3.11")
def test_asyncio_timeout_around_reads(loop_name: LoopName) -> None:
    class Deadline(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            try:
                async with asyncio.timeout(0.01):  # type: ignore[attr-defined,unused-ignore]
                    await self.reader.readline()
            except TimeoutError:
                self.writer.write(b"late\n")
            async with asyncio.timeout(IO_TIMEOUT):  # type: ignore[attr-defined,unused-ignore]
                self.writer.write(await self.reader.readline())

    with serve_in_thread(tcp(Deadline, loop_name)) as server:
        with connect(server.server_address) as client:
            assert client.makefile("rb").readline() == b"late\n"
            client.sendall(b"in time\n")
            assert recv_all(client) == b"in time\n"


# -- flow control --------------------------------------------------------------------

def test_writing_8_mib_to_a_slow_reader_keeps_the_write_buffer_bounded(
        loop_name: LoopName) -> None:
    chunk, total = 64 * 1024, 8 * 1024 * 1024
    backpressure = threading.Event()
    buffered: list[int] = []

    class Flood(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            transport = self.writer.transport
            for _ in range(total // chunk):
                self.writer.write(b"z" * chunk)
                buffered.append(transport.get_write_buffer_size())
                if buffered[-1] > chunk:
                    backpressure.set()  # the client has stopped reading; drain() waits
                await self.writer.drain()

    with serve_in_thread(tcp(Flood, loop_name)) as server:
        with connect(server.server_address) as client:
            assert backpressure.wait(IO_TIMEOUT)
            received = recv_all(client)
    assert received == b"z" * total
    high_water = 64 * 1024  # both loops' default write high-water mark
    assert max(buffered) <= high_water + chunk


def test_a_client_sending_faster_than_the_handler_reads_is_paused(loop_name: LoopName) -> None:
    filled = threading.Event()
    seen: list[int] = []

    class Lazy(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            # Wait (in a thread, so the loop goes on reading) until the client is blocked.
            await asyncio.get_running_loop().run_in_executor(None, filled.wait, IO_TIMEOUT)
            seen.append(len(self.reader._buffer))
            total = 0
            while data := await self.reader.read_some():
                total += len(data)
            self.writer.write(b"%d" % total)

    with serve_in_thread(tcp(Lazy, loop_name)) as server:
        with connect(server.server_address) as client:
            client.setblocking(False)
            sent = 0
            try:
                while sent < 64 * 1024 * 1024:
                    sent += client.send(b"q" * 65536)
            except BlockingIOError:
                pass  # every buffer on the way is full: the server stopped reading
            filled.set()
            client.settimeout(IO_TIMEOUT)
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"%d" % sent
    assert seen[0] <= aio.READ_LIMIT * 2 + 256 * 1024


# -- tests must leave nothing behind ---------------------------------------------------

@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - before:
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive(), f"{thread} still running"
