"""Handlers that the runner tests serve through ``sockserve serve tests.integration.apps:X``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import sockserve
from sockserve import aio


class Pid(sockserve.StreamRequestHandler):
    """Replies to each line with the serving process's pid."""

    def handle(self) -> None:
        for _ in self.rfile:
            self.wfile.write(b"%d\n" % os.getpid())


class TwoLines(sockserve.StreamRequestHandler):
    """A request in two parts, so a test decides when it is in flight."""

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"started\n")
        self.wfile.write(self.rfile.readline().upper())


class Stuck(sockserve.StreamRequestHandler):
    """Starts, then waits for ever on something that is not its socket: cutting the
    connection does not end it."""

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"started\n")
        self.wfile.flush()
        threading.Event().wait()


class ChildSignals(sockserve.StreamRequestHandler):
    """Starts a process, as handlers do, and tells whether SIGTERM ends it."""

    def handle(self) -> None:
        self.rfile.readline()
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        child.terminate()
        try:
            status = str(child.wait(10))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            status = "SIGTERM did not end it"
        self.wfile.write(status.encode() + b"\n")


class Inheritable(sockserve.StreamRequestHandler):
    """Tells whether a process started by a handler would inherit the listening socket."""

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"%r\n" % os.get_inheritable(self.server.socket.fileno()))


class Stoppable(sockserve.StreamRequestHandler):
    """Echoes lines; "stop" makes the server stop by itself (not by a signal)."""

    def handle(self) -> None:
        for line in self.rfile:
            if line == b"stop\n":
                threading.Thread(target=self.server.shutdown).start()
            self.wfile.write(line)


class Upper(sockserve.MessageRequestHandler):
    """A framed handler: the CLI serves it with the evented model."""

    def handle_message(self, message: bytes) -> bytes | None:
        return b"%d %s" % (os.getpid(), message.upper())


class AsyncUpper(aio.AsyncStreamRequestHandler):
    """An async handler: the CLI serves it on an event loop."""

    async def handle(self) -> None:
        while line := await self.reader.readline():
            self.writer.write(b"%d %s" % (os.getpid(), line.upper()))


class AsyncUpperDatagram(aio.AsyncDatagramRequestHandler):
    """An async datagram handler: the CLI serves it on an event loop."""

    async def handle(self) -> None:
        self.send(b"%d %s" % (os.getpid(), self.packet.upper()))


# A restarted copy (it inherits SOCKSERVE_LISTEN_FD) that the tests hold or break:
if os.environ.get("SOCKSERVE_LISTEN_FD"):
    if os.environ.get("SOCKSERVE_TEST_HOLD_RESTART"):
        # Opening a FIFO for reading waits until the test opens it for writing.
        open(os.environ["SOCKSERVE_TEST_HOLD_RESTART"]).close()
    if os.environ.get("SOCKSERVE_TEST_BROKEN_RESTART"):
        def cannot_serve(self: object, poll_interval: float | None = 0.5) -> None:
            raise RuntimeError("this version cannot serve")

        sockserve.BaseServer.serve_forever = cannot_serve  # type: ignore[method-assign]
