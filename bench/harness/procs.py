"""Server and load-generator processes, and what /proc says about them.

Each server runs in a session of its own (``start_new_session``), so "the server" is
every process whose session id is the server's pid: the forking server's children are
found without knowing their pids, and one killpg() stops them all.

CPU time: for each process of the session, utime + stime (all its threads, including
threads that already exited) + cutime + cstime (children it has reaped) from
/proc/PID/stat, summed.  A child alive at the first sample and reaped before the second
moves from its own line to its parent's cutime, so it is counted once.  The resolution
is one clock tick (usually 10 ms): over a 5 s window at full load that is 0.2 %.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 20.0  # a cold interpreter importing gevent can take a few seconds


class ServerFailed(Exception):
    """The server did not start, did not echo, or died."""


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def sid(self) -> int:
        return self.proc.pid


def _pinned(cpu: int) -> Callable[[], None]:
    def setup() -> None:  # runs in the child between fork and exec
        os.sched_setaffinity(0, {cpu})
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 5,000 idle clients
    return setup


def start_server(name: str, argv: list[str], cpu: int, log: Path) -> Server | str:
    """Start *argv* pinned to *cpu*; the Server, or the reason it skipped itself.

    Raises:
        ServerFailed: it exited or printed no port within START_TIMEOUT.
    """
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, text=True, start_new_session=True,
                                preexec_fn=_pinned(cpu))
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
    line = proc.stdout.readline().strip() if ready else ""
    if line.startswith("SKIP"):
        proc.wait(5)
        return line[4:].strip()
    if not line.isdigit():
        stop_server(Server(name, proc, 0, log))
        raise ServerFailed(f"{name} printed {line!r} instead of its port; "
                           f"stderr: {tail(log)}")
    return Server(name, proc, int(line), log)


def stop_server(server: Server) -> None:
    """SIGTERM the server's whole session, then SIGKILL whatever is left after 3 s."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(server.sid, sig)
        except ProcessLookupError:
            break
        try:
            server.proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    if server.proc.stdout:
        server.proc.stdout.close()


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def ping(server: Server, udp: bool) -> None:
    """One echo round trip, so a server that listens but does not echo fails early."""
    message = b"ping"
    try:
        if udp:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(1.0)
                for _ in range(5):
                    sock.sendto(message, ("127.0.0.1", server.port))
                    try:
                        if sock.recv(64) == message:
                            return
                    except TimeoutError:
                        continue
            raise ServerFailed(f"{server.name}: no UDP echo")
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(message)
            got = b""
            while len(got) < len(message):
                chunk = sock.recv(64)
                if not chunk:
                    break
                got += chunk
            if got != message:
                raise ServerFailed(f"{server.name}: echoed {got!r}")
    except OSError as exc:
        raise ServerFailed(f"{server.name}: ping failed: {exc}; stderr: {tail(server.log)}") \
            from exc


def _session_stats(sid: int) -> list[list[str]]:
    """The /proc/PID/stat fields after the command name, for each process of *sid*."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if fields[3] == str(sid):  # fields: state ppid pgrp session ... (proc(5))
            found.append([entry.name, *fields])
    return found


def cpu_seconds(sid: int) -> tuple[float, float]:
    """utime + stime + cutime + cstime of every process in the session, and the user
    part of it (utime + cutime: the interpreter and the loop, not the kernel), in
    seconds."""
    total = user = 0
    for fields in _session_stats(sid):
        utime, stime, cutime, cstime = (int(f) for f in fields[12:16])
        total += utime + stime + cutime + cstime
        user += utime + cutime
    return total / CLK_TCK, user / CLK_TCK


def busy_seconds() -> float:
    """CPU time the whole machine spent on anything but idling, from /proc/stat.

    Steal (a hypervisor running someone else on our CPU) counts as busy: it is noise.
    """
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def memory(sid: int) -> dict[str, int]:
    """Resident and proportional set sizes (KiB), threads and processes of the session.

    PSS splits pages shared between processes (a forked child's copy-on-write memory)
    among them, so unlike the RSS sum it does not count those pages once per child.
    """
    total = {"rss_kib": 0, "pss_kib": 0, "threads": 0, "procs": 0}
    for fields in _session_stats(sid):
        pid = fields[0]
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total["procs"] += 1
        for text, key, out in ((status, "VmRSS:", "rss_kib"), (status, "Threads:", "threads"),
                               (rollup, "Pss:", "pss_kib")):
            for line in text.splitlines():
                if line.startswith(key):
                    total[out] += int(line.split()[1])
                    break
    return total


def run_loadgen(argv: list[str], cpu: int, sid: int, timeout: float,
                hold: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                ) -> dict[str, Any]:
    """Run the load generator pinned to *cpu*; its JSON report plus "server_cpu_s".

    The server's CPU time, and the machine's, are sampled when the "window_start" and
    "window_end" lines arrive; "noise_cpu_s" is the machine's CPU time in the window that
    neither the server nor the load generator used (other processes, steal).  With
    *hold* (idle mode), hold(report) runs after the report, while the connections are
    still open, and its result is merged into the report.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_pinned(cpu))
    assert proc.stdout is not None and proc.stdin is not None
    deadline = time.monotonic() + timeout
    marks: dict[str, tuple[tuple[float, float], float]] = {}
    report: dict[str, Any] | None = None
    try:
        while report is None:
            ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
            line = proc.stdout.readline() if ready else ""
            if not line:
                break
            if line.strip() in ("window_start", "window_end"):
                marks[line.strip()] = (cpu_seconds(sid), busy_seconds())
            elif line.startswith("{"):
                report = json.loads(line)
        if report is not None and hold is not None:
            report.update(hold(report))
        proc.stdin.close()  # idle mode: the load generator now closes and exits
        proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if report is None:
        err = proc.stderr.read() if proc.stderr else ""
        raise ServerFailed(f"load generator gave no report: {err[-500:]}")
    if "window_start" in marks and "window_end" in marks:
        ((server0, user0), busy0), ((server1, user1), busy1) = \
            marks["window_start"], marks["window_end"]
        report["server_cpu_s"] = server1 - server0
        report["server_user_s"] = user1 - user0
        loadgen = report["loadgen_cpu_pct"] / 100 * report["duration_s"]
        report["noise_cpu_s"] = max(0.0, busy1 - busy0 - (server1 - server0) - loadgen)
    return report
