"""The Python cost of one datagram through ``sockserve.aio``, without the kernel.

    python bench/datagram_path.py [--loop uvloop|asyncio] [--datagrams N]

Serves the benchmark's async datagram echo handler, then, inside one loop callback,
calls the endpoint's ``datagram_received()`` N times with a transport whose
``sendto()`` does nothing, and prints the time per call.  A handler that does not
wait runs to its end inside that call (``_aio_driver``, ``_aio_datagram``), so this is
the whole per-datagram cost that sockserve adds on top of the event loop's own
transport; ``run.py``'s ``udp64`` scenario measures it with the kernel included.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sockserve import aio  # noqa: E402


class DatagramEcho(aio.AsyncDatagramRequestHandler):
    async def handle(self) -> None:
        self.send(self.packet)


class SilentTransport:
    """Takes replies and sends nothing."""

    def sendto(self, data: bytes, addr: Any = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--datagrams", type=int, default=200_000)
    args = parser.parse_args()
    count = args.datagrams
    measured = threading.Event()
    seconds: list[float] = []

    with aio.AsyncUDPServer(("127.0.0.1", 0), DatagramEcho, loop_factory=args.loop) as server:
        started = threading.Event()
        server.service_actions = started.set  # type: ignore[method-assign]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            if not started.wait(10):
                raise SystemExit("the server did not start")
            serving = server._aio_serving
            assert serving is not None
            endpoint = serving.endpoints[0]
            real, silent = endpoint.transport, SilentTransport()
            packet, client = b"x" * 64, ("127.0.0.1", 9)

            def warm_up() -> None:  # a first pass starts the worker (one loop pass later)
                endpoint.transport = silent  # type: ignore[assignment]
                for _ in range(100):
                    endpoint.datagram_received(packet, client)
                serving.loop.call_soon(measure)

            def measure() -> None:
                received = endpoint.datagram_received
                for _ in range(1_000):
                    received(packet, client)
                start = time.perf_counter()
                for _ in range(count):
                    received(packet, client)
                seconds.append(time.perf_counter() - start)
                endpoint.transport = real
                measured.set()

            serving.loop.call_soon_threadsafe(warm_up)
            if not measured.wait(60):
                raise SystemExit("the measurement did not finish")
        finally:
            server.shutdown()
            thread.join()
    print(f"Python {sys.version.split()[0]}, {args.loop}: "
          f"{seconds[0] / count * 1e9:.0f} ns per datagram in datagram_received()")


if __name__ == "__main__":
    main()
