"""accept() out of descriptors (EMFILE) backs off instead of spinning, then resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import connect, recv_all

SCRIPT = Path(__file__).with_name("emfile_server.py")


def test_emfile_backs_off_then_serves_the_waiting_client() -> None:
    server = subprocess.Popen([sys.executable, str(SCRIPT)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        port = int(server.stdout.readline())
        with connect(("127.0.0.1", port)) as client:
            client.sendall(b"still here\n")  # queued: the server cannot accept() it yet
            server.stdin.write("measure\n")
            server.stdin.flush()
            report = json.loads(server.stdout.readline())
            # Descriptors are free again: the waiting client is served.
            assert recv_all(client) == b"still here\n"
        server.stdin.close()
        assert server.wait(10) == 0
    finally:
        server.kill()
        server.wait(10)
        server.stdout.close()
        if not server.stdin.closed:
            server.stdin.close()
    # A spinning loop burns a whole core (cpu ≈ wall); backing off uses almost none.
    assert report["cpu"] < 0.3 * report["wall"], report
    assert report["pauses"] >= 1, report
