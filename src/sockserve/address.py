"""One bind syntax for the API and the CLI: parse it (sans-IO), bind it, show clients.

    HOST:PORT, [IPv6]:PORT, *:PORT, :PORT   TCP (``tcp://`` may be written in front)
    udp://HOST:PORT, udp://[IPv6]:PORT      UDP
    unix:/path, unix:@name                  Unix stream socket (file, Linux abstract name)
    unixgram:/path, unixgram:@name          Unix datagram socket
    fd://N                                  an inherited socket, already bound

``parse_address()`` only looks at the text: host names are resolved by
``bind_sockets()``, which owns every socket it creates until it returns them.  The
syntax and the binding rules are described in docs/addresses-and-access.md.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Literal

from ._listen import OwnedSocketFile, is_filesystem_path, remove_stale_socket_file
from .errors import AddressError

__all__ = ["Address", "AddressError", "AddressKind", "parse_address", "bind_sockets",
           "display_client_address", "unmap_client_address"]

logger = logging.getLogger("sockserve.address")

AddressKind = Literal["tcp", "udp", "unix", "unixgram", "fd"]
KINDS: frozenset[str] = frozenset({"tcp", "udp", "unix", "unixgram", "fd"})

# sizeof(sockaddr_un.sun_path) on Linux (unix(7)): a file path needs its terminating
# NUL in there, an abstract name its leading one.  macOS and the BSDs allow 104 bytes;
# there bind() reports the longer paths.
UNIX_PATH_MAX = 108

_PORT = re.compile(r"[0-9]{1,5}")
_FD = re.compile(r"[0-9]{1,10}")
_FD_MAX = 2**31 - 1  # a C int
# An IPv6 zone: a number, or an interface name as Linux takes it (dev_valid_name():
# below IFNAMSIZ bytes, no '/', ':' or white space), in printable ASCII without the
# address syntax's '%', '[', '\' and ']'.
_ZONE = re.compile(r"[!-$&-.0-9;-Z^-~]{1,15}")
# RFC 1123 section 2.1 labels, plus "_", which real service names (Docker, SRV) carry.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
# RFC 1035 section 2.3.4: 255 octets on the wire, 253 characters written out.
_HOSTNAME_MAX = 253

# socket() errors meaning "this address family is not available here" (an IPv6 entry
# on a kernel built without IPv6): skip that address, as asyncio's create_server does.
_NO_FAMILY_ERRNOS = frozenset({errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT})
# With port 0, the sockets after the first reuse the first one's port (as Tornado's
# bind_sockets does), so that "localhost:0" is one port; if that port is taken in the
# other family, start over with a new one, this many times.
_PORT_ZERO_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed bind address; ``str()`` gives back its canonical text.

    Attributes:
        kind: "tcp", "udp", "unix" (stream), "unixgram" (datagram) or "fd".
        host: for tcp/udp: an IP literal (IPv6 without brackets) or a host name;
            "" means every interface (IPv4 and IPv6).
        port: for tcp/udp: 0-65535 (0 lets the kernel pick).
        path: for unix/unixgram: a file path, or "\\0name" in Linux's abstract namespace.
        fd: for fd: the descriptor number of an inherited, bound socket.
    """

    kind: AddressKind
    host: str | None = None
    port: int | None = None
    path: str | None = None
    fd: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise AddressError(f"unknown address kind {self.kind!r}")
        wanted = {"tcp": ("host", "port"), "udp": ("host", "port"), "unix": ("path",),
                  "unixgram": ("path",), "fd": ("fd",)}[self.kind]
        for name in ("host", "port", "path", "fd"):
            if (getattr(self, name) is None) == (name in wanted):
                state = "needs" if name in wanted else "takes no"
                raise AddressError(f"a {self.kind} address {state} {name}")
        if self.port is not None:
            _check_number(self.port, "port", 65535)
        if self.fd is not None:
            _check_number(self.fd, "descriptor", _FD_MAX)
        if self.host is not None:  # canonical, as a parsed one: str() parses back equal
            object.__setattr__(self, "host", _check_host(self.host))
        if self.path is not None:
            _check_unix_path(self.path)

    @property
    def socket_type(self) -> int | None:
        """SOCK_STREAM or SOCK_DGRAM; None for fd (read from the socket at bind time)."""
        if self.kind in ("tcp", "unix"):
            return socket.SOCK_STREAM
        if self.kind in ("udp", "unixgram"):
            return socket.SOCK_DGRAM
        return None

    @property
    def is_abstract(self) -> bool:
        """True for a name in Linux's abstract Unix namespace (``unix:@name``)."""
        return self.path is not None and self.path.startswith("\0")

    def __str__(self) -> str:
        if self.host is not None:
            host = "*" if not self.host else f"[{self.host}]" if ":" in self.host else self.host
            # A host named like a Unix scheme needs its scheme to read back as TCP.
            scheme = "udp://" if self.kind == "udp" else \
                "tcp://" if host.lower() in ("unix", "unixgram") else ""
            return f"{scheme}{host}:{self.port}"
        if self.path is not None:
            shown = "@" + self.path[1:] if self.is_abstract else self.path
            if shown.startswith("//"):  # "unix://x" would not parse back: the URL form
                return f"{self.kind}://{shown}"
            return f"{self.kind}:{shown}"
        return f"fd://{self.fd}"


