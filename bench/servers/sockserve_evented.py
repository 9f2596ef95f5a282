"""Echo with sockserve's EventedTCPServer: a MessageRequestHandler with chunk framing,
called once per message on the serving loop (no thread per connection).

Prints its port as the first line, like every bench server.
"""

from __future__ import annotations

import sys

import sockserve


class ChunkEcho(sockserve.MessageRequestHandler):
    framing = "chunk"

    def handle_message(self, message: bytes) -> bytes:
        return message


class Server(sockserve.EventedTCPServer):
    request_queue_size = 4096


def main() -> None:
    with Server(("127.0.0.1", 0), ChunkEcho) as server:
        print(server.server_address[1], flush=True)
        try:
            server.serve_forever(poll_interval=None)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    sys.exit(main())
