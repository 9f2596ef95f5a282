"""Child process for test_stdlib_servers_on_sockserve.py: ``python stdlib_servers_child.py NAME``.

Installs sockserve as ``socketserver`` before any stdlib server module is imported, runs
scenario NAME (one stdlib server serving one real request on 127.0.0.1) and prints its
result as one JSON object on stdout.  Failures raise: a traceback and a non-zero status.
"""

from __future__ import annotations

import sys

import sockserve

# Must happen before http.server & co. import socketserver; prove nothing did already.
PRELOADED = sorted(name for name in ("socketserver", "http.server", "xmlrpc.server",
                                     "wsgiref.simple_server", "logging.config")
                   if name in sys.modules)
sys.modules["socketserver"] = sockserve

import functools  # noqa: E402
import http.client  # noqa: E402
import http.server  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import logging.config  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import tempfile  # noqa: E402
import wsgiref.simple_server  # noqa: E402
import xmlrpc.client  # noqa: E402
import xmlrpc.server  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from sockserve.testing import serve_in_thread  # noqa: E402

# Every blocking client step has this timeout; the parent also kills us after 60 s.
IO_TIMEOUT = 10.0

Result = dict[str, Any]

# The servers below are typed "Any": typeshed builds them on the stdlib's socketserver,
# while here they run on sockserve, which is what this file checks.


def common() -> Result:
    """What every scenario reports: sockserve really stands in for socketserver."""
    return {
        "preloaded": PRELOADED,
        "stdlib_socketserver_loaded": any(
            getattr(module, "__name__", None) == "socketserver"
            for module in list(sys.modules.values())),
        "modules_use_sockserve": [
            getattr(http.server, "socketserver") is sockserve,
            getattr(xmlrpc.server, "socketserver") is sockserve,
            getattr(logging.config, "ThreadingTCPServer") is sockserve.ThreadingTCPServer,
        ],
    }


class QuietHTTPHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def http_server() -> Result:
    with tempfile.TemporaryDirectory() as root:
        Path(root, "hello.txt").write_bytes(b"hello from a sockserve-based http.server\n")
        handler = functools.partial(QuietHTTPHandler, directory=root)
        server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        with serve_in_thread(server):
            connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1],
                                                    timeout=IO_TIMEOUT)
            try:
                connection.request("GET", "/hello.txt")
                response = connection.getresponse()
                status, body = response.status, response.read()
            finally:
                connection.close()
    return {
        "classes": {
            "ThreadingHTTPServer is a ThreadingMixIn": issubclass(
                http.server.ThreadingHTTPServer, sockserve.ThreadingMixIn),
            "HTTPServer is a TCPServer": issubclass(http.server.HTTPServer, sockserve.TCPServer),
            "BaseHTTPRequestHandler is a StreamRequestHandler": issubclass(
                http.server.BaseHTTPRequestHandler, sockserve.StreamRequestHandler),
        },
        "status": status,
        "body": body.decode(),
    }


class TimeoutTransport(xmlrpc.client.Transport):
    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = super().make_connection(host)
        connection.timeout = IO_TIMEOUT
        return connection


def xmlrpc_server() -> Result:
    server: Any = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
    server.register_function(lambda a, b: a + b, "add")
    with serve_in_thread(server):
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with xmlrpc.client.ServerProxy(url, transport=TimeoutTransport()) as proxy:
            answer = proxy.add(40, 2)
    return {
        "classes": {
            "SimpleXMLRPCServer is a TCPServer": issubclass(
                xmlrpc.server.SimpleXMLRPCServer, sockserve.TCPServer),
            "SimpleXMLRPCRequestHandler is a StreamRequestHandler": issubclass(
                xmlrpc.server.SimpleXMLRPCRequestHandler, sockserve.StreamRequestHandler),
        },
        "answer": answer,
    }


class QuietWSGIHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def hello_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"wsgi says hello to ", environ["PATH_INFO"].encode()]


def wsgi_server() -> Result:
    server: Any = wsgiref.simple_server.make_server("127.0.0.1", 0, hello_app,
                                                    handler_class=QuietWSGIHandler)
    with serve_in_thread(server):
        connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1],
                                                timeout=IO_TIMEOUT)
        try:
            connection.request("GET", "/compat")
            response = connection.getresponse()
            status, body = response.status, response.read()
        finally:
            connection.close()
    return {
        "classes": {
            "WSGIServer is a TCPServer": issubclass(
                wsgiref.simple_server.WSGIServer, sockserve.TCPServer),
            "server is a sockserve.BaseServer": isinstance(server, sockserve.BaseServer),
        },
        "status": status,
        "body": body.decode(),
    }


def logging_listener() -> Result:
    """logging.config.listen(0): a ThreadingTCPServer receiving a length-prefixed config."""
    # A threading.Thread with the documented extras: ready (an Event), port, rcvr, hdlr.
    listener: Any = logging.config.listen(0)
    listener.start()
    try:
        if not listener.ready.wait(IO_TIMEOUT):  # set once the server is bound
            raise RuntimeError("the logging config listener did not start")
        listener.ready.clear()  # set again once a configuration has been applied
        config = json.dumps({
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"compat.applied": {"level": "DEBUG"}},
        }).encode()
        with socket.create_connection(("127.0.0.1", listener.port), timeout=IO_TIMEOUT) as client:
            client.sendall(struct.pack(">L", len(config)) + config)
            applied = listener.ready.wait(IO_TIMEOUT)
    finally:
        logging.config.stopListening()
        listener.join(IO_TIMEOUT)  # the receiver checks for a stop once a second
    return {
        "classes": {
            "receiver is a ThreadingTCPServer": issubclass(
                listener.rcvr, sockserve.ThreadingTCPServer),
            "handler is a StreamRequestHandler": issubclass(
                listener.hdlr, sockserve.StreamRequestHandler),
        },
        "applied": applied,
        "level": logging.getLevelName(logging.getLogger("compat.applied").level),
        "listener_alive": listener.is_alive(),
    }


SCENARIOS: dict[str, Callable[[], Result]] = {
    "http.server": http_server,
    "xmlrpc.server": xmlrpc_server,
    "wsgiref.simple_server": wsgi_server,
    "logging.config.listen": logging_listener,
}


def main(argv: list[str]) -> int:
    [name] = argv
    result = SCENARIOS[name]()
    print(json.dumps({**common(), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
