"""CPython's own tests of socketserver and of the stdlib servers built on it pass with
sockserve as ``socketserver``: the running interpreter's ``test`` package.

CPython's own builds install that package (pyenv's do); Debian ships it apart
(libpython3.X-testsuite): where it is missing, these are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("cpython_suite_child.py")

# (module in the test package, tests kept, at least this many run and not skipped)
SUITES = [
    ("test_socketserver", "", 20),
    ("test_httpservers", "", 40),
    # Without the multi-path tests 3.11+ mark "walltime" (3.10 does not): 3 s each.
    ("test_xmlrpc", r"^(?!.*MultiPathServerTestCase\.test_(?!path[12]$))", 70),
    ("test_wsgiref", "", 30),
    # The logging tests that run socketserver servers: the socket, datagram, syslog and
    # HTTP handlers' peers, and logging.config.listen() (not test_noserver, which has
    # no server and sleeps 2.5 s).
    ("test_logging", r"^(?!.*test_noserver)(.*(SocketHandler|DatagramHandler|SysLogHandler|"
                     r"HTTPHandler)Test|.*ConfigDictTest\.test_listen)", 10),
]


@pytest.mark.parametrize("module, pattern, at_least", SUITES, ids=[s[0] for s in SUITES])
def test_cpython_tests_pass_on_sockserve(module: str, pattern: str, at_least: int,
                                         tmp_path: Path) -> None:
    if importlib.util.find_spec(f"test.{module}") is None:
        pytest.skip(f"this Python has no test.{module}")
    proc = subprocess.run([sys.executable, "-X", "faulthandler", str(CHILD), module, pattern],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["problems"] == {}
    assert result["all_on_sockserve"]
    assert result["run"] - result["skipped"] >= at_least, result
