"""The bind syntax: every form, its canonical text, and a clear error for each mistake."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sockserve.address import (
    Address,
    AddressError,
    display_client_address,
    parse_address,
    unmap_client_address,
)
from sockserve.errors import SockServeError


@pytest.mark.parametrize("text, expected, canonical", [
    ("localhost:8080", Address("tcp", host="localhost", port=8080), "localhost:8080"),
    ("127.0.0.1:0", Address("tcp", host="127.0.0.1", port=0), "127.0.0.1:0"),
    ("example.com.:65535", Address("tcp", host="example.com.", port=65535),
     "example.com.:65535"),
    ("my_service-1:80", Address("tcp", host="my_service-1", port=80), "my_service-1:80"),
    ("[::1]:80", Address("tcp", host="::1", port=80), "[::1]:80"),
    ("[2001:DB8:0::1]:80", Address("tcp", host="2001:db8::1", port=80), "[2001:db8::1]:80"),
    ("[fe80::1%eth0]:80", Address("tcp", host="fe80::1%eth0", port=80), "[fe80::1%eth0]:80"),
    ("[::ffff:127.0.0.1]:1", Address("tcp", host="::ffff:127.0.0.1", port=1),
     "[::ffff:127.0.0.1]:1"),
    ("[::]:80", Address("tcp", host="::", port=80), "[::]:80"),
    (":80", Address("tcp", host="", port=80), "*:80"),
    ("*:80", Address("tcp", host="", port=80), "*:80"),
    ("0.0.0.0:80", Address("tcp", host="0.0.0.0", port=80), "0.0.0.0:80"),
    ("host:0080", Address("tcp", host="host", port=80), "host:80"),
    ("tcp://host:1", Address("tcp", host="host", port=1), "host:1"),
    ("TCP://[::1]:1", Address("tcp", host="::1", port=1), "[::1]:1"),
    ("tcp://unix:1", Address("tcp", host="unix", port=1), "tcp://unix:1"),
    ("tcp://UnixGram:1", Address("tcp", host="UnixGram", port=1), "tcp://UnixGram:1"),
    ("udp://host:53", Address("udp", host="host", port=53), "udp://host:53"),
    ("udp://[::1]:53", Address("udp", host="::1", port=53), "udp://[::1]:53"),
    ("udp://*:53", Address("udp", host="", port=53), "udp://*:53"),
    ("udp://:53", Address("udp", host="", port=53), "udp://*:53"),
    ("unix:/run/app.sock", Address("unix", path="/run/app.sock"), "unix:/run/app.sock"),
    ("unix:relative.sock", Address("unix", path="relative.sock"), "unix:relative.sock"),
    ("unix:./@odd", Address("unix", path="./@odd"), "unix:./@odd"),
    ("unix:///run/app.sock", Address("unix", path="/run/app.sock"), "unix:/run/app.sock"),
    ("unix:@app", Address("unix", path="\0app"), "unix:@app"),
    ("unix:@with:colon", Address("unix", path="\0with:colon"), "unix:@with:colon"),
    ("unixgram:/run/log.sock", Address("unixgram", path="/run/log.sock"),
     "unixgram:/run/log.sock"),
    ("unixgram:@log", Address("unixgram", path="\0log"), "unixgram:@log"),
    ("fd://3", Address("fd", fd=3), "fd://3"),
    ("fd://0", Address("fd", fd=0), "fd://0"),
])
def test_each_form_parses_and_prints_canonically(text: str, expected: Address,
                                                 canonical: str) -> None:
    address = parse_address(text)
    assert address == expected
    assert str(address) == canonical
    assert parse_address(canonical) == address


@pytest.mark.parametrize("text, kind", [
    ("h:1", socket.SOCK_STREAM), ("udp://h:1", socket.SOCK_DGRAM),
    ("unix:/p", socket.SOCK_STREAM), ("unixgram:/p", socket.SOCK_DGRAM), ("fd://3", None)])
def test_socket_type(text: str, kind: int | None) -> None:
    assert parse_address(text).socket_type == kind


def test_abstract_names_are_flagged() -> None:
    assert parse_address("unix:@x").is_abstract
    assert not parse_address("unix:/x").is_abstract
    assert not parse_address("h:1").is_abstract


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("localhost", "missing ':PORT'"),
    ("localhost:", "missing port"),
    ("localhost:http", "not a number"),
    ("localhost:-1", "not a number"),
    ("localhost:+1", "not a number"),
    ("localhost:1.5", "not a number"),
    ("localhost:65536", "out of range"),
    ("localhost:123456", "not a number"),
    ("localhost:８０", "not a number"),  # non-ASCII digits
    ("::1:80", "brackets"),
    ("[::1]", "expected ':PORT'"),
    ("[::1]80", "expected ':PORT'"),
    ("[::1:80", "missing ']'"),
    ("[]:80", "not an IPv6 address"),
    ("[127.0.0.1]:80", "not an IPv6 address"),
    ("[::1%]:80", "not an IPv6 address"),
    ("1.2.3:80", "not a valid IPv4"),
    ("256.0.0.1:80", "not a valid IPv4"),
    ("01.2.3.4:80", "not a valid IPv4"),
    ("host.123:80", "not a valid IPv4"),
    ("a b:80", "not a valid host name"),
    ("-host:80", "not a valid host name"),
    ("host-:80", "not a valid host name"),
    ("a..b:80", "not a valid host name"),
    (".:80", "not a valid host name"),
    ("a/b:80", "not a valid host name"),
    (("a" * 64) + ".com:80", "not a valid host name"),
    (".".join(["a" * 50] * 6) + ":80", "not a valid host name"),
    ("bücher.example:80", "xn--"),
    ("http://host:80", "unknown scheme 'http://'"),
    ("udp://host", "missing ':PORT'"),
    ("udp://", "missing ':PORT'"),
    ("unix:", "missing path"),
    ("unix:@", "abstract socket name is empty"),
    ("unix://relative", "unix:/absolute/path"),
    ("unixgram:", "missing path"),
    ("unix:/a\0b", "NUL"),
    ("unix:@a\0b", "NUL"),
    ("unix:/" + "x" * 107, "at most 107"),
    ("unix:@" + "x" * 108, "at most 107"),
    ("fd://", "fd://N"),
    ("fd://-1", "fd://N"),
    ("fd://x", "fd://N"),
    ("fd://3:4", "fd://N"),
    ("fd://4294967296", "out of range"),
    # Number forms the resolver reads as IPv4 (inet_aton(3)), whatever their last label:
    ("0x0:80", "shorthand"),
    ("0x7f000001:80", "shorthand"),
    ("10.0.0.0x1:80", "shorthand"),
    # A zone is an interface name (at most 15 bytes, no '/', ':' or space) or a number.
    ("[fe80::1%" + "a" * 16 + "]:80", "zone"),
    ("[fe80::1%a b]:80", "zone"),
    ("[fe80::1%\udcff]:80", "zone"),
])
def test_invalid_addresses_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        parse_address(text)
    assert message in str(excinfo.value)
    assert f"invalid address {text!r}" in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)
    assert isinstance(excinfo.value, SockServeError)


def test_longest_unix_paths_are_accepted() -> None:
    assert parse_address("unix:/" + "x" * 106).path == "/" + "x" * 106
    assert parse_address("unix:@" + "x" * 107).path == "\0" + "x" * 107


def test_non_str_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        parse_address(b"localhost:80")  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="sctp", host="h", port=1), "unknown address kind"),
    (dict(kind="tcp", host="h"), "needs port"),
    (dict(kind="tcp", port=1), "needs host"),
    (dict(kind="tcp", host="h", port=1, path="/p"), "takes no path"),
    (dict(kind="unix"), "needs path"),
    (dict(kind="unix", path="/p", fd=3), "takes no fd"),
    (dict(kind="fd", fd=-1), "out of range"),
    (dict(kind="fd", fd=True), "must be an int"),
    (dict(kind="tcp", host="h", port=70000), "out of range"),
    (dict(kind="tcp", host="h", port="80"), "must be an int"),
    (dict(kind="tcp", host="a b", port=1), "not a valid host name"),
    (dict(kind="tcp", host="[::1]", port=1), "not an IPv6 address"),
    (dict(kind="tcp", host="fe80::1%a]b", port=1), "zone"),
    (dict(kind="tcp", host=None, port=1), "needs host"),
    (dict(kind="unix", path="@name"), "./@"),
    (dict(kind="unix", path=""), "empty"),
    (dict(kind="unix", path=b"/p"), "must be a str"),
])
def test_constructed_addresses_are_checked_too(kwargs: dict[str, object],
                                               message: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        Address(**kwargs)  # type: ignore[arg-type]
    assert message in str(excinfo.value)


@pytest.mark.parametrize("host, canonical", [
    ("0:0::0", "::"),
    ("::FFFF:127.0.0.1", "::ffff:127.0.0.1"),
    ("FE80::1%eth0", "fe80::1%eth0"),
])
def test_constructed_addresses_are_canonical(host: str, canonical: str) -> None:
    # As parsed ones are: "0:0::0" is the wildcard, and str() parses back to an equal one.
    address = Address("tcp", host=host, port=80)
    assert address.host == canonical
    assert parse_address(str(address)) == address


def test_addresses_are_frozen_and_hashable() -> None:
    address = parse_address("h:1")
    with pytest.raises(AttributeError):
        address.port = 2  # type: ignore[misc]
    assert {address, parse_address("tcp://h:1")} == {address}


# -- property: any valid (host, port) round-trips ---------------------------------

_label = st.from_regex(r"\A[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
_hostnames = st.lists(_label, min_size=1, max_size=4).map(".".join).filter(
    lambda name: not name.rsplit(".", 1)[-1].isdigit() and len(name) <= 253)
_hosts = st.one_of(
    st.just(""),
    _hostnames,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@given(host=_hosts, port=st.integers(0, 65535), kind=st.sampled_from(["tcp", "udp"]))
def test_any_valid_host_and_port_round_trip(host: str, port: int, kind: str) -> None:
    written = f"[{host}]" if ":" in host else host
    prefix = f"{kind}://"
    address = parse_address(f"{prefix}{written}:{port}")
    assert address.kind == kind and address.port == port
    assert address.host is not None
    if ":" in host:
        assert ipaddress.ip_address(address.host) == ipaddress.ip_address(host)
    else:
        assert address.host == host
    assert parse_address(str(address)) == address
    assert str(parse_address(str(address))) == str(address)


@given(path=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
                    min_size=1, max_size=100),
       kind=st.sampled_from(["unix", "unixgram"]), abstract=st.booleans())
def test_any_valid_unix_path_round_trips(path: str, kind: str, abstract: bool) -> None:
    assume(len(path.encode()) <= 106)
    assume(abstract or not path.startswith(("@", "//")))
    text = f"{kind}:{'@' if abstract else ''}{path}"
    address = parse_address(text)
    assert address.path == ("\0" if abstract else "") + path
    assert str(address) == text
    assert parse_address(str(address)) == address


# -- client addresses --------------------------------------------------------------

@pytest.mark.parametrize("addr, shown", [
    (("127.0.0.1", 5000), "127.0.0.1:5000"),
    (("::ffff:127.0.0.1", 5000, 0, 0), "127.0.0.1:5000"),
    (("::1", 5000, 0, 0), "[::1]:5000"),
    (("fe80::1%eth0", 5000, 0, 2), "[fe80::1%eth0]:5000"),
    (("2001:db8::1.2.3.4", 5000, 0, 0), "[2001:db8::1.2.3.4]:5000"),
    ("/run/client.sock", "/run/client.sock"),
    ("", "unix:(unnamed)"),
    (None, "unix:(unnamed)"),
    (b"", "unix:(unnamed)"),
    (b"\0client", "unix:@client"),
    ("\0client", "unix:@client"),
    (b"\0bad\nname\xff", "unix:@bad\\nname\\xff"),
    ("/tmp/evil\nFAKE LOG LINE", "/tmp/evil\\nFAKE LOG LINE"),
    (12345, "12345"),
])
def test_display_client_address(addr: object, shown: str) -> None:
    assert display_client_address(addr) == shown


@pytest.mark.parametrize("addr, unmapped", [
    (("::ffff:10.1.2.3", 80, 0, 0), ("10.1.2.3", 80)),
    (("::FFFF:10.1.2.3", 80, 0, 0), ("10.1.2.3", 80)),
    (("::ffff:a01:203", 80, 0, 0), ("10.1.2.3", 80)),  # as Python < 3.13 formats it
    (("::1", 80, 0, 0), ("::1", 80, 0, 0)),
    (("2001:db8::1.2.3.4", 80, 0, 0), ("2001:db8::1.2.3.4", 80, 0, 0)),
    (("::1.2.3.4", 80, 0, 0), ("::1.2.3.4", 80, 0, 0)),  # IPv4-compatible, not mapped
    (("10.1.2.3", 80), ("10.1.2.3", 80)),
    (("not.an.address.x", 80, 0, 0), ("not.an.address.x", 80, 0, 0)),
    ("/path", "/path"),
    (None, None),
])
def test_unmap_client_address(addr: object, unmapped: object) -> None:
    assert unmap_client_address(addr) == unmapped


@given(text=st.one_of(
    st.text(max_size=60),
    st.sampled_from(["tcp://", "udp://", "unix:", "unixgram:", "fd://", "[", "*:"]).flatmap(
        lambda prefix: st.text(max_size=40).map(lambda rest: prefix + rest))))
def test_any_text_parses_or_raises_address_error(text: str) -> None:
    try:
        address = parse_address(text)
    except AddressError:
        return
    assert parse_address(str(address)) == address


def test_a_unix_path_starting_with_two_slashes_reads_back() -> None:
    address = parse_address("unix:////tmp/x.sock")  # the URL spelling of //tmp/x.sock
    assert address.path == "//tmp/x.sock"
    assert parse_address(str(address)) == address
