"""Allow and deny lists of IP networks, checked for every connection before its handler.

Pure: no sockets, no I/O, no logging; counting and logging refusals is the server's job.

The rules, in order:

1. A client matching any ``deny`` entry is refused.
2. Otherwise, if ``allow`` is not empty, the client must match one of its entries.
3. Otherwise the client is allowed.

An IPv4-mapped IPv6 client (``::ffff:a.b.c.d``, how IPv4 clients appear on a dual-stack
socket) is an IPv4 client: it is matched against the IPv4 rules, so a server decides
the same whether it listens on ``0.0.0.0`` or on ``[::]``, and ``deny ::/0`` does not
lock IPv4 out of a dual-stack server (nginx's access module does the same).  Rules
written in mapped form (``::ffff:10.0.0.0/104``) are IPv4 rules for the same reason.

Unix-domain clients (``str``/``bytes``/``None`` addresses) have no IP: ``allow_unix``
decides for them.  Any other address (another family, an unparseable host) is allowed
only while there are no rules at all.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

from .errors import AccessListError

__all__ = ["AccessList", "AccessListError"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Entry = str | ipaddress.IPv4Network | ipaddress.IPv6Network | ipaddress.IPv4Address | \
    ipaddress.IPv6Address

# Networks of one family grouped by prefix length: (bits to shift away, the networks'
# shifted values).  A check costs one set lookup per distinct prefix length (at most
# 33 or 129), however many entries the list has.
_Table = tuple[tuple[int, frozenset[int]], ...]

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # RFC 4291 section 2.5.5.2
_SEPARATORS = re.compile(r"[,\s]+")


class AccessList:
    """Immutable CIDR allow/deny lists; see the module docstring for the rules.

    To change the rules, build a new list and swap the server's reference: a check in
    progress on another thread sees either the old list or the new one, never a mix.

    Args:
        allow: networks (``"10.0.0.0/8"``, ``"2001:db8::/32"``) or single addresses
            (``"192.0.2.7"`` is ``/32``, ``"::1"`` is ``/128``); empty allows everyone
            not denied.
        deny: the same; a match refuses the client whatever ``allow`` says.
        allow_unix: whether Unix-domain clients, which have no IP address, are allowed.

    Raises:
        AccessListError: an entry is not an address or network, carries a zone index
            (``%eth0``), or has host bits set (``10.0.0.1/8``); the message names it.
        TypeError: *allow* or *deny* is a single str (use ``from_strings``) or holds
            something other than a str or an ``ipaddress`` object.
    """

    __slots__ = ("_allow", "_deny", "_allow_unix", "_no_rules",
                 "_allow4", "_allow6", "_deny4", "_deny6")

    def __init__(self, allow: Iterable[Entry] = (), deny: Iterable[Entry] = (), *,
                 allow_unix: bool = True) -> None:
        self._allow = _parse_entries(allow, "allow")
        self._deny = _parse_entries(deny, "deny")
        self._allow_unix = bool(allow_unix)
        self._no_rules = not self._allow and not self._deny
        self._allow4, self._allow6 = _table(self._allow, 4), _table(self._allow, 6)
        self._deny4, self._deny6 = _table(self._deny, 4), _table(self._deny, 6)

    @classmethod
    def from_strings(cls, allow: str | Iterable[str] = (), deny: str | Iterable[str] = (),
                     *, allow_unix: bool = True) -> AccessList:
        """Build from text as found in a command line, environment variable or file.

        Each string may hold several entries separated by commas or whitespace, so both
        ``"10.0.0.0/8, ::1"`` and ``["10.0.0.0/8", "::1"]`` work.

        Raises:
            AccessListError: as for the constructor, or text given for *allow* or *deny*
                holds no entry (``--allow "$LIST"`` with the variable empty must not
                let every client in).
        """
        return cls(_split(allow, "allow"), _split(deny, "deny"), allow_unix=allow_unix)

    @property
    def allow(self) -> tuple[Network, ...]:
        """The allow entries, as networks (mapped IPv6 entries turned into IPv4)."""
        return self._allow

    @property
    def deny(self) -> tuple[Network, ...]:
        """The deny entries, as networks (mapped IPv6 entries turned into IPv4)."""
        return self._deny

    @property
    def allow_unix(self) -> bool:
        """Whether Unix-domain clients are allowed."""
        return self._allow_unix

    def check(self, client_address: object) -> bool:
        """Whether the client may be served.

        Args:
            client_address: as socketserver passes it: ``(host, port)``, ``(host, port,
                flowinfo, scope_id)``, or a Unix address (``str``, ``bytes``, ``None``).
        """
        if isinstance(client_address, tuple):
            if self._no_rules:
                return True
            host = client_address[0] if client_address else None
            parsed = _parse_client(host) if isinstance(host, str) else None
            if parsed is None:
                return False
            version, value = parsed
            for shift, networks in self._deny4 if version == 4 else self._deny6:
                if value >> shift in networks:
                    return False
            if not self._allow:
                return True
            for shift, networks in self._allow4 if version == 4 else self._allow6:
                if value >> shift in networks:
                    return True
            return False
        if client_address is None or isinstance(client_address, (str, bytes)):
            return self._allow_unix
        return self._no_rules

    def explain(self, client_address: object) -> str:
        """Why ``check()`` decides as it does, for a log line (slower than ``check``)."""
        allowed = "allowed" if self.check(client_address) else "refused"
        if client_address is None or isinstance(client_address, (str, bytes)):
            return f"{allowed}: Unix client (allow_unix={self._allow_unix})"
        host = client_address[0] if isinstance(client_address, tuple) and client_address \
            else None
        if self._no_rules:
            return f"{allowed}: no rules"
        if not isinstance(host, str) or _parse_client(host) is None:
            return f"{allowed}: not an IP address"
        ip = ipaddress.ip_address(host)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for rules, name in ((self._deny, "deny"), (self._allow, "allow")):
            for network in rules:
                if network.version == ip.version and ip in network:
                    return f"{allowed}: {ip} matches {name} {network}"
        return f"{allowed}: {ip} matches no rule" + (" and the allow list is not empty"
                                                    if self._allow else "")

    def __repr__(self) -> str:
        return (f"AccessList(allow={[str(n) for n in self._allow]}, "
                f"deny={[str(n) for n in self._deny]}, allow_unix={self._allow_unix})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccessList):
            return NotImplemented
        return (self._allow, self._deny, self._allow_unix) == \
            (other._allow, other._deny, other._allow_unix)

    def __hash__(self) -> int:
        return hash((self._allow, self._deny, self._allow_unix))


@functools.lru_cache(maxsize=4096)  # clients reconnect; parsing costs about 2 µs
def _parse_client(host: str) -> tuple[int, int] | None:
    """(4 or 6, the address as an int), IPv4-mapped addresses as IPv4; None if not IP."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return 4, int(ip.ipv4_mapped)
    return ip.version, int(ip)


