"""Build the C programs and the benchmark's virtual environment, each only when stale.

The venv (.venv/bench) is separate from the test venvs so that benchmark-only packages
(uvloop, gevent, trio) never leak into the test suite; sockserve is installed editable,
so the servers always run the checkout's code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
VENV = ROOT / ".venv" / "bench"

# Program name -> its C sources in bench/c (headers are listed so edits rebuild too).
PROGRAMS = {
    "echo_epoll": ["echo_epoll.c"],
    "loadgen": ["loadgen.c", "loadgen_tcp.c", "loadgen_udp.c", "loadgen.h"],
}


def build_c() -> Path:
    """Compile every program whose sources are newer than its binary; returns BUILD.

    Raises:
        RuntimeError: no C compiler, or a compilation failed.
    """
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    BUILD.mkdir(exist_ok=True)
    for name, sources in PROGRAMS.items():
        paths = [BENCH / "c" / s for s in sources]
        binary = BUILD / name
        if binary.exists() and all(p.stat().st_mtime <= binary.stat().st_mtime for p in paths):
            continue
        # Write to a temporary name, then rename: a binary another run is executing
        # is never truncated under it.
        tmp = binary.with_suffix(".tmp")
        cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(tmp),
               *(str(p) for p in paths if p.suffix == ".c")]
        print(f"build: {' '.join(cmd)}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {name} failed:\n{done.stderr}")
        tmp.replace(binary)
    return BUILD


def _wanted_stamp() -> str:
    digest = hashlib.sha256()
    for path in (BENCH / "requirements.txt", ROOT / "pyproject.toml"):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_venv() -> Path:
    """The venv's interpreter, creating or updating .venv/bench when needed.

    A failed install is reported and the run goes on: the servers whose package is
    missing then skip themselves, and the others are still measured.
    """
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    wanted = _wanted_stamp()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"setup: preparing {VENV.relative_to(ROOT)} (once)", file=sys.stderr, flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q", "install"]
    ok = subprocess.run([*pip, "-r", str(BENCH / "requirements.txt")]).returncode == 0
    ok = subprocess.run([*pip, "-e", str(ROOT)]).returncode == 0 and ok
    if ok:
        stamp.write_text(wanted)
    else:
        print("setup: some packages failed to install; their servers will be skipped",
              file=sys.stderr, flush=True)
    return python


def versions(python: Path | str) -> str:
    """One line naming the interpreter and the peers' package versions."""
    code = (
        "import sys, importlib.metadata as m\n"
        "out = ['Python ' + sys.version.split()[0]]\n"
        "for n in ('uvloop', 'gevent', 'trio', 'sockserve'):\n"
        "    try: out.append(n + ' ' + m.version(n))\n"
        "    except m.PackageNotFoundError: out.append(n + ' missing')\n"
        "print(', '.join(out))\n"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or f"(could not run {python})"


def machine() -> str:
    """CPU model, core count and kernel, for the header of the tables."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, Linux {os.uname().release}"
