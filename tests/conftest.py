"""Shared fixtures: every test talks over real loopback or Unix sockets, with timeouts."""

from __future__ import annotations

import signal
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from sockserve import tls

# A shell starts background jobs with SIGINT ignored, and children inherit that: the
# examples and CLI tests stop their servers with SIGINT, as a user's Ctrl-C would.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def unix_path() -> Iterator[str]:
    """A short path for a Unix socket (sun_path is limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="ss-") as tmp:
        yield str(Path(tmp) / "sock")



@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority minted for this test module (trustme)."""
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ctx(ca: trustme.CA) -> Iterator[ssl.SSLContext]:
    """A server context for localhost/127.0.0.1 signed by ``ca``, offering h2 and http/1.1."""
    cert = ca.issue_cert("localhost", "127.0.0.1")
    with cert.private_key_and_cert_chain_pem.tempfile() as pem:
        yield tls.server_context(pem, alpn_protocols=["h2", "http/1.1"])
