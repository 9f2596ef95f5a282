"""CPython's own test_socketserver.py passes with sockserve as ``socketserver``.

It is the stdlib's ``test`` package, which CPython's own builds install (pyenv's do)
and Debian ships apart (libpython3.X-testsuite): where it is missing, this is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("cpython_suite_child.py")


@pytest.mark.skipif(importlib.util.find_spec("test.test_socketserver") is None,
                    reason="this Python has no test package (test.test_socketserver)")
def test_cpython_test_socketserver_passes_on_sockserve(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-X", "faulthandler", str(CHILD)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["problems"] == {}
    assert result["run"] >= 20 and result["skipped"] == 0
