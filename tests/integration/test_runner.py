"""The runner in a real process: signals, drain, reload, scaling, zero-downtime restart."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from sockserve.runner import STOP_NOW_GRACE
from tests.helpers import IO_TIMEOUT, client_ctx, connect, listening_sockets, recv_all, wait_for

ROOT = Path(__file__).resolve().parents[2]


class Service:
    """``python -m sockserve serve ...`` with its output collected line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 command: list[str] | None = None) -> None:
        """*command*: another program than the CLI, which prints the same banner."""
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "sockserve", "serve", *args,
                        "--bind", "127.0.0.1:0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=None if env is None else {**os.environ, **env})
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

    def start(*args: str, env: dict[str, str] | None = None,
              command: list[str] | None = None) -> Service:
        started.append(Service(*args, env=env, command=command))
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


def in_flight(address: Any) -> Any:
    """A TwoLines (or Stuck) request begun: the server holds it ("two" ends TwoLines)."""
    client = connect(address)
    client.sendall(b"one\n")
    assert client.makefile("rb").readline() == b"started\n"
    return client


def stop_twice(svc: Service) -> None:
    """SIGTERM, and once the drain has begun, SIGTERM again ("stop now")."""
    svc.signal(signal.SIGTERM)
    svc.wait_line(r"SIGTERM: draining")
    svc.signal(signal.SIGTERM)
    svc.wait_line(r"SIGTERM again: stopping now")


@pytest.mark.parametrize("handler,status,last_line", [
    ("TwoLines", 0, r"stopped \(0 connections finished, 1 cut\)"),
    # A handler that never returns, whatever happens to its socket: after
    # STOP_NOW_GRACE the runner exits without it.
    ("Stuck", 1, r"still running 2 s after stopping now: exiting"),
])
def test_a_second_sigterm_stops_at_once(service: Any, handler: str, status: int,
                                        last_line: str) -> None:
    svc = service(f"tests.integration.apps:{handler}", "--model", "threads",
                  "--drain-timeout", "60")
    with in_flight(svc.address) as client:
        stop_twice(svc)  # without the second, the drain would wait 60 s
        assert svc.proc.wait(IO_TIMEOUT) == status
        assert recv_all(client) == b""
    svc.wait_line(last_line)
    # Said once: the CLI logs to stderr, so the runner does not write it there again.
    assert sum(bool(re.search(last_line, line)) for line in svc.lines) == 1


def runner_script(handler: str, setup: str = "logging.basicConfig(level=logging.INFO)\n",
                  run_args: str = "") -> list[str]:
    """A program that serves *handler* (from apps.py) with ``runner.run(server,
    drain_timeout=60, <run_args>)`` after *setup* (by default: logging at INFO to
    stderr), printing the CLI's banner."""
    return [sys.executable, "-c", (
        "import logging, logging.handlers, queue, sys, sockserve, sockserve.runner\n"
        f"from tests.integration.apps import {handler}\n" + setup +
        f"server = sockserve.ThreadingTCPServer(('127.0.0.1', 0), {handler})\n"
        "print('serving TCP on 127.0.0.1:%d' % server.server_address[1], flush=True)\n"
        f"sockserve.runner.run(server, drain_timeout=60, {run_args})\n")]


