"""Child process for test_cpython_suite.py: CPython's own Lib/test/test_socketserver.py
(this interpreter's), run with sockserve installed as ``socketserver``.

Prints one JSON object: the tests run, and the ids of those that failed or erred, with
their tracebacks.  ``MiscTestCase.test_all`` is left out: it expects ``__all__`` to list
the names whose ``__module__`` is "socketserver", which sockserve's are not.
"""

from __future__ import annotations

import sys

import sockserve

sys.modules["socketserver"] = sockserve

import importlib  # noqa: E402
import json  # noqa: E402
import unittest  # noqa: E402
from typing import Any  # noqa: E402

test_socketserver: Any = importlib.import_module("test.test_socketserver")

NOT_APPLICABLE = {"test.test_socketserver.MiscTestCase.test_all"}


def leaves(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    found: list[unittest.TestCase] = []
    for item in suite:
        found += leaves(item) if isinstance(item, unittest.TestSuite) else [item]
    return found


def main() -> None:
    loaded = unittest.defaultTestLoader.loadTestsFromModule(test_socketserver)
    tests = [test for test in leaves(loaded) if test.id() not in NOT_APPLICABLE]
    assert test_socketserver.socketserver is sockserve
    result = unittest.TestResult()
    unittest.TestSuite(tests).run(result)
    print(json.dumps({
        "run": result.testsRun,
        "skipped": len(result.skipped),
        "problems": {test.id(): trace for test, trace in result.failures + result.errors},
    }))


if __name__ == "__main__":
    main()
