"""CIDR allow/deny lists: the rules, IPv4-mapped clients, Unix clients, bad entries."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockserve.access import AccessList, AccessListError
from sockserve.errors import SockServeError


def v4(host: str) -> tuple[str, int]:
    return (host, 40000)


def v6(host: str) -> tuple[str, int, int, int]:
    return (host, 40000, 0, 0)


def test_no_rules_allow_every_client() -> None:
    rules = AccessList()
    assert rules.check(v4("203.0.113.9"))
    assert rules.check(v6("2001:db8::1"))
    assert rules.check("/run/client.sock")
    assert rules.check(("not-an-ip", 1))


def test_ipv4_allow_list() -> None:
    rules = AccessList(allow=["10.0.0.0/8", "192.168.1.7"])
    assert rules.check(v4("10.255.0.1"))
    assert rules.check(v4("192.168.1.7"))
    assert not rules.check(v4("192.168.1.8"))
    assert not rules.check(v4("11.0.0.1"))
    assert not rules.check(v6("2001:db8::1"))  # a non-empty allow list closes IPv6 too


def test_ipv6_allow_list() -> None:
    rules = AccessList(allow=["2001:db8::/32", "::1"])
    assert rules.check(v6("2001:db8:ffff::1"))
    assert rules.check(v6("::1"))
    assert not rules.check(v6("2001:db9::1"))
    assert not rules.check(v4("127.0.0.1"))


def test_deny_list_alone_allows_the_rest() -> None:
    rules = AccessList(deny=["203.0.113.0/24", "2001:db8:bad::/48"])
    assert not rules.check(v4("203.0.113.200"))
    assert not rules.check(v6("2001:db8:bad::7"))
    assert rules.check(v4("203.0.114.1"))
    assert rules.check(v6("2001:db8:600d::7"))


def test_deny_wins_over_allow() -> None:
    rules = AccessList(allow=["10.0.0.0/8", "0.0.0.0/0"], deny=["10.1.0.0/16"])
    assert rules.check(v4("10.2.3.4"))
    assert not rules.check(v4("10.1.3.4"))
    assert rules.check(v4("8.8.8.8"))


def test_ipv6_zone_on_the_client_is_ignored() -> None:
    rules = AccessList(allow=["fe80::/10"])
    assert rules.check(("fe80::1%eth0", 1, 0, 2))


def test_ipv4_mapped_clients_are_ipv4_clients() -> None:
    rules = AccessList(allow=["10.0.0.0/8"], deny=["10.9.0.0/16"])
    assert rules.check(v6("::ffff:10.1.2.3"))
    assert not rules.check(v6("::ffff:10.9.2.3"))
    assert not rules.check(v6("::ffff:11.1.2.3"))
    # Python < 3.13 formats mapped addresses in hex; still the same client.
    assert rules.check(v6("::ffff:a01:203"))


def test_ipv6_rules_do_not_catch_ipv4_clients_on_dual_stack_sockets() -> None:
    # "deny ::/0" means "no IPv6 clients"; it must not lock IPv4 out of a server that
    # happens to listen on [::], where IPv4 clients arrive mapped.
    rules = AccessList(deny=["::/0"])
    assert rules.check(v6("::ffff:192.0.2.1"))
    assert rules.check(v4("192.0.2.1"))
    assert not rules.check(v6("2001:db8::1"))


def test_rules_written_in_mapped_form_are_ipv4_rules() -> None:
    rules = AccessList(allow=["::ffff:10.0.0.0/104", "::ffff:192.0.2.1"])
    assert rules.allow == (ipaddress.IPv4Network("10.0.0.0/8"),
                           ipaddress.IPv4Network("192.0.2.1/32"))
    assert rules.check(v4("10.3.3.3"))
    assert rules.check(v6("::ffff:10.3.3.3"))
    assert rules.check(v4("192.0.2.1"))
    assert not rules.check(v4("192.0.2.2"))


@pytest.mark.parametrize("client", ["/run/client.sock", "", b"\0abstract", b"", None])
def test_unix_clients_follow_allow_unix(client: object) -> None:
    assert AccessList(allow=["10.0.0.0/8"]).check(client)
    assert AccessList(deny=["0.0.0.0/0", "::/0"]).check(client)
    assert not AccessList(allow=["10.0.0.0/8"], allow_unix=False).check(client)
    assert not AccessList(allow_unix=False).check(client)


@pytest.mark.parametrize("client", [("not-an-ip", 1), (), (12, 34), 42, object()])
def test_other_addresses_are_refused_once_there_are_rules(client: object) -> None:
    assert not AccessList(deny=["192.0.2.0/24"]).check(client)
    assert AccessList().check(client)


def test_entries_may_be_ipaddress_objects_and_duplicates_collapse() -> None:
    rules = AccessList(allow=[ipaddress.ip_network("10.0.0.0/8"),
                              ipaddress.ip_address("::1"), " 10.0.0.0/8 "])
    assert rules.allow == (ipaddress.IPv4Network("10.0.0.0/8"),
                           ipaddress.IPv6Network("::1/128"))
    assert rules.check(v6("::1"))


def test_from_strings_splits_on_commas_and_spaces() -> None:
    rules = AccessList.from_strings("10.0.0.0/8, 192.168.0.0/16 ::1",
                                    deny=["10.1.0.0/16,10.2.0.0/16", "  "])
    assert [str(n) for n in rules.allow] == ["10.0.0.0/8", "192.168.0.0/16", "::1/128"]
    assert [str(n) for n in rules.deny] == ["10.1.0.0/16", "10.2.0.0/16"]
    assert rules == AccessList(["10.0.0.0/8", "192.168.0.0/16", "::1"],
                               ["10.1.0.0/16", "10.2.0.0/16"])
    assert AccessList.from_strings([], allow_unix=False) == AccessList(allow_unix=False)


@pytest.mark.parametrize("entry, message", [
    ("10.0.0.0/33", "is not an IP address or CIDR network"),
    ("example.com", "is not an IP address or CIDR network"),
    ("10.0.0", "is not an IP address or CIDR network"),
    ("2001:db8::/129", "is not an IP address or CIDR network"),
    ("10.0.0.1/8", "host bits set; write '10.0.0.0/8' for the network or '10.0.0.1'"),
    ("2001:db8::1/32", "host bits set"),
    ("fe80::%eth0/64", "zone indexes"),
    ("", "empty"),
    ("   ", "empty"),
])
def test_bad_entries_are_named(entry: str, message: str) -> None:
    for allow, deny in (([entry], []), ([], [entry])):
        with pytest.raises(AccessListError) as excinfo:
            AccessList(["192.0.2.0/24"] + allow, deny)
        assert message in str(excinfo.value)
        assert repr(entry) in str(excinfo.value)
        assert isinstance(excinfo.value, ValueError)
        assert isinstance(excinfo.value, SockServeError)


def test_from_strings_names_the_bad_entry() -> None:
    with pytest.raises(AccessListError, match="'10.0.0.300'"):
        AccessList.from_strings("10.0.0.0/8,10.0.0.300")


def test_a_single_string_is_not_taken_for_a_list_of_characters() -> None:
    with pytest.raises(TypeError, match="from_strings"):
        AccessList(allow="10.0.0.0/8")
    with pytest.raises(TypeError, match="int"):
        AccessList(allow=[167772160])  # type: ignore[list-item]


def test_access_lists_are_immutable() -> None:
    rules = AccessList(["10.0.0.0/8"])
    with pytest.raises(AttributeError):
        rules.allow = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        rules.extra = 1  # type: ignore[attr-defined]
    assert hash(rules) == hash(AccessList(["10.0.0.0/8"]))


def test_repr_lists_the_rules() -> None:
    assert repr(AccessList(["10.0.0.0/8"], ["::1"], allow_unix=False)) == \
        "AccessList(allow=['10.0.0.0/8'], deny=['::1/128'], allow_unix=False)"


@pytest.mark.parametrize("client, reason", [
    (v4("10.1.2.3"), "refused: 10.1.2.3 matches deny 10.1.0.0/16"),
    (v6("::ffff:10.2.2.3"), "allowed: 10.2.2.3 matches allow 10.0.0.0/8"),
    (v4("8.8.8.8"), "refused: 8.8.8.8 matches no rule and the allow list is not empty"),
    ("/run/c.sock", "allowed: Unix client (allow_unix=True)"),
    (("bogus", 1), "refused: not an IP address"),
])
def test_explain_gives_the_deciding_rule(client: object, reason: str) -> None:
    assert AccessList(["10.0.0.0/8"], ["10.1.0.0/16"]).explain(client) == reason


def test_explain_without_rules() -> None:
    assert AccessList().explain(v4("1.2.3.4")) == "allowed: no rules"
    assert AccessList(deny=["::1"]).explain(v4("1.2.3.4")) == "allowed: 1.2.3.4 matches no rule"


# -- properties ----------------------------------------------------------------------

_networks = st.one_of(
    st.builds(lambda ip, bits: ipaddress.ip_network(f"{ip}/{bits}", strict=False),
              st.ip_addresses(v=4), st.integers(0, 32)),
    st.builds(lambda ip, bits: ipaddress.ip_network(f"{ip}/{bits}", strict=False),
              st.ip_addresses(v=6), st.integers(0, 128)),
)


def _client(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[object, ...]:
    return (str(ip), 1234) if ip.version == 4 else (str(ip), 1234, 0, 0)


def _is_mapped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None


@given(network=_networks, data=st.data())
def test_an_address_inside_a_network_is_allowed_and_denied_by_it(
        network: ipaddress.IPv4Network | ipaddress.IPv6Network, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, network.num_addresses - 1))
    ip = network[offset]
    # The documented exception: a mapped client is an IPv4 client, and only an IPv6
    # network inside ::ffff:0:0/96 (itself an IPv4 rule) speaks about it.
    mapped_range = ipaddress.IPv6Network("::ffff:0:0/96")
    if _is_mapped(ip) and not (isinstance(network, ipaddress.IPv6Network)
                               and network.subnet_of(mapped_range)):
        assert not AccessList(allow=[network]).check(_client(ip))
        return
    assert AccessList(allow=[network]).check(_client(ip))
    assert not AccessList(deny=[network]).check(_client(ip))
    assert not AccessList(allow=[network], deny=[network]).check(_client(ip))


@given(network=_networks, ip=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_check_agrees_with_ipaddress_membership(
        network: ipaddress.IPv4Network | ipaddress.IPv6Network,
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    rules = AccessList(allow=[network])
    effective_ip = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and \
        ip.ipv4_mapped is not None else ip
    effective_net = rules.allow[0]
    inside = effective_ip.version == effective_net.version and effective_ip in effective_net
    assert rules.check(_client(ip)) == inside
    assert rules.explain(_client(ip)).startswith("allowed" if inside else "refused")


@given(ip=st.ip_addresses(v=4), networks=st.lists(
    st.builds(lambda ip, bits: ipaddress.ip_network(f"{ip}/{bits}", strict=False),
              st.ip_addresses(v=4), st.integers(0, 32)), max_size=6))
def test_mapped_and_plain_ipv4_clients_get_the_same_answer(
        ip: ipaddress.IPv4Address, networks: list[ipaddress.IPv4Network]) -> None:
    half = len(networks) // 2
    rules = AccessList(allow=networks[:half], deny=networks[half:])
    assert rules.check(_client(ip)) == rules.check((f"::ffff:{ip}", 1234, 0, 0))


@pytest.mark.parametrize("entry", [ipaddress.IPv6Network("fe80::%eth0/64"),
                                   ipaddress.IPv6Address("fe80::1%eth0")])
def test_a_zone_is_refused_in_ipaddress_objects_too(entry: object) -> None:
    with pytest.raises(AccessListError, match="zone"):
        AccessList(allow=[entry])  # type: ignore[list-item]


@pytest.mark.parametrize("entry", [ipaddress.IPv4Interface("10.0.0.0/8"),
                                   ipaddress.IPv6Interface("2001:db8::1/64")])
def test_an_interface_is_refused_rather_than_read_as_its_address_or_network(
        entry: object) -> None:
    with pytest.raises(AccessListError, match="interface"):
        AccessList(allow=[entry])  # type: ignore[list-item]


@pytest.mark.parametrize("text", ["", " ", ",", ", ,"])
def test_allow_text_without_an_entry_is_refused_rather_than_letting_everyone_in(
        text: str) -> None:
    with pytest.raises(AccessListError, match="holds no entry"):
        AccessList.from_strings(allow=text)
    with pytest.raises(AccessListError, match="holds no entry"):
        AccessList.from_strings(deny=[text])
    assert AccessList.from_strings(allow=[]) == AccessList()  # none given: no rules
