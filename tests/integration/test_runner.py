"""The runner in a real process: signals, drain, reload, scaling, zero-downtime restart."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import IO_TIMEOUT, connect, listening_sockets, recv_all, wait_for

ROOT = Path(__file__).resolve().parents[2]


class Service:
    """``python -m sockserve serve ...`` with its output collected line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sockserve", "serve", *args, "--bind", "127.0.0.1:0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._collect, daemon=True).start()
        banner = self.wait_line(r"serving TCP on .*127\.0\.0\.1:(\d+)")
        self.address = ("127.0.0.1", int(banner.group(1)))

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait_line(self, pattern: str, after: int = 0) -> re.Match[str]:
        """The first output line (from index *after*) matching *pattern*."""
        found: list[re.Match[str]] = []

        def match() -> bool:
            for line in self.lines[after:]:
                m = re.search(pattern, line)
                if m:
                    found.append(m)
                    return True
            return False

        with self.changed:
            if not self.changed.wait_for(match, IO_TIMEOUT * 2):
                raise AssertionError(f"no {pattern!r} in output:\n{''.join(self.lines)}")
        return found[0]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(IO_TIMEOUT * 2)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after SIGTERM; output:\n"
                                 f"{''.join(self.lines)}") from None


@pytest.fixture
def service() -> Iterator[Any]:
    started: list[Service] = []

    def start(*args: str) -> Service:
        started.append(Service(*args))
        return started[-1]

    yield start
    for s in started:
        s.stop()
        assert s.proc.stdout is not None
        s.proc.stdout.close()


def ask_pid(address: Any) -> int:
    with connect(address) as client:
        client.sendall(b"pid\n")
        reply = client.makefile("rb").readline()
    return int(reply)


@pytest.mark.parametrize("model", ["pool", "green"])
def test_sigterm_drains_the_request_in_flight(service: Any, model: str) -> None:
    svc = service("tests.integration.apps:TwoLines", "--model", model)
    with connect(svc.address) as client:
        client.sendall(b"one\n")
        assert client.makefile("rb").readline() == b"started\n"
        svc.signal(signal.SIGTERM)
        svc.wait_line(r"draining .*: 1 connections open")
        client.sendall(b"two\n")
        assert recv_all(client) == b"TWO\n"
    assert svc.proc.wait(IO_TIMEOUT) == 0
    svc.wait_line(r"stopped \(1 connections finished, 0 cut\)")


def test_a_second_sigterm_stops_at_once(service: Any) -> None:
    svc = service("tests.integration.apps:TwoLines", "--model", "threads",
                  "--drain-timeout", "60")
    with connect(svc.address) as client:
        client.sendall(b"one\n")
        assert client.makefile("rb").readline() == b"started\n"
        svc.signal(signal.SIGTERM)
        svc.wait_line(r"SIGTERM: draining")
        svc.signal(signal.SIGTERM)  # without this the drain would wait 60 s
        assert svc.proc.wait(IO_TIMEOUT) == 0
        assert recv_all(client) == b""
    svc.wait_line(r"stopped \(0 connections finished, 1 cut\)")


def test_sighup_replaces_prefork_workers_and_ttin_ttou_scale(service: Any) -> None:
    svc = service("tests.integration.apps:Pid", "--model", "prefork", "--workers", "1")
    before = ask_pid(svc.address)
    mark = len(svc.lines)
    svc.signal(signal.SIGHUP)
    svc.wait_line(rf"worker {before} exited", after=mark)
    assert ask_pid(svc.address) != before
    svc.signal(signal.SIGTTIN)
    svc.wait_line(r"workers: 2")
    svc.signal(signal.SIGTTOU)
    svc.wait_line(r"workers: 1")
    assert svc.stop() == 0


def test_prefork_workers_with_own_reuse_port_sockets_and_cpus(service: Any) -> None:
    svc = service("tests.integration.apps:Pid", "--model", "prefork", "--workers", "2",
                  "--reuse-port", "--cpu-affinity")
    wait_for(lambda: listening_sockets(svc.address[1]) == 3,
             what="the shared socket and one per worker")
    # Spread by a hash of the client's address: all 50 missing one worker: (2/3)**50.
    pids = {ask_pid(svc.address) for _ in range(50)}
    assert len(pids) == 2
    allowed = sorted(os.sched_getaffinity(0))
    assert sorted(cpu for pid in pids for cpu in os.sched_getaffinity(pid)) == \
        sorted((allowed * 2)[:2])  # one CPU each, apart when there are two
    assert svc.stop() == 0


def test_zero_downtime_restart_refuses_no_connection(service: Any) -> None:
    svc = service("tests.integration.apps:Pid", "--model", "pool")
    old_pid = ask_pid(svc.address)
    pids: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        for _ in range(5000):  # bounded; stops once the restart is seen
            if stop.is_set():
                return
            try:
                pids.append(ask_pid(svc.address))
            except (OSError, ValueError) as exc:
                failures.append(exc)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        wait_for(lambda: len(pids) > 20, what="load running")
        svc.signal(signal.SIGUSR2)
        assert svc.proc.wait(IO_TIMEOUT * 2) == 0  # the old process drained and left
        wait_for(lambda: pids[-1] != old_pid, what="the new process answering")
        mark = len(pids)
        wait_for(lambda: len(pids) > mark + 20, what="more answers")
    finally:
        stop.set()
        loader.join(IO_TIMEOUT * 2)
    new_pid = pids[-1]
    try:
        assert failures == []
        assert old_pid in pids and new_pid != old_pid
    finally:
        os.kill(new_pid, signal.SIGTERM)  # not our child: the old process started it
        wait_for(lambda: not process_running(new_pid), timeout=IO_TIMEOUT * 2,
                 what="the new process to stop")


def process_running(pid: int) -> bool:
    """True while *pid* exists and is not a zombie (its parent may not reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_several_bind_addresses(service: Any) -> None:
    svc = service("tests.integration.apps:Pid", "--bind", "127.0.0.2:0")
    banner = svc.wait_line(r"serving TCP on 127\.0\.0\.2:(\d+), 127\.0\.0\.1:(\d+)")
    first, second = (("127.0.0.2", int(banner.group(1))), ("127.0.0.1", int(banner.group(2))))
    assert ask_pid(first) == ask_pid(second)
    assert svc.stop() == 0


def test_systemd_socket_activation() -> None:
    import socket
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def as_systemd_does() -> None:  # in the child, before exec
        os.dup2(listener.fileno(), 3)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"

    with listener:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sockserve", "serve", "tests.integration.apps:Pid"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            preexec_fn=as_systemd_does, close_fds=False)  # fds are non-inheritable anyway
    assert proc.stdout is not None
    try:
        assert f"127.0.0.1:{port}" in proc.stdout.readline()
        assert ask_pid(("127.0.0.1", port)) == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(IO_TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait(IO_TIMEOUT)
        proc.stdout.close()
