"""The ``sockserve`` command: ``serve`` runs any handler, ``echo`` the demo, ``send`` is
the demo's client.  Servers started here get ``ProductionDefaults`` and the signal
handling of ``runner.run()``."""

from __future__ import annotations

import argparse
import importlib
import logging
import socket
import sys
from typing import Any

from . import __version__
from .access import AccessList
from .address import Address, bind_sockets, display_client_address, parse_address
from .defaults import production
from .echo import UpperEchoDatagramHandler, UpperEchoHandler, send
from .errors import SockServeError
from ._listen import OwnedSocketFile, is_filesystem_path
from .runner import inherited_listen_sockets, run

logger = logging.getLogger("sockserve.cli")

MODELS = ("serial", "threads", "pool", "prefork", "green", "evented", "async")
DEFAULT_SERVE_ADDRESS = "127.0.0.1:8000"
DEFAULT_WORKERS = 2  # PreForkMixIn.workers
DEFAULT_THREADS = 16  # ThreadPoolMixIn.max_workers


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` as a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except SockServeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _owner(text: str) -> tuple[int, int]:
    """``USER[:GROUP]`` (names or numbers) as (uid, gid); -1 leaves one unchanged."""
    import grp
    import pwd
    user, _, group = text.partition(":")
    try:
        uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid if user else -1
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid if group else -1
    except KeyError as exc:
        raise argparse.ArgumentTypeError(f"unknown user or group in {text!r}") from exc
    return uid, gid


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("serving")
    group.add_argument("--bind", type=_address, metavar="ADDR", action="append",
                       help="HOST:PORT, [IPv6]:PORT, *:PORT, udp://HOST:PORT, unix:/path, "
                            "unix:@name, fd://N; repeat to serve several addresses "
                            f"(default: {DEFAULT_SERVE_ADDRESS} for serve, --host and "
                            "--port for echo)")
    group.add_argument("--unix-mode", type=lambda text: int(text, 8), metavar="OCTAL",
                       help="permissions of Unix socket files, e.g. 660")
    group.add_argument("--unix-owner", type=_owner, metavar="USER[:GROUP]",
                       help="owner of Unix socket files")
    group.add_argument("--model", choices=MODELS,
                       help="concurrency model (default: pool; evented for a "
                            "MessageRequestHandler, async for an async handler)")
    group.add_argument("--workers", type=_positive,
                       help=f"processes for prefork (default: {DEFAULT_WORKERS})")
    group.add_argument("--reuse-port", action="store_true",
                       help="SO_REUSEPORT: other processes may listen on the same port; "
                            "with prefork, each worker also listens on a socket of its "
                            "own (the kernel balances connections)")
    group.add_argument("--cpu-affinity", action="store_true",
                       help="prefork: pin each worker to one CPU, spread over the CPUs")
    group.add_argument("--threads", type=_positive,
                       help=f"threads for pool, and for each prefork worker of blocking "
                            f"handlers (default: {DEFAULT_THREADS})")
    limits = parser.add_argument_group("limits (defaults: sockserve.defaults)")
    for name, kind in (("max-connections", int), ("idle-timeout", float),
                       ("read-timeout", float), ("write-timeout", float),
                       ("connection-lifetime", float), ("drain-timeout", float),
                       ("max-connections-per-ip", int)):
        limits.add_argument(f"--{name}", type=kind, metavar="N")
    access = parser.add_argument_group("access control")
    access.add_argument("--allow", action="append", default=[], metavar="CIDR")
    access.add_argument("--deny", action="append", default=[], metavar="CIDR")
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls-cert", metavar="PEM")
    tls.add_argument("--tls-key", metavar="PEM")
    tls.add_argument("--tls-client-ca", metavar="PEM")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sockserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sockserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve MODULE:HANDLER")
    serve.add_argument("handler", metavar="MODULE:HANDLER",
                       help="a request handler class, e.g. myapp.handlers:Echo")
    _add_server_options(serve)

    echo = commands.add_parser("echo", help="serve the upper-casing echo demo")
    echo.add_argument("--udp", action="store_true", help="serve UDP instead of TCP")
    echo.add_argument("--host", default="localhost", help="address (default: localhost)")
    echo.add_argument("--port", type=int, default=9999, help="port (default: 9999; 0 picks)")
    _add_server_options(echo)

    client = commands.add_parser("send", help="send DATA to an echo server, print the reply")
    client.add_argument("address", type=parse_host_port, metavar="HOST:PORT")
    client.add_argument("data", nargs="+", help="words to send, joined by spaces")
    client.add_argument("--udp", action="store_true", help="send one UDP datagram")
    client.add_argument("--timeout", type=float, default=5.0, help="seconds (default: 5)")
    return parser


def load_handler(spec: str) -> type:
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise SockServeError(f"expected MODULE:HANDLER, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SockServeError(f"cannot import {module_name!r}: {exc}") from exc
    handler = getattr(module, attr, None)
    if not isinstance(handler, type):
        raise SockServeError(f"{spec!r} is not a class")
    return handler


def handler_kind(handler: type) -> str:
    """"framed" (a MessageRequestHandler), "async" (sockserve.aio) or "blocking"."""
    from ._aio_handlers import AsyncBaseRequestHandler
    from ._evented import MessageRequestHandler
    if issubclass(handler, MessageRequestHandler):
        return "framed"
    if issubclass(handler, AsyncBaseRequestHandler):
        return "async"
    return "blocking"


# Which models serve which kind of handler.
MODELS_FOR = {"framed": ("evented", "prefork"), "async": ("async", "prefork"),
              "blocking": ("serial", "threads", "pool", "prefork", "green")}


def choose_model(handler: type, model: str | None) -> str:
    """*model*, or the default for *handler*'s kind; refuses a model that cannot serve it."""
    kind = handler_kind(handler)
    allowed = MODELS_FOR[kind]
    if model is None:
        return allowed[0] if kind != "blocking" else "pool"
    if model not in allowed:
        raise SockServeError(f"--model {model} cannot serve {handler.__name__} (a {kind} "
                             f"handler); use --model {' or '.join(allowed)}")
    return model


def server_class_for(sock: socket.socket, model: str, handlers: str = "blocking") -> type:
    """The server class for *sock*'s family and type under *model*, serving *handlers*
    (a ``handler_kind()``)."""
    import sockserve
    framed = handlers == "framed"
    stream = sock.type == socket.SOCK_STREAM
    unix = sock.family == getattr(socket, "AF_UNIX", None)
    kind = ("UnixStream" if stream else "UnixDatagram") if unix else ("TCP" if stream else "UDP")
    if framed and not stream:
        raise SockServeError("a MessageRequestHandler needs a stream socket (TCP, Unix); "
                             "serve datagrams with a DatagramRequestHandler")
    if model in ("green", "evented") and not stream:
        raise SockServeError(f"--model {model} serves stream sockets (TCP, Unix); "
                             "use pool or prefork for datagrams")
    if model == "async":
        from . import aio
        return getattr(aio, f"Async{kind}Server")  # type: ignore[no-any-return]
    prefix = {"serial": "", "threads": "Threading", "pool": "ThreadPool",
              "prefork": "PreFork", "green": "Green", "evented": "Evented"}[model]
    if model == "prefork":  # each worker gets a pool, an event loop, or serves evented
        from . import aio
        inner = {"framed": sockserve.EventedMixIn, "async": aio.AsyncMixIn}.get(
            handlers, sockserve.ThreadPoolMixIn)
        return type(f"PreFork{kind}Server", (sockserve.PreForkMixIn, inner,
                                              getattr(sockserve, f"{kind}Server")), {})
    cls: type = getattr(sockserve, f"{prefix}{kind}Server")
    return cls


def _check_model_options(args: argparse.Namespace) -> None:
    """Refuse an option the chosen model would ignore."""
    given = [("--workers", args.workers is not None, ("prefork",)),
             ("--cpu-affinity", args.cpu_affinity, ("prefork",)),
             ("--threads", args.threads is not None, ("pool", "prefork"))]
    for option, present, models in given:
        if present and args.model not in models:
            raise SockServeError(f"{option} applies to --model {' or '.join(models)}, "
                                 f"not {args.model}")


def build_server(args: argparse.Namespace, handler: type, addresses: list[Address]) -> Any:
    """Bind (or take the inherited sockets) and configure a server from the options.

    Resource handling: on failure, every socket bound so far is closed (and the Unix
    socket files made here removed).
    """
    if (args.tls_key or args.tls_client_ca) and not args.tls_cert:
        raise SockServeError("--tls-key and --tls-client-ca need --tls-cert")
    args.model = choose_model(handler, args.model)
    _check_model_options(args)
    # What the options can get wrong, before anything is bound.
    access_list = AccessList.from_strings(args.allow, args.deny) \
        if args.allow or args.deny else None
    ssl_context = _tls_context(args) if args.tls_cert else None
    inherited = inherited_listen_sockets()
    socks = [socket.socket(fileno=fd) for fd in inherited.fds]
    # Unix socket files are the server's to remove if this process made them, or took
    # them over from a restarting predecessor; not systemd's, nor a parent's (fd://N).
    owned: list[socket.socket] = list(socks) if inherited.from_restart else []
    try:
        if not socks:
            for address in addresses:
                bound = bind_sockets(address, unix_mode=args.unix_mode,
                                     unix_owner=args.unix_owner, reuse_port=args.reuse_port)
                socks += bound
                if address.fd is None:
                    owned += bound
        kinds = {(sock.family == getattr(socket, "AF_UNIX", None), sock.type) for sock in socks}
        if len(kinds) > 1:
            raise SockServeError("one server serves one kind of socket: do not mix TCP, "
                                 "UDP and Unix addresses")
        if args.tls_cert and socks[0].type != socket.SOCK_STREAM:
            raise SockServeError("TLS needs stream sockets (there is no DTLS)")
        model_class = server_class_for(socks[0], args.model, handler_kind(handler))
        settings: dict[str, Any] = {"max_workers": args.threads or DEFAULT_THREADS,
                                    "workers": args.workers or DEFAULT_WORKERS,
                                    "reuse_port_per_worker": args.reuse_port,
                                    "worker_cpu_affinity": args.cpu_affinity,
                                    "unmap_ipv4_clients": True}
        for name in ("max_connections", "idle_timeout", "read_timeout", "write_timeout",
                     "connection_lifetime", "drain_timeout", "max_connections_per_ip"):
            if getattr(args, name) is not None:
                settings[name] = getattr(args, name)
        server_class: Any = production(model_class, **settings)
        server = server_class.from_sockets(socks, handler, own_files=owned)
    except BaseException:
        for sock in socks:
            if any(sock is mine for mine in owned) and not inherited.from_restart:
                _remove_socket_file(sock)
            sock.close()
        raise
    server.access_list = access_list
    server.ssl_context = ssl_context
    return server


def _tls_context(args: argparse.Namespace) -> Any:
    from .tls import server_context
    return server_context(args.tls_cert, args.tls_key, client_cafile=args.tls_client_ca,
                          verify_client="required" if args.tls_client_ca else "none")


def _remove_socket_file(sock: socket.socket) -> None:
    """Remove the file of a Unix socket this process has just bound (not yet serving)."""
    name = sock.getsockname() if sock.family == getattr(socket, "AF_UNIX", None) else None
    if name and is_filesystem_path(name):
        OwnedSocketFile.after_bind(name).remove()


def serve(args: argparse.Namespace, handler: type, default_address: Address) -> int:
    server = build_server(args, handler, args.bind or [default_address])
    where = ", ".join(map(display_client_address, server.server_addresses))
    stream = server.socket.type == socket.SOCK_STREAM
    if server.socket.family == getattr(socket, "AF_UNIX", None):
        kind = "Unix stream" if stream else "Unix datagram"
    else:
        kind = "TCP" if stream else "UDP"
    print(f"sockserve: serving {kind} on {where} ({args.model}) — Ctrl-C stops", flush=True)

    def reload_certificates() -> None:
        # A new context, swapped in only once it loads: a bad file keeps the old one.
        if args.tls_cert:
            server.ssl_context = _tls_context(args)

    report = run(server, drain_timeout=server.drain_timeout, reload=reload_certificates)
    if report is not None:
        print(f"sockserve: stopped ({report.finished} connections finished, "
              f"{report.cut} cut)", flush=True)
    return 0


def run_send(args: argparse.Namespace) -> int:
    data = " ".join(args.data)
    try:
        reply = send(args.address, data.encode(), udp=args.udp, timeout=args.timeout)
    except OSError as exc:
        print(f"sockserve send: {exc}", file=sys.stderr)
        return 1
    print(f"Sent:     {data}")
    print(f"Received: {reply.decode(errors='replace')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        if args.command == "send":
            return run_send(args)
        if args.command == "echo":
            handler: type = UpperEchoDatagramHandler if args.udp else UpperEchoHandler
            scheme = "udp://" if args.udp else ""
            host = f"[{args.host}]" if ":" in args.host else args.host
            return serve(args, handler, parse_address(f"{scheme}{host}:{args.port}"))
        return serve(args, load_handler(args.handler), parse_address(DEFAULT_SERVE_ADDRESS))
    except (SockServeError, OSError) as exc:
        print(f"sockserve: {exc}", file=sys.stderr)
        return 1
