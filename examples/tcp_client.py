"""Client for tcp_server.py: sends its arguments as one line, prints the answer."""

import argparse
import socket


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("words", nargs="+")
    args = parser.parse_args()
    data = " ".join(args.words)

    # create_connection() resolves the name and connects; the timeout bounds every step.
    with socket.create_connection((args.host, args.port), timeout=5) as sock:
        sock.sendall(data.encode() + b"\n")
        received = sock.makefile("rb").readline().decode().strip()

    print(f"Sent:     {data}")
    print(f"Received: {received}")


if __name__ == "__main__":
    main()