def test_a_second_sigterm_waits_for_a_restarted_copy_without_exiting(
        service: Any, tmp_path: Path) -> None:
    # The server stops at once after the second SIGTERM; the runner then waits for the
    # copy it told to stop, which ignores SIGTERM until the test lets it end: waiting
    # past STOP_NOW_GRACE for it is no reason to exit.
    release = tmp_path / "release"
    os.mkfifo(release)
    copy = ("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"print('copy up', flush=True); open({str(release)!r}).read()")
    def release_copy() -> None:
        try:  # the copy reads EOF and ends (no reader: it has ended)
            os.close(os.open(release, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    svc = service(command=runner_script(
        "TwoLines", run_args=f"restart_argv=[sys.executable, '-c', {copy!r}]"))
    try:
        with in_flight(svc.address):
            svc.signal(signal.SIGUSR2)
            svc.wait_line(r"^copy up")
            stop_twice(svc)
            # Not an exit by then (a wait for what must not happen, not synchronisation):
            with pytest.raises(subprocess.TimeoutExpired):
                svc.proc.wait(STOP_NOW_GRACE + 1)
            release_copy()
            assert svc.proc.wait(IO_TIMEOUT) == 0
    finally:
        release_copy()  # however the test ends: the copy must not outlive it
    assert not any("still running" in line for line in svc.lines)


def test_the_exit_after_a_second_sigterm_is_said_on_stderr_whatever_the_logging(
        service: Any) -> None:
    # Logging through a queue (dictConfig's "queue_handler", 3.12+): the listener
    # thread would not get to write the record before the process exits.
    # The listener writes all but that record, which can then only come from stderr.
    queued = ("q = queue.Queue()\n"
              "out = logging.StreamHandler(sys.stdout)\n"
              "out.addFilter(lambda record: 'still running' not in record.getMessage())\n"
              "logging.handlers.QueueListener(q, out).start()\n"
              "logging.getLogger().setLevel(logging.INFO)\n"
              "logging.getLogger().addHandler(logging.handlers.QueueHandler(q))\n")
    svc = service(command=runner_script("Stuck", setup=queued))
    with in_flight(svc.address):
        stop_twice(svc)
        assert svc.proc.wait(IO_TIMEOUT) == 1
    svc.wait_line(r"still running 2 s after stopping now: exiting")


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
        # While both accepted, the one that lost a race must not have waited in accept().
        assert listening_fd_nonblocking(new_pid)
    finally:
        os.kill(new_pid, signal.SIGTERM)  # not our child: the old process started it
        wait_for(lambda: not process_running(new_pid), timeout=IO_TIMEOUT * 2,
                 what="the new process to stop")


def listening_fd_nonblocking(pid: int) -> bool:
    """Whether *pid*'s TCP listening socket is in non-blocking mode (/proc fdinfo)."""
    with open(f"/proc/{pid}/environ", "rb") as f:  # as the process started
        environ = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    fd = int(environ[b"SOCKSERVE_LISTEN_FD"].split(b",")[0])
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        flags = next(line for line in f if line.startswith("flags"))
    return bool(int(flags.split()[1], 8) & os.O_NONBLOCK)


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
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        proc = systemd_activated(listener, "tests.integration.apps:Pid")
    with ended(proc) as output:
        assert f"127.0.0.1:{port}" in output.readline()
        assert ask_pid(("127.0.0.1", port)) == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(IO_TIMEOUT) == 0


@contextlib.contextmanager
def ended(proc: subprocess.Popen[str]) -> Iterator[IO[str]]:
    """*proc*'s output (it was started by the test, stdout piped); on exit the process
    is killed if it still runs."""
    assert proc.stdout is not None
    try:
        yield proc.stdout
    finally:
        proc.kill()
        proc.wait(IO_TIMEOUT)
        proc.stdout.close()


def test_sigusr2_while_draining_is_ignored(service: Any) -> None:
    svc = service("tests.integration.apps:TwoLines", "--drain-timeout", "60")
    with in_flight(svc.address) as client:
        svc.signal(signal.SIGTERM)
        svc.wait_line(r"draining .*: 1 connections open")
        svc.signal(signal.SIGUSR2)  # no new copy, and not a second stop
        svc.wait_line(r"SIGUSR2 while stopping: ignored")
        client.sendall(b"two\n")
        assert recv_all(client) == b"TWO\n"
    assert svc.proc.wait(IO_TIMEOUT) == 0
    svc.wait_line(r"stopped \(1 connections finished, 0 cut\)")


def test_a_stop_during_a_restart_stops_the_new_copy_and_drains(
        service: Any, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    os.mkfifo(hold)  # the new copy waits at start-up until it is opened for writing
    svc = service("tests.integration.apps:TwoLines", "--drain-timeout", "60",
                  env={"SOCKSERVE_TEST_HOLD_RESTART": str(hold)})
    with in_flight(svc.address) as client:
        svc.signal(signal.SIGUSR2)
        svc.wait_line(r"SIGUSR2: starting")
        svc.signal(signal.SIGTERM)  # e.g. a stop during a deploy
        copy = int(svc.wait_line(r"SIGTERM during the restart: stopping the new process "
                                 r"(\d+)").group(1))
        wait_for(lambda: not process_running(copy), what="the copy to stop")
        svc.wait_line(r"draining .*: 1 connections open")  # the drain itself has begun
        client.sendall(b"two\n")
        assert recv_all(client) == b"TWO\n"  # drained, not cut
    assert svc.proc.wait(IO_TIMEOUT) == 0
    svc.wait_line(r"stopped \(1 connections finished, 0 cut\)")


def test_a_copy_that_cannot_serve_leaves_the_old_process_serving(service: Any) -> None:
    svc = service("tests.integration.apps:Pid", env={"SOCKSERVE_TEST_BROKEN_RESTART": "1"})
    old = ask_pid(svc.address)
    svc.signal(signal.SIGUSR2)
    svc.wait_line(r"restarted process \d+ ended before serving.*still serving")
    assert ask_pid(svc.address) == old
    assert svc.stop() == 0


def test_a_copy_whose_predecessor_died_serves_on(service: Any, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    os.mkfifo(hold)
    svc = service("tests.integration.apps:Pid", env={"SOCKSERVE_TEST_HOLD_RESTART": str(hold)})
    old = ask_pid(svc.address)
    svc.signal(signal.SIGUSR2)
    svc.wait_line(r"SIGUSR2: starting")
    wait_for(lambda: children(svc.proc.pid), what="the copy to start")
    svc.proc.kill()  # the old process dies before the copy reports that it serves
    svc.proc.wait(IO_TIMEOUT)
    writers: list[int] = []

    def copy_waits_on_the_fifo() -> bool:
        fd = open_for_writing(hold)
        if fd is not None:
            writers.append(fd)
        return bool(writers)

    wait_for(copy_waits_on_the_fifo, what="the copy to wait on the FIFO")
    os.close(writers[0])  # lets the copy go on
    new = ask_pid(svc.address)  # served by the copy, which kept the socket
    try:
        assert new != old
    finally:
        os.kill(new, signal.SIGTERM)  # not our child
        wait_for(lambda: not process_running(new), timeout=IO_TIMEOUT * 2,
                 what="the copy to stop")


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def open_for_writing(fifo: Path) -> int | None:
    """A descriptor writing to *fifo*, or None while nobody has it open for reading."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader yet
        return None


def test_processes_a_handler_starts_can_be_stopped_with_sigterm(service: Any) -> None:
    svc = service("tests.integration.apps:ChildSignals")
    with connect(svc.address) as client:
        client.sendall(b"go\n")
        assert client.makefile("rb").readline() == b"%d\n" % -signal.SIGTERM
    assert svc.stop() == 0


def test_a_stop_signal_while_closing_stops_at_once(service: Any) -> None:
    svc = service("tests.integration.apps:Stoppable", "--model", "threads",
                  "--drain-timeout", "60")
    with connect(svc.address) as idle, connect(svc.address) as stopper:
        idle.sendall(b"here\n")
        assert idle.recv(100) == b"here\n"
        stopper.sendall(b"stop\n")  # the server stops by itself; closing then waits
        assert stopper.recv(100) == b"stop\n"  # up to 60 s for the idle connection
        svc.wait_line(r"the server stopped serving; closing it")
        svc.signal(signal.SIGTERM)
        svc.wait_line(r"SIGTERM while closing: stopping now")
        assert svc.proc.wait(IO_TIMEOUT) == 0
        assert recv_all(idle) == b""


def test_a_reload_that_fails_keeps_serving(service: Any, tmp_path: Path,
                                           ca: Any) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    svc = service("tests.integration.apps:Pid", "--tls-cert", str(cert),
                  "--tls-key", str(key))
    context = client_ctx(ca)

    def ask_over_tls() -> int:
        with context.wrap_socket(connect(svc.address), server_hostname="127.0.0.1") as tls:
            tls.sendall(b"pid\n")
            return int(tls.makefile("rb").readline())

    assert ask_over_tls() == svc.proc.pid
    cert.write_text("not a certificate\n")
    svc.signal(signal.SIGHUP)
    svc.wait_line(r"failed; still serving as before")
    assert ask_over_tls() == svc.proc.pid  # with the certificate loaded before
    assert svc.stop() == 0


def test_a_serving_failure_is_an_error_exit(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text(
        "import sockserve, sockserve.runner\n"
        "class Broken(sockserve.TCPServer):\n"
        "    def serve_forever(self, poll_interval=0.5):\n"
        "        raise RuntimeError('cannot serve')\n"
        "sockserve.runner.run(Broken(('127.0.0.1', 0), sockserve.StreamRequestHandler))\n")
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=IO_TIMEOUT * 2)
    assert done.returncode == 1 and "RuntimeError: cannot serve" in done.stderr


def systemd_activated(sock: Any, *args: str, fds: int = 1) -> subprocess.Popen[str]:
    """``sockserve serve`` given *sock* as descriptor 3, as systemd does (LISTEN_FDS)."""
    def as_systemd_does() -> None:  # in the child, before exec
        os.dup2(sock.fileno(), 3)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = str(fds)

    return subprocess.Popen(
        [sys.executable, "-m", "sockserve", "serve", *args], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=as_systemd_does, close_fds=False)


@pytest.mark.parametrize("how", ["systemd", "fd://3"])
def test_a_socket_file_made_by_someone_else_stays(how: str, tmp_path: Path) -> None:
    import socket
    path = str(tmp_path / "activated.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        args = ["tests.integration.apps:Inheritable"]
        if how == "fd://3":
            args += ["--bind", "fd://3"]
        proc = systemd_activated(listener, *args, fds=1 if how == "systemd" else 0)
        with ended(proc) as output:
            assert path in output.readline()
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(IO_TIMEOUT)
                client.connect(path)
                client.sendall(b"inheritable?\n")
                assert client.makefile("rb").readline() == b"False\n"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(IO_TIMEOUT) == 0
        assert os.path.exists(path)  # systemd's (or the parent's) file, not sockserve's


def test_listen_fds_naming_a_missing_descriptor_is_a_clear_error() -> None:
    import socket
    with socket.create_server(("127.0.0.1", 0)) as listener:
        proc = systemd_activated(listener, "tests.integration.apps:Pid", fds=2)
        assert proc.stdout is not None
        with proc.stdout:
            output = proc.stdout.read()
        assert proc.wait(IO_TIMEOUT) == 1
    assert "LISTEN_FDS names descriptor 4" in output


@pytest.mark.parametrize("handler,model", [("Upper", "evented"), ("AsyncUpper", "async")])
def test_the_model_follows_the_kind_of_handler(service: Any, handler: str, model: str) -> None:
    svc = service(f"tests.integration.apps:{handler}")
    svc.wait_line(rf"\({model}\)")
    with connect(svc.address) as client:
        client.sendall(b"hi\n")
        assert client.makefile("rb").readline() == b"%d HI\n" % svc.proc.pid
    assert svc.stop() == 0


@pytest.mark.parametrize("handler", ["Upper", "AsyncUpper"])
def test_framed_and_async_handlers_in_prefork_workers(service: Any, handler: str) -> None:
    svc = service(f"tests.integration.apps:{handler}", "--model", "prefork", "--workers", "1")
    with connect(svc.address) as client:
        client.sendall(b"hi\n")
        pid, reply = client.makefile("rb").readline().split()
    assert reply == b"HI" and int(pid) != svc.proc.pid
    assert svc.stop() == 0


def run_script(tmp_path: Path, body: str, **popen: Any) -> subprocess.Popen[str]:
    """A Python script (*body*, which ends in runner.run()) in a process of its own."""
    script = tmp_path / "script.py"
    script.write_text("import os, socket, sys, sockserve, sockserve.runner\n" + body)
    return subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def test_a_forked_child_under_the_runner_has_its_own_signals(tmp_path: Path) -> None:
    proc = run_script(tmp_path, (
        "class Held(sockserve.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        self.wfile.write(b'%d\\n' % os.getpid()); self.wfile.flush()\n"
        "        self.rfile.readline()\n"
        "server = sockserve.ForkingTCPServer(('127.0.0.1', 0), Held)\n"
        "print(server.server_address[1], flush=True)\n"
        "sockserve.runner.run(server)\n"))
    with ended(proc) as output:
        address = ("127.0.0.1", int(output.readline()))
        with connect(address) as held:
            child = int(held.makefile("rb").readline())
            os.kill(child, signal.SIGTERM)  # the child ends; the server does not drain
            assert recv_all(held) == b""
        with connect(address) as again:
            assert int(again.makefile("rb").readline()) not in (child, proc.pid)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(IO_TIMEOUT) == 0


def test_a_restarted_copy_never_waits_for_a_datagram_its_predecessor_took(
        tmp_path: Path) -> None:
    ready_read, ready_write = os.pipe()
    proc = run_script(tmp_path, (
        "class Flags(sockserve.DatagramRequestHandler):\n"
        "    def handle(self):\n"
        "        self.wfile.write(b'%d' % self.server._sockserve_receive_flags)\n"
        "server = sockserve.UDPServer(('127.0.0.1', 0), Flags)\n"
        "print(server.server_address[1], flush=True)\n"
        "sockserve.runner.run(server)\n"),
        env={**os.environ, "SOCKSERVE_READY_FD": str(ready_write)}, pass_fds=(ready_write,))
    os.close(ready_write)
    with ended(proc) as output:
        address = ("127.0.0.1", int(output.readline()))
        with os.fdopen(ready_read, "rb") as ready:
            assert ready.read(1) == b"1"  # as a restarted copy tells its predecessor
        import socket
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(IO_TIMEOUT)
            client.sendto(b"flags?", address)
            assert int(client.recv(100)) & socket.MSG_DONTWAIT
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(IO_TIMEOUT) == 0


def test_run_outside_the_main_thread_is_refused_before_anything_starts() -> None:
    import socket

    import sockserve
    from sockserve.runner import run

    errors: list[BaseException] = []
    with sockserve.TCPServer(("127.0.0.1", 0), sockserve.StreamRequestHandler) as server:
        def call() -> None:
            try:
                run(server)
            except ValueError as exc:
                errors.append(exc)

        descriptors = len(os.listdir("/proc/self/fd"))
        thread = threading.Thread(target=call)
        thread.start()
        thread.join(IO_TIMEOUT)
        assert "main thread" in str(errors[0])
        assert len(os.listdir("/proc/self/fd")) == descriptors  # nothing left open
        assert server.socket.fileno() >= 0  # untouched: still the caller's to close
        socket.create_connection(server.server_address, timeout=IO_TIMEOUT).close()
