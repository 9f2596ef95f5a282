"""Resuming a connection's handler from the protocol callback that brings its data.

The usual way, a read creates a future, the callback resolves it, the loop schedules
the task, and the task resumes the handler one loop pass later.  For a handler waiting
on its own connection that is most of the cost of a small request, so instead:

- the handler's coroutine runs inside a real ``asyncio.Task`` whose coroutine is
  ``drive()``, a trampoline that forwards everything the handler awaits to the task;
- a read on the connection suspends the handler by yielding the ``WAIT`` marker, and
  the trampoline parks the task on the connection's ``Parking`` (a future-like that the
  task accepts like any future);
- when data arrives, the protocol resumes the handler coroutine itself (``step()`` in
  ``ConnectionReader``) with that task entered as the current task and in the task's
  context, so ``asyncio.current_task()``, ``asyncio.timeout()`` and contextvars behave
  as in any task.  If the handler then waits on the connection again, nothing else
  happens; if it awaits anything else, or ends, the outcome is handed to the task,
  which the trampoline then continues normally.

Cancelling the task cancels the parking, which throws ``CancelledError`` into the
handler where it waits, as for any future.  When the task cannot be entered (another
task is running), the handler is resumed through the task instead.

``Resumable`` is that machinery for any coroutine: a connection's reader is one, and
so is a datagram worker (``_aio_datagram``), which waits between datagrams.
"""

from __future__ import annotations

import asyncio
import types
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any

from ._aio_handlers import AsyncBaseRequestHandler
from ._aio_tls import StartedHandshake, finish_handshake

if TYPE_CHECKING:
    from ._aio_streams import ConnectionReader


class _Wait:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<waiting on the connection>"


WAIT = _Wait()

# What a direct step left for the task to carry on with: (kind, payload).
RESUME, THROW, YIELD, RETURN, RAISE = range(5)
Outcome = tuple[int, Any]

PENDING, WOKEN, CANCELLED = range(3)


@types.coroutine
def suspend() -> Generator[Any, Any, Any]:
    """Suspend the handler until the connection resumes it; returns what it is sent."""
    return (yield WAIT)


class Resumable:
    """A coroutine run by a task that waits parked, and resumed directly by callbacks
    while it waits on its own source (a connection's reader, a datagram worker).

    Holds the coroutine, its task and context, the parking and what a direct step left
    for the task (``_outcome``); ``trampoline()`` is the task's side.
    """

    __slots__ = ("_coro", "_send", "_context", "_parking", "_parked", "_outcome", "_task",
                 "_handover")

    # Whether _context is the coroutine's own, apart from its task's: the task then
    # runs the coroutine in it too (a datagram worker gives each datagram a fresh one).
    # Otherwise _context is the task's (a connection's).
    own_context = False

    def __init__(self) -> None:
        self._coro: Coroutine[Any, Any, None] | None = None
        self._send: Any = None  # self._coro.send, bound once
        self._context: Any = None  # contextvars.Context, once set
        self._parking: Any = None  # Parking, once set
        self._parked = False  # the coroutine waits on us now (it yielded WAIT)
        self._outcome: Outcome | None = None
        self._task: asyncio.Task[None] | None = None
        self._handover = 0  # a reader's: >0 while read_some() waits for a chunk

    def _resume(self, value: Any, exc: BaseException | None) -> bool:
        """Resume the parked coroutine now with *value* (or throw *exc* into it), in its
        task and context, as its task would.

        Returns False when it did not receive *value*: the task is no longer parked
        (cancelled or woken meanwhile, it resumes the coroutine itself), or another
        task is running, so the task is woken to resume it one pass later (with None,
        or *exc*).  The caller then leaves *value* where the coroutine looks for it.
        """
        parking = self._parking
        if parking.state != PENDING:
            return False
        task = self._task
        assert task is not None
        loop = parking._loop
        self._parked = False
        self._handover = 0
        try:
            _enter_task(loop, task)
        except RuntimeError:
            self._outcome = (RESUME, None) if exc is None else (THROW, exc)
            parking.wake()
            return False
        outcome: Outcome
        try:
            if exc is None:
                yielded = self._context.run(self._send, value)
            else:
                assert self._coro is not None
                yielded = self._context.run(self._coro.throw, exc)
        except StopIteration:
            outcome = (RETURN, None)
        except BaseException as error:  # the task raises it, as if raised in its step
            outcome = (RAISE, error)
        else:
            if yielded is WAIT:
                self._parked = True  # waits on us again: the task stays parked
                return True
            outcome = (YIELD, yielded)
        finally:
            _leave_task(loop, task)
        self._outcome = outcome
        parking.wake()
        return True


