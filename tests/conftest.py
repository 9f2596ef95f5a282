"""Shared fixtures: every test talks over real loopback or Unix sockets, with timeouts."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def unix_path() -> Iterator[str]:
    """A short path for a Unix socket (sun_path is limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="ss-") as tmp:
        yield str(Path(tmp) / "sock")

