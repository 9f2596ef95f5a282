"""The demo: ``sockserve echo`` served in a real process, ``sockserve send`` as its client."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sockserve.cli import main, parse_host_port

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def process(*args: str, **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """A process whose output the test reads (stdout piped, text); killed and reaped
    however the test ends."""
    proc = subprocess.Popen(list(args), cwd=ROOT, stdout=subprocess.PIPE, text=True, **popen)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(params=["tcp", "udp"])
def echo_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A ``python -m sockserve echo`` process on a free port: yields (HOST:PORT, protocol)."""
    udp = ["--udp"] if request.param == "udp" else []
    with process(sys.executable, "-m", "sockserve", "echo", "--host", "127.0.0.1",
                 "--port", "0", *udp, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        banner = proc.stdout.readline()
        match = re.search(r"serving (TCP|UDP) on (\S+:\d+)", banner)
        assert match, banner
        yield match.group(2), request.param
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert "stopped" in proc.stdout.read()
        assert "wrote: b'hello sockserve'" in proc.stderr.read()


def test_send_prints_the_upper_cased_reply(echo_server: tuple[str, str]) -> None:
    address, protocol = echo_server
    udp = ["--udp"] if protocol == "udp" else []
    result = subprocess.run(
        [sys.executable, "-m", "sockserve", "send", address, "hello", "sockserve", *udp],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Sent:     hello sockserve",
                                          "Received: HELLO SOCKSERVE"]


@pytest.mark.parametrize("example", ["tcp", "udp"])
def test_examples_pair(example: str) -> None:
    with process(sys.executable, str(ROOT / "examples" / f"{example}_server.py"),
                 "--port", "0") as server:
        assert server.stdout is not None
        port = re.search(r":(\d+)", server.stdout.readline())
        assert port
        client = subprocess.run(
            [sys.executable, str(ROOT / "examples" / f"{example}_client.py"),
             "--port", port.group(1), "one", "line"],
            capture_output=True, text=True, timeout=30)
        assert client.returncode == 0, client.stderr
        assert "Received: ONE LINE" in client.stdout
        server.send_signal(signal.SIGINT)
        assert server.wait(10) == 0


def test_send_to_nobody_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    with socket.socket() as unused:  # bound but not listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        assert main(["send", f"127.0.0.1:{port}", "x", "--timeout", "2"]) == 1
    assert "refused" in capsys.readouterr().err.lower()


@pytest.mark.parametrize("text, expected", [
    ("localhost:9999", ("localhost", 9999)),
    ("[::1]:80", ("::1", 80)),
    ("10.0.0.1:0", ("10.0.0.1", 0)),
])
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["nohost", ":80", "host:", "host:http"])
def test_parse_host_port_rejects(text: str) -> None:
    import argparse
    with pytest.raises(argparse.ArgumentTypeError):
        parse_host_port(text)


def test_serve_on_a_unix_socket_with_mode(tmp_path: Path) -> None:
    import os
    import stat
    path = str(tmp_path / "s")
    with process(sys.executable, "-m", "sockserve", "serve", "tests.integration.apps:Pid",
                 "--bind", f"unix:{path}", "--unix-mode", "600", "--unix-owner",
                 f"{os.getuid()}", stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        assert "serving Unix stream on " + path in proc.stdout.readline()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        import socket
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(path)
            client.sendall(b"pid\n")
            assert int(client.makefile("rb").readline()) == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not os.path.exists(path)


def test_async_datagram_handlers_in_prefork_workers() -> None:
    import os
    import socket
    with process(sys.executable, "-m", "sockserve", "serve",
                 "tests.integration.apps:AsyncUpperDatagram", "--bind", "udp://127.0.0.1:0",
                 "--model", "prefork", "--workers", "1", stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        match = re.search(r"serving UDP on (\S+):(\d+)", proc.stdout.readline())
        assert match
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b"hi", (match.group(1), int(match.group(2))))
            pid, reply = client.recv(100).split()
        assert reply == b"HI" and int(pid) not in (proc.pid, os.getpid())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_green_model_refuses_datagrams(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", "--udp", "--host", "127.0.0.1", "--port", "0",
                 "--model", "green"]) != 0
    assert "--model green serves stream sockets" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["serve", "tests.integration.apps:Upper", "--model", "pool"],
     "--model pool cannot serve Upper (a framed handler); use --model evented or prefork"),
    (["serve", "tests.integration.apps:AsyncUpper", "--model", "threads"],
     "use --model async or prefork"),
    (["serve", "tests.integration.apps:Pid", "--model", "evented"],
     "--model evented cannot serve Pid"),
    (["serve", "no_such_module:Handler"], "cannot import 'no_such_module'"),
    (["serve", "tests.integration.apps:Upper", "--bind", "udp://127.0.0.1:0"],
     "a MessageRequestHandler needs a stream socket"),
    (["echo", "--port", "0", "--tls-key", "key.pem"], "--tls-key and --tls-client-ca need --tls-cert"),
    (["echo", "--port", "0", "--model", "threads", "--workers", "4"],
     "--workers applies to --model prefork, not threads"),
    (["serve", "tests.integration.apps:AsyncUpper", "--model", "async", "--cpu-affinity"],
     "--cpu-affinity applies to --model prefork, not async"),
    (["echo", "--port", "0", "--model", "green", "--threads", "4"],
     "--threads applies to --model pool or prefork, not green"),
])
def test_what_cannot_be_served_is_a_clear_error(args: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 1
    assert message in capsys.readouterr().err


def test_tls_over_datagrams_is_refused_before_serving(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import trustme
    issued = trustme.CA().issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    assert main(["echo", "--udp", "--port", "0", "--host", "127.0.0.1",
                 "--tls-cert", str(cert), "--tls-key", str(key)]) == 1
    assert "TLS needs stream sockets" in capsys.readouterr().err


def test_reuse_port_lets_two_processes_serve_one_port() -> None:
    command = [sys.executable, "-m", "sockserve", "echo", "--host", "127.0.0.1",
               "--reuse-port"]
    with process(*command, "--port", "0") as first:
        assert first.stdout is not None
        port = re.search(r"127\.0\.0\.1:(\d+)", first.stdout.readline())
        assert port, "no banner"
        with process(*command, "--port", port.group(1)) as second:
            assert second.stdout is not None
            assert f"127.0.0.1:{port.group(1)}" in second.stdout.readline()
            assert main(["send", f"127.0.0.1:{port.group(1)}", "hi", "--timeout", "5"]) == 0
            second.send_signal(signal.SIGTERM)
            assert second.wait(10) == 0
        first.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0


@pytest.mark.parametrize("option", ["--threads", "--workers"])
def test_counts_must_be_at_least_one(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["echo", "--port", "0", option, "0"])
    assert exit_.value.code == 2
    assert "at least 1" in capsys.readouterr().err


def test_a_refused_address_mix_leaves_no_socket_file(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import os
    path = tmp_path / "s"
    assert main(["serve", "tests.integration.apps:Pid", "--bind", f"unix:{path}",
                 "--bind", "127.0.0.1:0"]) == 1
    assert "do not mix" in capsys.readouterr().err
    assert not os.path.exists(path)


@pytest.mark.parametrize("allow,message", [("10.0.0.1/8", "has host bits set"),
                                           ("", "holds no entry")])
def test_a_bad_allow_list_is_refused_before_anything_is_bound(
        tmp_path: Path, allow: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.sock"
    assert main(["serve", "sockserve.echo:UpperEchoHandler", "--bind", f"unix:{path}",
                 "--allow", allow]) == 1
    assert message in capsys.readouterr().err
    assert not path.exists()
