"""Long runs, outside the default suite: ``python3 dev.py test -m stress``."""

from __future__ import annotations

import socket
import tracemalloc

import pytest

import sockserve
from sockserve.testing import serve_in_thread
from tests.helpers import connect

REQUESTS = 100_000


class Tiny(sockserve.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"k")


@pytest.mark.stress
@pytest.mark.timeout(600)
def test_threading_server_memory_stays_flat_over_100k_requests() -> None:
    def run(count: int) -> None:
        for _ in range(count):
            with connect(server.server_address) as client:
                client.shutdown(socket.SHUT_WR)
                assert client.recv(1) == b"k"

    with serve_in_thread(sockserve.ThreadingTCPServer(("127.0.0.1", 0), Tiny)) as server:
        run(5_000)  # warm up: caches, the allocator's arenas
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            run(REQUESTS)
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        # A Thread object (with its locks and dict) is over 1 KiB: keeping them would
        # add 100+ MiB here.
        assert after - before < 256 * 1024, (before, after)
