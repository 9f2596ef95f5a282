"""Client for udp_server.py: sends its arguments as one datagram, prints the answer."""

import argparse
import socket


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("words", nargs="+")
    args = parser.parse_args()
    data = " ".join(args.words)

    # UDP has no connection: sendto() names the server, recv() waits for its answer.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(data.encode(), (args.host, args.port))
        received = sock.recv(65536).decode()

    print(f"Sent:     {data}")
    print(f"Received: {received}")


if __name__ == "__main__":
    main()
