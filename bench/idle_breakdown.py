"""Where an idle async connection's memory goes: Python allocations per connection, by line.

    python bench/idle_breakdown.py [--loop uvloop|asyncio] [--connections N]

Serves the benchmark's async echo handler in this process while a child process opens
N connections that each exchange one byte and then stay idle, and prints what
tracemalloc saw allocated per connection meanwhile, by the line that allocated it (lines inside the event loop's
C code show as the loop's ``run_until_complete``).  It measures allocations through
Python's allocator only: the RSS per connection that ``run.py``'s idle scenario reports
also holds the kernel-side socket buffers' user counterpart and allocator slack.
"""

from __future__ import annotations

import argparse
import gc
import linecache
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sockserve import aio  # noqa: E402


class StreamEcho(aio.AsyncStreamRequestHandler):
    """The handler of bench/servers/sockserve_async.py."""

    async def handle(self) -> None:
        read_some, write = self.reader.read_some, self.writer.write
        while data := await read_some(65536):
            write(data)
            await self.writer.drain()


CLIENTS = """
import socket, sys
address, count = (sys.argv[1], int(sys.argv[2])), int(sys.argv[3])
clients = []
for _ in range(count):
    client = socket.create_connection(address, timeout=5)
    client.sendall(b"x")
    assert client.recv(1) == b"x"
    clients.append(client)
print("idle", flush=True)
sys.stdin.read()  # hold them until the parent closes our stdin
"""


def open_idle(address: tuple[str, int], count: int) -> subprocess.Popen[str]:
    """A child process holding *count* idle connections (its allocations are not ours)."""
    child = subprocess.Popen([sys.executable, "-c", CLIENTS, address[0], str(address[1]),
                              str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None and child.stdout.readline() == "idle\n"
    return child


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--top", type=int, default=16, help="lines to show")
    args = p.parse_args()
    server = aio.AsyncTCPServer(("127.0.0.1", 0), StreamEcho, loop_factory=args.loop)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": None},
                     daemon=True).start()
    warm_up = open_idle(server.server_address, 100)  # first-use allocations
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    clients = open_idle(server.server_address, args.connections)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    n = args.connections
    stats = sorted(after.compare_to(before, "lineno"), key=lambda s: -s.size_diff)
    print(f"{args.loop}: {sum(s.size_diff for s in stats) / n:.0f} B per idle connection "
          f"(Python allocations, {n} connections)")
    for s in stats[:args.top]:
        frame = s.traceback[0]
        line = linecache.getline(frame.filename, frame.lineno).strip()
        print(f"{s.size_diff / n:7.0f} B {s.count_diff / n:5.2f} objects  "
              f"{os.path.basename(frame.filename)}:{frame.lineno}  {line[:80]}")
    for child in (warm_up, clients):
        child.communicate()  # closes its stdin: it exits, closing its connections
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
