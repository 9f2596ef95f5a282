"""What every peer server shares: its command line, the port announcement, skipping.

The driver starts each peer as ``python FILE [--port N] [flags]`` and reads the first
line of its stdout: the bound port, or ``SKIP <reason>`` when a package is missing.
Reporting the port the kernel picked (port 0) means no free port is ever guessed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn

HOST = "127.0.0.1"
# One read or write of at most this many bytes; the same for every peer so that none
# wins by batching more (a 16 KiB message fits in one read everywhere).
CHUNK = 65536


def parser(description: str, *, all_cpus: bool = False) -> argparse.ArgumentParser:
    """An argument parser with the ``--port`` option every peer takes, and with
    *all_cpus* the ``--all-cpus`` option of the pre-forking peers (``parse()``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    if all_cpus:
        p.add_argument("--all-cpus", action="store_true",
                       help="run on every CPU instead of the one the driver pinned us to")
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line; with ``--all-cpus``, undo the driver's pinning first.

    Called while this process has one thread: the affinity set here is what every
    later thread and forked worker inherits (sched_setaffinity(2)).
    """
    args = p.parse_args()
    if getattr(args, "all_cpus", False):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    return args


def announce(port: int) -> None:
    """Tell the driver the bound port: the first stdout line, flushed at once."""
    print(port, flush=True)


def skip(reason: str) -> NoReturn:
    """Tell the driver this peer cannot run here (e.g. its package is missing), and exit."""
    print(f"SKIP {reason}", flush=True)
    sys.exit(0)


def run_asyncio(main: Coroutine[Any, Any, None], use_uvloop: bool) -> None:
    """Run *main* on asyncio's default loop, or on uvloop's."""
    import asyncio  # here, so that the socketserver peers do not carry it in memory

    if not use_uvloop:
        asyncio.run(main)
        return
    try:
        import uvloop
    except ImportError:
        main.close()
        skip("uvloop is not installed")
    uvloop.run(main)