def _check_number(value: object, what: str, maximum: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise AddressError(f"{what} must be an int, not {type(value).__name__}")
    if value < 0 or (maximum is not None and value > maximum):
        limit = f"0-{maximum}" if maximum is not None else "0 or more"
        raise AddressError(f"{what} {value} is out of range ({limit})")


def _check_host(host: object) -> str:
    """*host* in canonical form, or AddressError."""
    if not isinstance(host, str):
        raise AddressError(f"host must be a str, not {type(host).__name__}")
    return _ipv6_literal(host) if ":" in host else _host(host)


def _check_unix_path(path: object) -> None:
    if not isinstance(path, str):
        raise AddressError(f"path must be a str, not {type(path).__name__}")
    name = path[1:] if path.startswith("\0") else path
    if not name:
        raise AddressError("the abstract socket name is empty" if path else "the path is empty")
    if "\0" in name:
        raise AddressError("the path contains a NUL character")
    if name.startswith("@") and not path.startswith("\0"):
        raise AddressError("a path starting with '@' would read as an abstract name; "
                           "write it as './@…'")
    try:
        size = len(os.fsencode(path)) + (0 if path.startswith("\0") else 1)
    except UnicodeError:
        raise AddressError("the path cannot be encoded for the file system") from None
    if size > UNIX_PATH_MAX:
        raise AddressError(f"the path is {size - 1} bytes long; Unix socket addresses "
                           f"hold at most {UNIX_PATH_MAX - 1}")


def parse_address(text: str) -> Address:
    """Parse one bind address; the syntax is in this module's docstring.

    Sans-IO: nothing is resolved or opened, so a host name is accepted as written.

    Raises:
        AddressError: the text is not a valid address; the message quotes it and says
            what is wrong.
    """
    if not isinstance(text, str):
        raise TypeError(f"an address is a str, not {type(text).__name__}")
    try:
        return _parse(text)
    except AddressError as exc:
        raise AddressError(f"invalid address {text!r}: {exc}") from None


def _parse(text: str) -> Address:
    if not text:
        raise AddressError("the address is empty")
    lower = text[:9].lower()
    if lower.startswith(("tcp://", "udp://")):
        return _parse_inet("udp" if lower.startswith("udp") else "tcp", text[6:])
    if lower.startswith("fd://"):
        if not _FD.fullmatch(text[5:]):
            raise AddressError("expected fd://N with N a descriptor number")
        return Address("fd", fd=int(text[5:]))
    if lower.startswith("unixgram:"):
        return _parse_unix("unixgram", text[9:])
    if lower.startswith("unix:"):
        return _parse_unix("unix", text[5:])
    scheme, sep, _ = text.partition("://")
    if sep:
        raise AddressError(f"unknown scheme {scheme + sep!r} (known: tcp://, udp://, "
                           "fd://, unix:, unixgram:)")
    return _parse_inet("tcp", text)


def _parse_unix(kind: Literal["unix", "unixgram"], rest: str) -> Address:
    if rest.startswith("//"):
        # The URL spelling unix:///abs/path (Docker's) names the same file; anything
        # else after "//" would silently become an absolute path, so it is refused.
        if not rest.startswith("///"):
            raise AddressError(f"write {kind}:/absolute/path, {kind}:relative/path "
                               f"or {kind}:@abstract")
        rest = rest[2:]
    if not rest:
        raise AddressError(f"missing path after '{kind}:'")
    path = "\0" + rest[1:] if rest.startswith("@") else rest
    return Address(kind, path=path)


def _parse_inet(kind: Literal["tcp", "udp"], rest: str) -> Address:
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise AddressError("missing ']' after the IPv6 address")
        host, after = _ipv6_literal(rest[1:end]), rest[end + 1:]
        if not after.startswith(":"):
            raise AddressError("expected ':PORT' after ']'")
        port_text = after[1:]
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise AddressError("missing ':PORT'")
        if ":" in host:
            raise AddressError("an IPv6 address goes in brackets, as in [::1]:8080")
        host = "" if host == "*" else _host(host)
    if not port_text:
        raise AddressError("missing port after ':'")
    if not _PORT.fullmatch(port_text):
        raise AddressError(f"port {port_text!r} is not a number from 0 to 65535")
    return Address(kind, host=host, port=int(port_text))


def _ipv6_literal(text: str) -> str:
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        raise AddressError(f"{text!r} is not an IPv6 address") from None
    if address.scope_id is not None and not _ZONE.fullmatch(address.scope_id):
        raise AddressError(f"zone {address.scope_id!r} is neither an interface name "
                           "(at most 15 bytes of printable ASCII, no '/', ':', '%' or "
                           "brackets) nor a number")
    if address.ipv4_mapped is not None and address.scope_id is None:
        # Python 3.13 writes mapped addresses this way; earlier versions as ::ffff:7f00:1.
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _host(text: str) -> str:
    """An IPv4 literal (canonical form) or a syntactically valid host name."""
    if not text:
        return ""
    if not text.isascii():
        raise AddressError(f"host {text!r} is not ASCII; write an internationalised "
                           "name in its xn-- (IDNA) form")
    labels = text[:-1].split(".") if text.endswith(".") else text.split(".")
    # An all-numeric last label makes it an IPv4 address, never a name (RFC 3696
    # section 2: top-level domains are not all-numeric).
    if labels[-1].isdigit():
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise AddressError(f"{text!r} is not a valid IPv4 address") from None
    if len(text.rstrip(".")) > _HOSTNAME_MAX or not all(map(_LABEL.fullmatch, labels)):
        raise AddressError(f"{text!r} is not a valid host name")
    try:  # "0x7f000001", "10.0.0.0x1": C's inet_aton(), which resolvers use, reads
        socket.inet_aton(text)  # them as IPv4 addresses; no name looks like them
    except OSError:
        return text
    raise AddressError(f"{text!r} reads as an IPv4 address in a shorthand form; "
                       "write it as four decimal numbers, a.b.c.d")


def bind_sockets(address: Address | str, *, backlog: int = 128, reuse_address: bool = True,
                 reuse_port: bool = False, dual_stack: bool = True,
                 unix_mode: int | None = None,
                 unix_owner: tuple[int, int] | None = None) -> list[socket.socket]:
    """Create, bind and (for stream sockets) listen on the sockets for *address*.

    Args:
        address: an ``Address``, or text for ``parse_address()``.
        backlog: ``listen()`` backlog for stream sockets (the kernel caps it at
            net.core.somaxconn).  Not applied to an inherited socket already listening.
        reuse_address: SO_REUSEADDR on TCP sockets, so a restart need not wait for the
            old connections' TIME_WAIT.  Never set on UDP: there it lets another
            process bind the same port and take a share of the datagrams (CPython
            bpo-37228).
        reuse_port: SO_REUSEPORT on tcp/udp sockets (several processes, one port).
        dual_stack: serve the wildcard ("*", "" or "::") with one IPv6 socket that also
            accepts IPv4 (IPV6_V6ONLY=0; clients appear as ``::ffff:a.b.c.d``, see
            ``unmap_client_address``).  Where that is impossible, or with False, the
            wildcard gets one socket per family, the IPv6 one IPv6-only ("::" alone
            with False gets only that).
        unix_mode: permission bits for a Unix socket file (connecting needs write
            permission on it, unix(7)), e.g. 0o660.
        unix_owner: (uid, gid) for a Unix socket file; -1 leaves one unchanged.  Both
            are applied between bind() and listen(), so no client can connect while
            the file still has the umask's permissions.  Other kinds ignore them.

    Returns:
        One socket for a Unix path, an fd, an IP literal or the dual-stack wildcard;
        one per resolved address for a host name ("localhost" may give 127.0.0.1 and
        ::1), all on the same port, also when *port* was 0.

    Resource handling: the caller owns the returned sockets, and must remove a Unix
    socket file it no longer serves (``_listen.OwnedSocketFile.after_bind`` records it
    right after this call).  On any failure every socket created so far is closed, and
    a Unix socket file created by this call removed, before the error propagates.  An
    ``fd://N`` descriptor becomes the returned socket's; on failure it is left open and
    still the caller's.

    Error handling: a stale Unix socket file (nobody listening) is replaced.  Host
    entries whose address family the kernel lacks are skipped, with a debug log.

    Raises:
        AddressError: *address* is malformed, or ``fd://N`` is not a bound socket.
        OSError: socket(), bind() or listen() failed, including ``socket.gaierror`` when
            the host does not resolve; the message names the address.
    """
    if isinstance(address, str):
        address = parse_address(address)
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise OSError(errno.ENOPROTOOPT, "SO_REUSEPORT is not supported on this platform")
    try:
        if address.fd is not None:
            return [_adopt_fd(address.fd, backlog)]
        if address.path is not None:
            return [_bind_unix(address.path, _socket_type(address), backlog,
                               unix_mode, unix_owner)]
        return _bind_inet(address, backlog, reuse_address, reuse_port, dual_stack)
    except OSError as exc:
        if exc.errno is None:
            raise OSError(f"cannot bind {address}: {exc}") from exc
        raise type(exc)(exc.errno, f"cannot bind {address}: {exc.strerror}") from exc


def _socket_type(address: Address) -> int:
    kind = address.socket_type
    assert kind is not None
    return kind


def _adopt_fd(fd: int, backlog: int) -> socket.socket:
    sock = socket.socket(fileno=fd)  # family, type and protocol come from the kernel
    try:
        make_listening(sock, backlog, f"fd://{fd}")
        # socket(fileno=) reports the default timeout but keeps the descriptor's
        # O_NONBLOCK flag (CPython's init_sockobject); make the two agree.
        sock.settimeout(socket.getdefaulttimeout())
        # As for the sockets Python makes: processes a handler starts must not keep
        # the listening socket open.
        sock.set_inheritable(False)
    except BaseException:
        sock.detach()  # not adopted after all: the descriptor stays the caller's
        raise
    return sock


def make_listening(sock: socket.socket, backlog: int, name: str) -> None:
    """Check that *sock* (made elsewhere) is bound, and make a stream socket listen if it
    does not yet; nothing else about it changes.

    Raises:
        AddressError: it is not bound (``listen()`` would bind it to a random port or
            an autobind name), or it is a connected stream socket (systemd's
            ``Accept=yes`` passes those; a server needs ``Accept=no``).
        OSError: ``listen()`` failed.
    """
    local = sock.getsockname()
    inet = sock.family in (socket.AF_INET, socket.AF_INET6)
    if (inet and local[1] == 0) or (sock.family == getattr(socket, "AF_UNIX", None)
                                    and not local):
        raise AddressError(f"{name} is not a bound socket")
    if sock.type != socket.SOCK_STREAM or _is_listening(sock):
        return
    try:
        peer = sock.getpeername()
    except OSError:
        peer = None
    if peer is not None:
        raise AddressError(f"{name} is a connected socket (to {peer!r}), not one to "
                           "listen on (systemd: Accept=no)")
    sock.listen(backlog)


def _is_listening(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except (AttributeError, OSError):
        return False  # unknown: listen() on a listening socket only updates the backlog


def _bind_unix(path: str, kind: int, backlog: int, mode: int | None,
               owner: tuple[int, int] | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, kind)
    created: OwnedSocketFile | None = None
    try:
        if is_filesystem_path(path):
            remove_stale_socket_file(path, kind)
        sock.bind(path)
        if is_filesystem_path(path):
            created = OwnedSocketFile.after_bind(path)
            if mode is not None:
                os.chmod(path, mode)
            if owner is not None:
                os.chown(path, *owner)
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        if created is not None:
            created.remove()
        raise
    return sock


def _bind_inet(address: Address, backlog: int, reuse_address: bool, reuse_port: bool,
               dual_stack: bool) -> list[socket.socket]:
    host, port, kind = address.host, address.port, _socket_type(address)
    assert host is not None and port is not None
    options = (kind, backlog, reuse_address, reuse_port)
    if host in ("", "::") and dual_stack:
        sock = _bind_dual_stack(port, options)
        if sock is not None:
            return [sock]
        host = ""  # one socket per family instead
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, kind, 0,
                               socket.AI_PASSIVE)
    attempts_left = _PORT_ZERO_ATTEMPTS
    while True:
        attempts_left -= 1
        try:
            return _bind_each(infos, port, options, may_retry=attempts_left > 0)
        except _SharedPortTaken:
            logger.debug("the port picked was taken in another family; picking again")


_Options = tuple[int, int, bool, bool]  # socket type, backlog, reuse_address, reuse_port


class _SharedPortTaken(Exception):
    """The port picked for the first socket is in use in another family; retry."""


def _bind_dual_stack(port: int, options: _Options) -> socket.socket | None:
    """One IPv6 socket accepting IPv4 too, or None where the system cannot do that."""
    if not socket.has_ipv6 or not hasattr(socket, "IPV6_V6ONLY"):
        return None
    try:
        sock = socket.socket(socket.AF_INET6, options[0])
    except OSError as exc:
        if exc.errno in _NO_FAMILY_ERRNOS:
            return None
        raise
    try:
        # Linux defaults to dual-stack unless net.ipv6.bindv6only=1, the BSDs to
        # IPv6-only, and OpenBSD refuses 0 outright (RFC 3493 section 5.3).
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        _bind_one(sock, ("::", port), options)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL, errno.EADDRNOTAVAIL):
            logger.debug("no dual-stack socket (%s); binding each family", exc)
            return None
        raise
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_each(infos: list[Any], port: int, options: _Options,
               may_retry: bool) -> list[socket.socket]:
    """One socket per distinct resolved address, all on one port."""
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    bound_port: int | None = None
    unavailable: OSError | None = None
    try:
        for family, kind, proto, _, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6) or (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                if exc.errno not in _NO_FAMILY_ERRNOS:
                    raise
                logger.debug("skipping %s: %s", sockaddr[0], exc)
                continue
            sockets.append(sock)
            if family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
                # Its IPv4 twin is bound separately; without this the two would collide.
                # An IPv4-mapped address (::ffff:a.b.c.d) is an IPv4 one: the kernel
                # binds it only on a socket that takes IPv4.
                mapped = ipaddress.IPv6Address(sockaddr[0].split("%")[0]).ipv4_mapped
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                                0 if mapped is not None else 1)
            shared = port == 0 and bound_port is not None
            if shared:
                sockaddr = (sockaddr[0], bound_port, *sockaddr[2:])
            try:
                _bind_one(sock, sockaddr, options)
            except OSError as exc:
                if shared and may_retry and exc.errno == errno.EADDRINUSE:
                    raise _SharedPortTaken() from exc
                if family != socket.AF_INET6 or exc.errno != errno.EADDRNOTAVAIL:
                    raise
                # A name that resolves to an IPv6 address this host does not have
                # (localhost's ::1 in a container without IPv6): serve the others.
                logger.debug("skipping %s: %s", sockaddr[0], exc)
                sockets.remove(sock)
                sock.close()
                unavailable = exc
                continue
            if bound_port is None:
                bound_port = sock.getsockname()[1]
        if not sockets:
            if unavailable is not None:
                raise unavailable
            raise OSError(errno.EAFNOSUPPORT, "no resolved address has a supported family")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_one(sock: socket.socket, sockaddr: Any, options: _Options) -> None:
    kind, backlog, reuse_address, reuse_port = options
    if reuse_address and kind == socket.SOCK_STREAM and hasattr(socket, "SO_REUSEADDR"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(sockaddr)
    if kind == socket.SOCK_STREAM:
        sock.listen(backlog)


def unmap_client_address(addr: Any) -> Any:
    """``('::ffff:a.b.c.d', port, flow, scope)`` as ``('a.b.c.d', port)``; else *addr*.

    On a dual-stack socket IPv4 clients arrive as IPv4-mapped IPv6 addresses (RFC 4291
    section 2.5.5.2); handlers written for IPv4 expect the plain pair.  Cheap: only an
    address written with a "." or starting with "::ffff:" is parsed (the kernel writes
    ``::ffff:1.2.3.4``; Python before 3.13 formats the same address ``::ffff:102:304``).
    """
    if isinstance(addr, tuple) and len(addr) == 4 and isinstance(addr[0], str) \
            and ("." in addr[0] or addr[0][:7].lower() == "::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(addr[0]).ipv4_mapped
        except ValueError:
            return addr
        if mapped is not None:
            return (str(mapped), addr[1])
    return addr


class MappedReplySocket:
    """A dual-stack datagram socket as a handler sees it when ``unmap_ipv4_clients``
    shows an IPv4 client as ``('a.b.c.d', port)``: ``sendto()`` to such an address goes
    to its IPv4-mapped form, which is the only one an IPv6 socket can reach.  Everything
    else is the socket's own.
    """

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def sendto(self, data: Any, *flags_and_address: Any) -> int:
        """``sendto(data, address)`` or ``sendto(data, flags, address)``."""
        *flags, address = flags_and_address
        if isinstance(address, tuple) and len(address) == 2 and isinstance(address[0], str) \
                and address[0].count(".") == 3 and address[0].replace(".", "").isdigit():
            address = ("::ffff:" + address[0], address[1])  # an IPv4 literal
        if flags:
            return self._sock.sendto(data, flags[0], address)
        return self._sock.sendto(data, address)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def display_client_address(addr: Any) -> str:
    """A client address as users expect to read it in logs.

    ``1.2.3.4:80``, ``[::1]:80`` (IPv4-mapped addresses shown as IPv4), a Unix path,
    ``unix:@name`` or ``unix:(unnamed)``.  Control characters, which a Unix client can
    put in its name, are escaped so that a log line stays one line.
    """
    addr = unmap_client_address(addr)
    if isinstance(addr, tuple) and len(addr) >= 2 and isinstance(addr[0], str):
        host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
        return f"{_printable(host)}:{addr[1]}"
    if isinstance(addr, bytes):  # Linux returns abstract names as bytes
        addr = addr.decode("utf-8", "backslashreplace")
    if addr is None or addr == "":
        return "unix:(unnamed)"
    if isinstance(addr, str):
        return "unix:@" + _printable(addr[1:]) if addr.startswith("\0") else _printable(addr)
    return _printable(str(addr))


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
