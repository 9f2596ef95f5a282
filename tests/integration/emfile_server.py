"""Run by test_accept_backoff.py in its own process: a server out of file descriptors.

Protocol on stdin/stdout: prints the port; on "measure" spends WINDOW seconds with the
descriptor table full and a client waiting, then frees the descriptors and prints a
JSON report; on EOF shuts down.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import sys
import threading
import time

import sockserve

WINDOW = 1.0


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class CountWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.pauses = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "pausing accepts" in record.getMessage():
            self.pauses += 1


def fill_descriptor_table() -> list[int]:
    """Lower the descriptor limit to 256 and open descriptors until none is left;
    returns them, for the caller to close."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    hogs = []
    try:
        while True:
            hogs.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    return hogs


def main() -> None:
    counter = CountWarnings()
    logging.getLogger("sockserve").addHandler(counter)
    logging.getLogger("sockserve").setLevel(logging.DEBUG)
    server = sockserve.TCPServer(("127.0.0.1", 0), Echo)
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    # One round trip proves the loop runs (its wake-up socketpair exists) before the
    # descriptor table is filled below.
    with socket.create_connection(server.server_address, timeout=5) as probe:
        probe.sendall(b"probe\n")
        assert probe.makefile("rb").readline() == b"probe\n"
    hogs = fill_descriptor_table()
    print(server.server_address[1], flush=True)
    assert sys.stdin.readline().strip() == "measure"
    cpu_before, wall_before = time.process_time(), time.monotonic()
    time.sleep(WINDOW)  # the measurement window, not synchronisation
    cpu, wall = time.process_time() - cpu_before, time.monotonic() - wall_before
    for fd in hogs:
        os.close(fd)
    print(json.dumps({"cpu": cpu, "wall": wall, "pauses": counter.pauses}), flush=True)
    sys.stdin.readline()
    server.shutdown()
    loop.join(5)
    server.server_close()


if __name__ == "__main__":
    main()
