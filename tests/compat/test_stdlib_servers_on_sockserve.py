"""The stdlib's own servers, running on sockserve: ``sys.modules["socketserver"] = sockserve``.

http.server, xmlrpc.server, wsgiref.simple_server and logging.config build on
socketserver; each scenario runs in a fresh interpreter (stdlib_servers_child.py) that
installs sockserve under that name before importing them, serves one real request on
127.0.0.1 and reports what it saw as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CHILD = Path(__file__).with_name("stdlib_servers_child.py")

# A whole scenario takes well under a second (logging's listener: about one).
CHILD_TIMEOUT = 60


def run_scenario(name: str, cwd: Path) -> dict[str, Any]:
    """Run one scenario in a fresh interpreter and return the JSON it printed."""
    proc = subprocess.run(
        # -W error: a warning (a leaked socket's ResourceWarning too) is an error there
        # as it is here; -X faulthandler: a hang killed by the timeout leaves a trace.
        [sys.executable, "-W", "error", "-X", "faulthandler", str(CHILD), name],
        cwd=cwd, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # nothing logged, nothing "Exception ignored in ..."
    result: dict[str, Any] = json.loads(proc.stdout)
    # sockserve was installed first, and no module ever reached the real socketserver.
    assert result.pop("preloaded") == []
    assert result.pop("stdlib_socketserver_loaded") is False
    assert result.pop("modules_use_sockserve") == [True, True, True]
    classes = result.pop("classes")
    assert classes and all(classes.values()), classes
    return result


def test_http_server_serves_a_file(tmp_path: Path) -> None:
    result = run_scenario("http.server", tmp_path)
    assert result == {"status": 200, "body": "hello from a sockserve-based http.server\n"}


def test_xmlrpc_server_answers_a_call(tmp_path: Path) -> None:
    assert run_scenario("xmlrpc.server", tmp_path) == {"answer": 42}


def test_wsgiref_server_runs_an_app(tmp_path: Path) -> None:
    result = run_scenario("wsgiref.simple_server", tmp_path)
    assert result == {"status": 200, "body": "wsgi says hello to /compat"}


def test_logging_config_listener_applies_a_config(tmp_path: Path) -> None:
    result = run_scenario("logging.config.listen", tmp_path)
    assert result == {"applied": True, "level": "DEBUG", "listener_alive": False}


def test_a_failing_scenario_is_reported(tmp_path: Path) -> None:
    """The harness itself: a scenario that fails is not mistaken for one that passed."""
    with pytest.raises(AssertionError, match="KeyError: 'no such scenario'"):
        run_scenario("no such scenario", tmp_path)
