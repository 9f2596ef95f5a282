"""Any server class with the socketserver API as a peer: ``MODULE:CLASS [NAME=VALUE ...]``.

    python bench/servers/socketserver_api.py socketserver:ThreadingTCPServer
    python bench/servers/socketserver_api.py sockserve:ThreadingTCPServer daemon_threads=True

TCP classes get the stream echo handler and UDP classes the datagram one, both from
``handlers.make_handlers(MODULE)``, so stdlib and sockserve run identical handler code.
NAME=VALUE pairs (VALUE a Python literal) become class attributes of a subclass, for
options such as ``max_children=100``.  Without them every stdlib default is kept,
including ``request_queue_size = 5``, because that is what users of the stdlib get.

``--all-cpus`` undoes the driver's pinning to one CPU before the server starts, so that
a pre-forked server's workers (which inherit the affinity) can spread over every CPU.
"""

from __future__ import annotations

import ast
import importlib
import socket

from _peer import HOST, announce, parse, parser, skip
from handlers import make_handlers


def main() -> None:
    p = parser(__doc__.splitlines()[0], all_cpus=True)
    p.add_argument("server", help="MODULE:CLASS, e.g. socketserver:ThreadingTCPServer")
    p.add_argument("attrs", nargs="*", metavar="NAME=VALUE",
                   help="class attribute to set, VALUE a Python literal")
    args = parse(p)
    module_name, _, class_name = args.server.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        skip(f"{module_name} cannot be imported: {exc}")
    base = getattr(module, class_name, None)
    if not isinstance(base, type):
        skip(f"{module_name} has no class {class_name}")
    attrs = {}
    for pair in args.attrs:
        name, _, value = pair.partition("=")
        attrs[name] = ast.literal_eval(value)
    server_class = type(class_name, (base,), attrs)
    stream_echo, datagram_echo = make_handlers(module)
    udp = getattr(server_class, "socket_type", None) == socket.SOCK_DGRAM
    with server_class((HOST, args.port), datagram_echo if udp else stream_echo) as server:
        announce(server.server_address[1])
        server.serve_forever()


if __name__ == "__main__":
    main()