class Parking:
    """What the task waits on while its handler waits on the connection.

    Implements the part of the future protocol that ``asyncio.Task`` uses (see
    ``asyncio.isfuture``): it is woken or cancelled, never given a result.
    """

    __slots__ = ("_asyncio_future_blocking", "_loop", "_callback", "_context", "state",
                 "_message")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._asyncio_future_blocking = False
        self._loop = loop
        self._callback: Any = None
        self._context: Any = None
        self.state = WOKEN
        self._message: Any = None

    def arm(self) -> Parking:
        self.state = PENDING
        self._asyncio_future_blocking = True
        return self

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        if self.state != PENDING:
            self._loop.call_soon(fn, self, context=context)
        else:
            self._callback, self._context = fn, context

    def remove_done_callback(self, fn: Any) -> int:
        if self._callback is fn:
            self._callback = self._context = None
            return 1
        return 0

    def done(self) -> bool:
        return self.state != PENDING

    def cancelled(self) -> bool:
        return self.state == CANCELLED

    def result(self) -> None:
        if self.state == CANCELLED:
            raise asyncio.CancelledError(*(() if self._message is None else (self._message,)))
        if self.state == PENDING:
            raise asyncio.InvalidStateError("the handler is still waiting")

    def exception(self) -> BaseException | None:
        self.result()
        return None

    def cancel(self, msg: Any = None) -> bool:
        if self.state != PENDING:
            return False
        self.state, self._message = CANCELLED, msg
        self._schedule()
        return True

    def wake(self) -> None:
        """Let the task run the trampoline (the outcome is on the reader)."""
        if self.state == PENDING:
            self.state = WOKEN
            self._schedule()

    def _schedule(self) -> None:
        callback, context = self._callback, self._context
        if callback is not None:
            self._callback = self._context = None
            self._loop.call_soon(callback, self, context=context)


async def drive(reader: ConnectionReader, server: Any, request: Any,
                client_address: Any, handshake: StartedHandshake | None = None) -> None:
    """The connection task's coroutine: the TLS handshake if there is one, then the
    handler's ``setup()``, ``handle()`` (through the trampoline, so that the protocol
    can resume it; on Python 3.10, without parking, the task resumes it) and
    ``finish()``."""
    reader._task = asyncio.current_task()  # already while an eager task starts
    if handshake is not None:
        if not await finish_handshake(reader._serving, reader, handshake, client_address):
            return
    writer = reader.writer
    assert writer is not None
    try:
        handler: AsyncBaseRequestHandler = server.RequestHandlerClass(
            reader, writer, client_address, server)
        handler_class = type(handler)
        # The inherited setup() and finish() do nothing: not calling them saves two
        # coroutines per connection.
        if handler_class.setup is not AsyncBaseRequestHandler.setup:
            await handler.setup()
        try:
            if reader._parking is None:
                await handler.handle()
            else:
                reader._coro = coro = handler.handle()
                reader._send = coro.send
                await trampoline(reader)
        finally:
            reader._coro = reader._send = None
            if handler_class.finish is not AsyncBaseRequestHandler.finish:
                await handler.finish()
    except Exception:
        server.handle_error(request, client_address)
    finally:
        # As TCPServer.shutdown_request(): the client sees EOF once the data is sent.
        writer.transport.close()


async def run(resumable: Resumable) -> None:
    """A task's coroutine that runs *resumable*'s (tasks take no bare generator)."""
    await trampoline(resumable)


@types.coroutine
def trampoline(reader: Resumable) -> Generator[Any, None, None]:
    """The task's side of a ``Resumable``: runs its coroutine, parking on WAIT."""
    coro = reader._coro
    assert coro is not None
    parking = reader._parking
    assert parking is not None
    kind: int = RESUME
    payload: Any = None
    while True:
        if kind == RESUME or kind == THROW:
            try:
                if reader.own_context:
                    yielded = reader._context.run(coro.send, None) if kind == RESUME \
                        else reader._context.run(coro.throw, payload)
                else:
                    yielded = coro.send(None) if kind == RESUME else coro.throw(payload)
            except StopIteration:
                return
        elif kind == YIELD:
            yielded = payload
        elif kind == RETURN:
            return
        else:
            raise payload
        if yielded is WAIT:
            reader._parked = True
            try:
                yield parking.arm()
            except BaseException as exc:  # the task was cancelled
                reader._parked = False
                reader._handover = 0
                outcome, reader._outcome = reader._outcome, None
                if outcome is None or outcome[0] in (RESUME, THROW, YIELD):
                    kind, payload = THROW, exc  # the handler waits somewhere: deliver it
                else:
                    kind, payload = outcome  # the handler has ended already
                continue
            reader._parked = False
            reader._handover = 0
            outcome, reader._outcome = reader._outcome, None
            kind, payload = outcome if outcome is not None else (RESUME, None)
        else:
            # Anything else the handler awaits, the task waits on as usual.
            try:
                yield yielded
            except BaseException as exc:
                kind, payload = THROW, exc
            else:
                kind, payload = RESUME, None
