#!/usr/bin/env python3
"""Set-up and tasks for a fresh machine with only Python: ``python3 dev.py demo|test``.

Each task makes the virtual environment it needs under .venv/ and installs sockserve
with its test extras into it; nothing is installed outside the project folder.

    python3 dev.py demo [ARGS]   the upper-casing echo server (``sockserve echo ARGS``)
    python3 dev.py send ARGS     its client, from the same venv (``sockserve send ARGS``)
    python3 dev.py test [ARGS]   the whole test suite on every Python 3.10-3.13 found,
                                 then strict mypy (ARGS go to pytest and skip mypy;
                                 SOCKSERVE_PYTHONS=3.12,3.13 picks interpreters)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VERSIONS = ("3.10", "3.11", "3.12", "3.13")


def interpreters() -> list[str]:
    """One interpreter per supported minor version found on PATH (this one at least)."""
    wanted = os.environ.get("SOCKSERVE_PYTHONS", "").split(",")
    found: dict[str, str] = {}
    this = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if this in VERSIONS:
        found[this] = sys.executable
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for version in VERSIONS:
        candidates = [shutil.which(f"python{version}"),
                      *map(str, sorted(pyenv.glob(f"{version}.*/bin/python{version}")))]
        for path in candidates:
            if version not in found and path and _works(path):
                found[version] = path
    chosen = {v: p for v, p in found.items() if wanted == [""] or v in wanted}
    if not chosen:
        sys.exit(f"dev.py: no Python among {', '.join(VERSIONS)} found")
    return [chosen[v] for v in sorted(chosen, key=lambda v: tuple(map(int, v.split("."))))]


def _works(python: str) -> bool:
    # pyenv shims exist for versions that are not installed; ask the interpreter itself.
    return subprocess.run([python, "-c", "import venv"], capture_output=True).returncode == 0


def venv_for(python: str) -> Path:
    """A .venv/pyX.Y with sockserve (editable) and its test extras, made once."""
    version = subprocess.check_output(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], text=True).strip()
    venv = ROOT / ".venv" / f"py{version}"
    bin_python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    venv.parent.mkdir(exist_ok=True)
    with open(venv.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once must not build the same venv
        if stamp.exists() and bin_python.exists() and stamp.read_text() == wanted:
            return venv
        print(f"dev.py: preparing {venv.relative_to(ROOT)}", flush=True)
        subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(bin_python), "-m", "pip", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "install", "-e", f"{ROOT}[test]"], check=True)
        stamp.write_text(wanted)
    return venv


def demo(args: list[str]) -> int:
    return sockserve_command("echo", args)


def send(args: list[str]) -> int:
    return sockserve_command("send", args)


def sockserve_command(name: str, args: list[str]) -> int:
    """``sockserve NAME ARGS`` in the venv of the newest Python found."""
    venv = venv_for(interpreters()[-1])
    return subprocess.call([str(venv / "bin" / "python"), "-m", "sockserve", name, *args])


def test(args: list[str]) -> int:
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    status = 0
    for python in interpreters():
        venv = venv_for(python)
        print(f"dev.py: tests on {venv.name}", flush=True)
        proc = subprocess.Popen([str(venv / "bin" / "python"), "-m", "pytest", *args],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        last = ""
        for line in proc.stdout:
            sys.stdout.write(line)
            if line.strip():
                last = line
        code = proc.wait()
        for count, word in re.findall(r"(\d+) (passed|failed|skipped|error)", last):
            key = "failed" if word == "error" else word
            totals[key] += int(count)
        if code not in (0, 5):  # 5: nothing collected, e.g. a -k that matched nothing
            status = code or 1
    if totals["passed"] == 0 and status == 0:
        status = 1
    if not args:  # the full run also type-checks src/ and tests/ (strict, pyproject.toml)
        print(f"dev.py: mypy on {venv.name}", flush=True)
        if subprocess.call([str(venv / "bin" / "python"), "-m", "mypy"], cwd=ROOT):
            print("dev.py: mypy found errors (counted as 1 failed)", flush=True)
            totals["failed"] += 1
            status = status or 1
    print(f"all: {totals['passed']} passed, {totals['failed']} failed, "
          f"{totals['skipped']} skipped", flush=True)
    return status


def main() -> int:
    tasks = {"demo": demo, "send": send, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in tasks:
        print(__doc__)
        return 2
    return tasks[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
