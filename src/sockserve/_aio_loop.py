"""Event loop choice for the async servers, and a runner for ``serve_forever()``.

uvloop is used when it is importable (``pip install sockserve[fast]``), plain asyncio
otherwise; a server class or instance can pin either, or pass its own factory.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
# None: uvloop if importable, else asyncio.  A string names one; a callable makes the loop.
LoopChoice = Union[None, Literal["asyncio", "uvloop"], LoopFactory]


def resolve_loop_factory(choice: LoopChoice) -> LoopFactory:
    """The callable that makes a new event loop for *choice*.

    Raises:
        ImportError: ``"uvloop"`` was asked for and uvloop is not installed.
        ValueError: *choice* is an unknown name.
    """
    if callable(choice):
        return choice
    if choice is None:
        try:
            import uvloop
        except ImportError:
            return asyncio.SelectorEventLoop
        return uvloop.new_event_loop
    if choice == "asyncio":
        # Not asyncio.new_event_loop(): that asks the policy, which uvloop.install()
        # may have replaced.
        return asyncio.SelectorEventLoop
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise ImportError(
                "loop_factory='uvloop' needs uvloop: pip install 'sockserve[fast]'") from exc
        return uvloop.new_event_loop
    raise ValueError(f"loop_factory must be None, 'asyncio', 'uvloop' or a callable, "
                     f"not {choice!r}")


def is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    """True if *loop* is uvloop's (checked by module, so uvloop is never imported here)."""
    return type(loop).__module__.startswith("uvloop")


def run(main: Coroutine[Any, Any, T], factory: LoopFactory) -> T:
    """Run *main* to completion on a new loop from *factory*, then close the loop.

    Like ``asyncio.run(main, loop_factory=...)`` of Python 3.12, on every supported
    version: on exit (normal, exception or KeyboardInterrupt) *main* and every task
    still pending are cancelled and awaited, async generators and the default executor
    are shut down, and the loop is closed.

    Raises:
        RuntimeError: an event loop is already running in this thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        main.close()
        raise RuntimeError("serve_forever() blocks, so it cannot run inside a running "
                           "event loop; use 'await server.serve()' there")
    loop = factory()
    try:
        task = loop.create_task(main)
        try:
            return loop.run_until_complete(task)
        finally:
            # A KeyboardInterrupt can leave main pending: let it clean up first.
            if not task.done():
                task.cancel()
                loop.run_until_complete(asyncio.wait([task]))
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    # As asyncio.runners._cancel_all_tasks: tasks a handler spawned and left running.
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    for task in pending:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({
                "message": "unhandled exception in a task left running by serve_forever()",
                "exception": task.exception(),
                "task": task,
            })


def eager_task_supported() -> bool:
    """True where ``asyncio.Task(..., eager_start=True)`` exists (Python 3.12+)."""
    return sys.version_info >= (3, 12)
