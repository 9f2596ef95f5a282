"""Handlers that the runner tests serve through ``sockserve serve tests.integration.apps:X``."""

from __future__ import annotations

import os

import sockserve


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