def _split(entries: str | Iterable[str], name: str) -> list[str]:
    texts = [entries] if isinstance(entries, str) else list(entries)
    parts = [part for text in texts for part in _SEPARATORS.split(text) if part]
    if texts and not parts:
        raise AccessListError(f"{name} text {texts!r} holds no entry (leave it out for "
                              f"no {name} rules)")
    return parts


def _parse_entries(entries: Iterable[Entry], name: str) -> tuple[Network, ...]:
    if isinstance(entries, (str, bytes)):
        raise TypeError(f"{name} takes a list of entries, not one {type(entries).__name__};"
                        " AccessList.from_strings() splits text")
    networks: dict[Network, None] = {}  # ordered, without duplicates
    for entry in entries:
        networks[_parse_entry(entry)] = None
    return tuple(networks)


def _parse_entry(entry: Entry) -> Network:
    if isinstance(entry, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        # An address subclass: taken as one, it would silently stand for one address
        # or its whole network.
        raise AccessListError(f"access list entry {entry!r} is an interface; give its "
                              ".ip (the address) or .network")
    address = entry.network_address if isinstance(entry, ipaddress.IPv6Network) else entry
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise AccessListError(f"access list entry {entry!r}: zone indexes (%…) are "
                              "not supported")
    if isinstance(entry, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        network: Network = entry
    elif isinstance(entry, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        network = ipaddress.ip_network(entry)
    elif isinstance(entry, str):
        network = _parse_text(entry)
    else:
        raise TypeError(f"an access list entry is a str or an ipaddress network, "
                        f"not {type(entry).__name__} ({entry!r})")
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _parse_text(entry: str) -> Network:
    text = entry.strip()
    if not text:
        raise AccessListError(f"empty access list entry {entry!r}")
    if "%" in text:
        # A zone names a link, not addresses; matching would silently ignore it.
        raise AccessListError(f"access list entry {entry!r}: zone indexes (%…) are "
                              "not supported")
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise AccessListError(f"access list entry {entry!r} is not an IP address or "
                              "CIDR network") from None
    # Most likely a typo for a single address or the network; guessing either could
    # let in far more clients than meant.
    raise AccessListError(f"access list entry {entry!r} has host bits set; write "
                          f"{str(loose)!r} for the network or {text.split('/')[0]!r} "
                          "for the address")


def _table(networks: tuple[Network, ...], version: int) -> _Table:
    bits = 32 if version == 4 else 128
    groups: dict[int, set[int]] = {}
    for network in networks:
        if network.version == version:
            shift = bits - network.prefixlen
            groups.setdefault(shift, set()).add(int(network.network_address) >> shift)
    # Broad networks first: a few large ranges usually decide most clients.
    return tuple((shift, frozenset(values))
                 for shift, values in sorted(groups.items(), reverse=True))
