"""Turn per-round measurements into the tables: medians, spreads and ratios.

A ratio is taken round by round (server / reference, both measured in that round, so
they shared the machine's state of the moment) and the median of those ratios is
shown, not the ratio of two medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

Round = dict[str, dict[str, Any]]  # server name -> its measurement in one round


def si(value: float) -> str:
    """A rate in three significant digits with k/M: 61234 -> "61.2k"."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def num(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _one_decimal(value: float) -> str:
    return f"{round(value, 1) + 0.0:.1f}"  # + 0.0 turns -0.0 into 0.0


def spread(values: Sequence[float], fmt: Callable[[float], str] = num) -> str:
    """The median, and "(min-max)" when there is more than one value."""
    if not values:
        return "-"
    med = fmt(statistics.median(values))
    if len(values) == 1 or min(values) == max(values):
        return med
    return f"{med} ({fmt(min(values))}–{fmt(max(values))})"


def _values(rounds: list[Round], name: str, key: str) -> list[float]:
    return [r[name][key] for r in rounds if name in r and r[name].get(key) is not None]


def _ratios(rounds: list[Round], name: str, ref: str, key: str) -> list[float]:
    out = []
    for r in rounds:
        a, b = r.get(name, {}).get(key), r.get(ref, {}).get(key)
        if a is not None and b:
            out.append(a / b)
    return out


def derive(report: dict[str, Any], window: float) -> dict[str, Any]:
    """Add the per-request figures the tables show to one load generator report."""
    out = dict(report)
    cpu = report.get("server_cpu_s")
    requests = report.get("requests", 0)
    out["cpu_us_per_req"] = cpu / requests * 1e6 if cpu is not None and requests else None
    user = report.get("server_user_s")
    out["user_us_per_req"] = user / requests * 1e6 if user is not None and requests else None
    out["server_cpu_pct"] = cpu / window * 100 if cpu is not None and window else None
    noise = report.get("noise_cpu_s")
    out["noise_pct"] = noise / window * 100 if noise is not None and window else None
    out["mb_s"] = report.get("bytes", 0) / window / 1e6 if window else None
    out["problems"] = report.get("errors", 0) + report.get("verify_failures", 0)
    return out


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell: names left-aligned, numbers right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    lines = []
    for i, row in enumerate([headers, *rows]):
        cells = [str(c).ljust(w) if j == 0 else str(c).rjust(w)
                 for j, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def throughput_table(rounds: list[Round], names: list[str], refs: list[str],
                     unit: str, show_mb: bool, conns: int) -> str:
    """The table of a request/response scenario (echo, short, udp)."""
    headers = ["server", f"{unit}/s"] + (["MB/s"] if show_mb else []) + [
        "p50 µs", "p99 µs", "CPU µs/req", "user µs/req", "srv CPU%", "noise%",
        f"stalled/{conns}", "err", "lost"]
    refs = [r for r in refs if any(r in rnd for rnd in rounds)]
    for ref in refs:
        headers += [f"CPU/req ×{ref}", f"{unit}/s ×{ref}"]
    rows = []
    for name in names:
        if not any(name in r for r in rounds):
            continue
        row = [name, spread(_values(rounds, name, "rate"), si)]
        if show_mb:
            row.append(spread(_values(rounds, name, "mb_s")))
        row += [spread(_values(rounds, name, "p50_us")),
                spread(_values(rounds, name, "p99_us")),
                spread(_values(rounds, name, "cpu_us_per_req")),
                spread(_values(rounds, name, "user_us_per_req")),
                spread(_values(rounds, name, "server_cpu_pct"), lambda v: f"{v:.0f}"),
                spread(_values(rounds, name, "noise_pct"), lambda v: f"{v:.0f}"),
                spread(_values(rounds, name, "stalled"), lambda v: f"{v:.0f}"),
                spread(_values(rounds, name, "problems"), lambda v: f"{v:.0f}"),
                spread(_values(rounds, name, "lost"), lambda v: f"{v:.0f}")]
        for ref in refs:
            row += [spread(_ratios(rounds, name, ref, "cpu_us_per_req"), lambda v: f"{v:.2f}"),
                    spread(_ratios(rounds, name, ref, "rate"), lambda v: f"{v:.2f}")]
        rows.append(row)
    return table(headers, rows)


def idle_table(rounds: list[Round], names: list[str], refs: list[str], conns: int) -> str:
    """The table of the idle-memory scenario."""
    headers = ["server", f"held/{conns}", "base RSS MiB", "RSS KiB/conn", "PSS KiB/conn",
               "threads", "procs", "err"]
    # A reference that keeps (almost) nothing per connection, like the C server, would
    # only give divisions by noise.
    refs = [r for r in refs
            if statistics.median(_values(rounds, r, "rss_kib_per_conn") or [0]) >= 0.5]
    headers += [f"RSS/conn ×{ref}" for ref in refs]
    rows = []
    for name in names:
        if not any(name in r for r in rounds):
            continue
        row = [name, spread(_values(rounds, name, "exchanged"), lambda v: f"{v:.0f}"),
               spread(_values(rounds, name, "base_rss_mib"), _one_decimal),
               spread(_values(rounds, name, "rss_kib_per_conn"), _one_decimal),
               spread(_values(rounds, name, "pss_kib_per_conn"), _one_decimal),
               spread(_values(rounds, name, "threads"), lambda v: f"{v:.0f}"),
               spread(_values(rounds, name, "procs"), lambda v: f"{v:.0f}"),
               spread(_values(rounds, name, "problems"), lambda v: f"{v:.0f}")]
        row += [spread(_ratios(rounds, name, ref, "rss_kib_per_conn"), lambda v: f"{v:.2f}")
                for ref in refs]
        rows.append(row)
    return table(headers, rows)


def sanity(rounds: list[Round], capacity: str, c_server: str, unit: str) -> str | None:
    """Whether the load generator outran every Python server.

    *capacity* is the C server in its busy-polling mode: it never waits to be woken, so
    its rate is what the load generator itself can drive.  *c_server* is the same
    program sleeping when idle, as in the tables.  The better of the two counts: each
    is a single measurement per round, and either may have met a noisy moment.
    """
    c_rates = {n: statistics.median(_values(rounds, n, "rate"))
               for n in (capacity, c_server) if _values(rounds, n, "rate")}
    others = {name: statistics.median(_values(rounds, name, "rate"))
              for name in {n for r in rounds for n in r} - {capacity, c_server}
              if _values(rounds, name, "rate")}
    if not c_rates or not others:
        return None
    fastest = max(c_rates, key=c_rates.__getitem__)
    best = max(others, key=others.__getitem__)
    # The load generator busy-polls, so its CPU use is always ~100 %; the share of the
    # window its polls found nothing to do says how much more it could have driven.
    idle = spread(_values(rounds, fastest, "loadgen_idle_pct"), lambda v: f"{v:.0f}")
    noise = spread(_values(rounds, fastest, "noise_pct"), lambda v: f"{v:.0f}")
    both = ", ".join(f"{n} {si(v)}" for n, v in c_rates.items())
    what = (f"the load generator drove the C echo server at {si(c_rates[fastest])} {unit}/s "
            f"({both}; load generator idle {idle}%, noise {noise}%)")
    if c_rates[fastest] >= others[best]:
        return (f"sanity: OK, {what} >= every other server (best: {best}, "
                f"{si(others[best])} {unit}/s)")
    return (f"sanity: NOT MET, {what} < {best}'s {si(others[best])} {unit}/s: near that "
            f"rate the load generator, or the machine's noise, may be the limit")
