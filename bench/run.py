#!/usr/bin/env python3
"""Echo benchmark: the peers of sockserve (and, added to the registry, its own models).

    python3 bench/run.py --quick     # one short round of everything, under 2 minutes
    python3 bench/run.py             # 3 rounds of 5 s windows (about 25 minutes)
    python3 bench/run.py --scenario echo64_50 --servers c_epoll,stdlib_threading --rounds 5

Each server is its own process pinned to one CPU; the C load generator (bench/c) is
pinned to another.  bench/README.md explains the scenarios, the columns and the method.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import build, procs, report

# The servers.  To add one, add a line: the command must listen on 127.0.0.1 (port 0, or
# the port given with --port) and print the bound port as the first line of stdout, or
# "SKIP <reason>" when it cannot run here.  {python} is .venv/bench's interpreter (it
# has sockserve from this checkout, editable, and uvloop, gevent, trio); {servers} is
# bench/servers; {build} is where the C programs are.  A sockserve model needs no new
# file: socketserver_api.py serves any class with the socketserver API, e.g.
#   "sockserve_pool": "{python} {servers}/socketserver_api.py sockserve:ThreadPoolTCPServer"
#                     " max_workers=8",
API = "{python} {servers}/socketserver_api.py "
TCP_SERVERS = {
    "c_epoll": "{build}/echo_epoll tcp 0",
    "stdlib_threading": API + "socketserver:ThreadingTCPServer",
    "stdlib_forking": API + "socketserver:ForkingTCPServer",
    "asyncio_streams": "{python} {servers}/asyncio_streams.py",
    "asyncio_protocol": "{python} {servers}/asyncio_protocol.py",
    "uvloop_streams": "{python} {servers}/asyncio_streams.py --uvloop",
    "uvloop_protocol": "{python} {servers}/asyncio_protocol.py --uvloop",
    "gevent": "{python} {servers}/gevent_server.py",
    "trio": "{python} {servers}/trio_tcp.py",
    "sockserve_threading": API + "sockserve:ThreadingTCPServer",
    # A pool thread serves one connection until it closes, so persistent clients beyond
    # max_workers + max_queue wait in the backlog: 64 serves the 50-client scenarios and
    # stalls at 1,000 by design; 5,000 serves them all (threads start on demand).
    "sockserve_pool": API + "sockserve:ThreadPoolTCPServer max_workers=64",
    "sockserve_pool_5k": API + "sockserve:ThreadPoolTCPServer max_workers=5000",
    # Pre-fork: --all-cpus lets the workers use both CPUs (the second one is the load
    # generator's), so that 2 workers can outrun 1; each worker has its own pool.
    "sockserve_prefork1": API + "--all-cpus sockserve_models:PreForkThreadPoolTCPServer"
                                " workers=1 max_workers=5000",
    "sockserve_prefork2": API + "--all-cpus sockserve_models:PreForkThreadPoolTCPServer"
                                " workers=2 max_workers=5000",
    # ... each worker pinned to one CPU (worker_cpu_affinity): its threads stay together.
    "sockserve_prefork1_pinned": API + "--all-cpus sockserve_models:PreForkThreadPoolTCPServer"
                                       " workers=1 max_workers=5000 worker_cpu_affinity=True",
    "sockserve_prefork2_pinned": API + "--all-cpus sockserve_models:PreForkThreadPoolTCPServer"
                                       " workers=2 max_workers=5000 worker_cpu_affinity=True",
    # Framed sync handlers (MessageRequestHandler, chunk framing) on the serving loop:
    # not the unchanged StreamRequestHandler code the other socketserver rows run.
    "sockserve_evented": "{python} {servers}/sockserve_evented.py",
    "sockserve_evented_prefork1": "{python} {servers}/sockserve_evented.py --workers 1 --all-cpus",
    "sockserve_evented_prefork2": "{python} {servers}/sockserve_evented.py --workers 2 --all-cpus",
    "sockserve_evented_prefork2_reuseport":
        "{python} {servers}/sockserve_evented.py --workers 2 --all-cpus --reuse-port",
    # Unchanged StreamRequestHandler code on greenlets (GreenMixIn): one hub thread.
    "sockserve_green": API + "sockserve:GreenTCPServer",
    "sockserve_green_prefork1_pinned": API + "--all-cpus sockserve_models:PreForkGreenTCPServer"
                                             " workers=1 worker_cpu_affinity=True",
    "sockserve_green_prefork2_pinned": API + "--all-cpus sockserve_models:PreForkGreenTCPServer"
                                             " workers=2 worker_cpu_affinity=True",
    "sockserve_async": "{python} {servers}/sockserve_async.py",
    "sockserve_async_asyncio": "{python} {servers}/sockserve_async.py --loop asyncio",
    "sockserve_async_prefork1": "{python} {servers}/sockserve_async.py --workers 1 --all-cpus",
    "sockserve_async_prefork2": "{python} {servers}/sockserve_async.py --workers 2 --all-cpus",
    # Not a server to use: the same async handler with no task, context or limits, on
    # uvloop; the least a coroutine per message can cost (coroutine_floor.py).
    "coroutine_floor": "{python} {servers}/coroutine_floor.py",
}
UDP_SERVERS = {
    "c_epoll_udp": "{build}/echo_epoll udp 0",
    "stdlib_udp": API + "socketserver:UDPServer",
    "stdlib_threading_udp": API + "socketserver:ThreadingUDPServer",
    "asyncio_datagram": "{python} {servers}/asyncio_datagram.py",
    "uvloop_datagram": "{python} {servers}/asyncio_datagram.py --uvloop",
    "gevent_udp": "{python} {servers}/gevent_server.py --udp",
    "sockserve_threading_udp": API + "sockserve:ThreadingUDPServer",
    "sockserve_udp": API + "sockserve:UDPServer",
    "sockserve_pool_udp": API + "sockserve:ThreadPoolUDPServer",
    # Serial workers: one process per CPU is the pre-fork way to serve datagrams.
    "sockserve_prefork1_udp": API + "--all-cpus sockserve:PreForkUDPServer workers=1",
    "sockserve_prefork2_udp": API + "--all-cpus sockserve:PreForkUDPServer workers=2",
    "sockserve_prefork2_udp_reuseport": API + "--all-cpus sockserve:PreForkUDPServer workers=2"
                                              " reuse_port_per_worker=True",
    "sockserve_async_udp": "{python} {servers}/sockserve_async.py --udp",
    "sockserve_async_asyncio_udp": "{python} {servers}/sockserve_async.py --udp --loop asyncio",
    "coroutine_floor_udp": "{python} {servers}/coroutine_floor.py --udp",
    "sockserve_async_prefork1_udp": "{python} {servers}/sockserve_async.py --udp --workers 1"
                                    " --all-cpus",
    "sockserve_async_prefork2_udp": "{python} {servers}/sockserve_async.py --udp --workers 2"
                                    " --all-cpus",
}
REFERENCES = "c_epoll,stdlib_threading,c_epoll_udp,stdlib_threading_udp"
# The C server in its never-sleeping mode, measured in every round of the request/response
# scenarios only to show how fast the load generator can go (the sanity line).  Spinning,
# its CPU time means nothing, so no table shows it.
CAPACITY = {"tcp": ("c_epoll_busy", "{build}/echo_epoll tcp 0 busy"),
            "udp": ("c_epoll_udp_busy", "{build}/echo_epoll udp 0 busy")}


@dataclass(frozen=True)
class Scenario:
    title: str
    mode: str  # the load generator's --mode
    size: int
    conns: int
    quick_conns: int

    @property
    def udp(self) -> bool:
        return self.mode == "udp"


SCENARIOS = {
    "echo64_50": Scenario("64 B request/response, 50 connections", "echo", 64, 50, 50),
    "echo64_1000": Scenario("64 B request/response, 1,000 connections", "echo", 64, 1000, 1000),
    "echo16k": Scenario("16 KiB request/response, 50 connections", "echo", 16384, 50, 50),
    "short": Scenario("short connections (connect, one 64 B exchange, close), 50 at a time",
                      "short", 64, 50, 50),
    "udp64": Scenario("UDP 64 B request/response, 50 datagrams outstanding", "udp", 64, 50, 50),
    "idle": Scenario("memory per idle connection", "idle", 64, 5000, 1000),
}
UNITS = {"echo": "req", "short": "conn", "udp": "pkt"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="1 round, 0.8 s windows, 1,000 idle clients: a smoke test")
    p.add_argument("--scenario", default=",".join(SCENARIOS),
                   help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    p.add_argument("--servers", help="comma-separated server names (default: all)")
    p.add_argument("--refs", default=REFERENCES, help="servers to show ratios against")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    p.add_argument("--duration", type=float, help="measured window, s (default 5, quick 0.8)")
    p.add_argument("--warmup", type=float, help="warm-up, s (default 1, quick 0.2)")
    p.add_argument("--ramp-timeout", type=float,
                   help="longest wait for every connection's first reply, s (default 5, "
                        "quick 1; idle: 4x this)")
    p.add_argument("--conns", type=int, help="override every scenario's connection count")
    p.add_argument("--connect-batch", type=int, default=4,
                   help="connections waiting for their first reply at once (default 4: "
                        "below the stdlib's listen backlog of 5)")
    p.add_argument("--loadgen-poll", choices=["busy", "sleep"], default="busy",
                   help="busy (default): the load generator never sleeps, so it is never "
                        "the one waiting to be woken; sleep: it blocks in epoll_wait() and "
                        "leaves its CPU's spare time to a server that uses two CPUs")
    p.add_argument("--json", type=Path, help="also write every measurement to this file")
    p.add_argument("--no-setup", action="store_true",
                   help="use this interpreter for the servers, do not build .venv/bench")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (0.8 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.2 if args.quick else 1.0)
    args.ramp_timeout = args.ramp_timeout or (1.0 if args.quick else 5.0)
    for name in args.scenario.split(","):
        if name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    known = {**TCP_SERVERS, **UDP_SERVERS}
    for name in (args.servers or "").split(",") if args.servers else []:
        if name not in known:
            p.error(f"unknown server {name!r}; choose from {', '.join(known)}")
    return args


def measure(name: str, command: str, sc: Scenario, conns: int, args: argparse.Namespace,
            paths: dict[str, str], cpus: tuple[int, int]) -> dict[str, Any] | str:
    """One server in one scenario: its derived report, or why it skipped itself."""
    argv = shlex.split(command.format(**{k: shlex.quote(v) for k, v in paths.items()}))
    log = Path(paths["logs"]) / f"{name}.log"
    server = procs.start_server(name, argv, cpus[0], log)
    if isinstance(server, str):
        return server
    try:
        procs.ping(server, sc.udp)
        ramp = args.ramp_timeout * (4 if sc.mode == "idle" else 1)
        load = [f"{paths['build']}/loadgen", "--mode", sc.mode, "--port", str(server.port),
                "--conns", str(conns), "--size", str(sc.size), "--warmup", str(args.warmup),
                "--duration", str(args.duration), "--ramp-timeout", str(ramp),
                "--connect-batch", str(args.connect_batch), "--hold", "60",
                "--poll", args.loadgen_poll]
        hold = None
        if sc.mode == "idle":
            base = procs.memory(server.sid)

            def hold(rep: dict[str, Any]) -> dict[str, Any]:
                time.sleep(0.5)  # let the server finish setting up the last connections
                now = procs.memory(server.sid)
                held = max(rep["exchanged"], 1)
                return {**now, "base_rss_mib": base["rss_kib"] / 1024,
                        "rss_kib_per_conn": (now["rss_kib"] - base["rss_kib"]) / held,
                        "pss_kib_per_conn": (now["pss_kib"] - base["pss_kib"]) / held}
        timeout = ramp + args.warmup + args.duration + 30
        result = procs.run_loadgen(load, cpus[1], server.sid, timeout, hold)
    finally:
        procs.stop_server(server)
    return report.derive(result, args.duration)


def progress(result: dict[str, Any]) -> str:
    """One line per measurement on stderr, so a long run shows where it is."""
    if "rss_kib_per_conn" in result:
        return (f"{result['exchanged']} held, {result['rss_kib_per_conn']:.1f} KiB/conn RSS, "
                f"errors {result['problems']}")
    cpu = result.get("cpu_us_per_req")
    return (f"{report.si(result['rate'])}/s, CPU {cpu and f'{cpu:.2f}'} µs/req, "
            f"stalled {result['stalled']}, errors {result['problems']}")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: above ~2 here, other work shared the CPUs."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def pick_cpus() -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("warning: one CPU only; server and load generator share it", file=sys.stderr)
        return cpus[0], cpus[0]
    return cpus[0], cpus[1]


def run_scenario(sc_name: str, names: list[str], args: argparse.Namespace,
                 paths: dict[str, str], cpus: tuple[int, int],
                 skipped: dict[str, str]) -> list[report.Round]:
    """All rounds of one scenario, server order rotated each round."""
    sc = SCENARIOS[sc_name]
    registry = dict(UDP_SERVERS if sc.udp else TCP_SERVERS)
    names = [n for n in names if n in registry]
    capacity, command = CAPACITY["udp" if sc.udp else "tcp"]
    registry[capacity] = command
    measured = names if sc.mode == "idle" else [*names, capacity]
    conns = args.conns or (sc.quick_conns if args.quick else sc.conns)
    rounds: list[report.Round] = []
    for r in range(args.rounds):
        rounds.append({})
        shift = r % len(measured) if measured else 0
        for name in measured[shift:] + measured[:shift]:
            if name in skipped:
                continue
            try:
                result = measure(name, registry[name], sc, conns, args, paths, cpus)
            except procs.ServerFailed as exc:
                print(f"[{sc_name} {r + 1}/{args.rounds}] {name}: FAILED: {exc}",
                      file=sys.stderr, flush=True)
                continue
            if isinstance(result, str):
                skipped[name] = result
                print(f"skipping {name}: {result}", file=sys.stderr, flush=True)
                continue
            rounds[-1][name] = result
            print(f"[{sc_name} {r + 1}/{args.rounds}] {name}: {progress(result)}",
                  file=sys.stderr, flush=True)
    print(f"\n## {sc_name}: {sc.title}" + (f" ({conns} clients)" if args.conns else ""))
    refs = args.refs.split(",")
    if sc.mode == "idle":
        print(report.idle_table(rounds, names, refs, conns))
        return rounds
    unit = UNITS[sc.mode]
    print(report.throughput_table(rounds, names, refs, unit, sc.size >= 1024, conns))
    line = report.sanity(rounds, capacity, "c_epoll_udp" if sc.udp else "c_epoll", unit)
    if line:
        print(line)
    return rounds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    python = sys.executable if args.no_setup else str(build.ensure_venv())
    logs = build.BUILD / "logs"
    paths = {"python": python, "servers": str(build.BENCH / "servers"),
             "build": str(build.build_c()), "logs": str(logs)}
    logs.mkdir(parents=True, exist_ok=True)
    # Two runs at once would share the two CPUs and spoil each other's numbers.
    lock = open(build.BUILD / ".lock", "w")  # locked until this process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("waiting for another bench/run.py to finish", file=sys.stderr, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    cpus = pick_cpus()
    names = args.servers.split(",") if args.servers else [*TCP_SERVERS, *UDP_SERVERS]
    print(f"# sockserve echo benchmark\nmachine: {build.machine()}\n"
          f"servers' Python: {build.versions(python)}\n"
          f"command: python3 bench/run.py {' '.join(sys.argv[1:] if argv is None else argv)}\n"
          f"server on CPU {cpus[0]}, load generator on CPU {cpus[1]}; rounds {args.rounds}, "
          f"ramp <= {args.ramp_timeout} s, warm-up {args.warmup} s, window {args.duration} s, "
          f"load generator polls: {args.loadgen_poll}; "
          f"medians (min–max over rounds); server logs in {logs}\n"
          f"load average at start: {load_average()}")
    skipped: dict[str, str] = {}
    results = {}
    for sc_name in args.scenario.split(","):
        results[sc_name] = run_scenario(sc_name, names, args, paths, cpus, skipped)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    print(f"\nload average at end: {load_average()}; total time "
          f"{time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": build.machine(), "versions": build.versions(python),
            "scenarios": {k: asdict(v) for k, v in SCENARIOS.items()},
            "args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
