"""sockserve's exceptions: one base, and subclasses that keep the builtin meaning too.

Catch ``SockServeError`` for anything sockserve raises on its own account; each
subclass also derives from the builtin a caller would expect (a malformed address is
still a ``ValueError``), so code written against the stdlib keeps working.  Errors from
the operating system stay ``OSError``.
"""

from __future__ import annotations

__all__ = ["SockServeError", "AddressError", "AccessListError", "LineTooLong"]


class SockServeError(Exception):
    """Base class of every exception sockserve raises on its own account."""


class AddressError(SockServeError, ValueError):
    """A bind address (``HOST:PORT``, ``unix:/path``, ``fd://N``, ...) is malformed."""


class AccessListError(SockServeError, ValueError):
    """An allow or deny entry is not an IP address or CIDR network."""


class LineTooLong(SockServeError, ValueError):
    """A line longer than the server's ``max_line_length`` arrived."""
