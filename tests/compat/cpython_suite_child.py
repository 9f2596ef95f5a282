"""Child process for test_cpython_suite.py: ``python cpython_suite_child.py MODULE [PATTERN]``
runs one of CPython's own test modules (this interpreter's ``test.MODULE``) with
sockserve installed as ``socketserver``, keeping only the tests whose id PATTERN
matches (a regular expression).

Prints one JSON object: the tests run and skipped, the ids of those that failed or
erred with their tracebacks, and whether every module it loaded that uses socketserver
got sockserve.  Of regrtest's test resources (``-u``) only "network" is on (these
modules use it for loopback servers), so the tests that wait on purpose ("walltime")
are skipped.
"""

from __future__ import annotations

import sys

import sockserve

sys.modules["socketserver"] = sockserve

import importlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import unittest  # noqa: E402
from typing import Any  # noqa: E402

# It expects __all__ to list the names whose __module__ is "socketserver".
NOT_APPLICABLE = {"test.test_socketserver.MiscTestCase.test_all"}


def leaves(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    found: list[unittest.TestCase] = []
    for item in suite:
        found += leaves(item) if isinstance(item, unittest.TestSuite) else [item]
    return found


def main(module_name: str, pattern: str) -> None:
    support: Any = importlib.import_module("test.support")
    support.use_resources = ["network"]
    module = importlib.import_module(f"test.{module_name}")
    tests = [test for test in leaves(unittest.defaultTestLoader.loadTestsFromModule(module))
             if re.search(pattern, test.id()) and test.id() not in NOT_APPLICABLE]
    result = unittest.TestResult()
    unittest.TestSuite(tests).run(result)
    users = [loaded for loaded in list(sys.modules.values())
             if getattr(loaded, "socketserver", None) is not None]
    print(json.dumps({
        "run": result.testsRun,
        "skipped": len(result.skipped),
        "problems": {test.id(): trace for test, trace in result.failures + result.errors},
        "all_on_sockserve": bool(users) and all(
            getattr(loaded, "socketserver") is sockserve for loaded in users),
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
