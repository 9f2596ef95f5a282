"""What a call on a handler's guarded rfile/wfile costs (servers with limits set).

    python bench/guarded_files.py [--ops N] [--unbuffered-read]

StreamRequestHandler gives the handler guarded files when the server sets timeouts or a
line limit (_streams.py): each call sets the socket's timeout for itself and puts the
handler's own back.  This times write() + the peer's recv(), then the peer's send() +
readline(), over a socketpair in one thread: the files' own cost plus four system calls,
no scheduling.  Compare trees by running it with PYTHONPATH pointing at each ``src``.
"""

from __future__ import annotations

import argparse
import socket
import time

from sockserve._streams import StreamLimits, guarded_files

MESSAGE = b"x" * 63 + b"\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", type=int, default=100_000, help="calls of each kind")
    p.add_argument("--unbuffered-read", action="store_true",
                   help="rbufsize = 0 (a line is peeked at, then taken up to its newline)")
    args = p.parse_args()
    ours, peer = socket.socketpair()
    limits = StreamLimits(idle_timeout=30.0, write_timeout=30.0)
    rfile, wfile = guarded_files(ours, limits, 0 if args.unbuffered_read else -1, 0)
    started = time.perf_counter()
    for _ in range(args.ops):
        wfile.write(MESSAGE)
        peer.recv(100)
    written = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.ops):
        peer.send(MESSAGE)
        rfile.readline()
    read = time.perf_counter() - started
    print(f"write(): {written / args.ops * 1e6:.2f} µs, "
          f"readline(): {read / args.ops * 1e6:.2f} µs (64-byte lines, {args.ops} each)")


if __name__ == "__main__":
    main()
