"""Filesystem side of Unix-domain listeners: stale-file probing and owner-only cleanup.

The stdlib's ``UnixStreamServer`` fails with EADDRINUSE when a previous process died
without removing its socket file, and never removes its own file.  Here a file is only
removed when it is provably dead (nobody accepts on it) or provably ours (same inode,
created by this process).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass

logger = logging.getLogger("sockserve.listen")

UnixPath = str | bytes


def is_filesystem_path(address: object) -> bool:
    """True for a Unix socket path that names a file (not Linux's abstract namespace)."""
    if isinstance(address, str):
        return bool(address) and not address.startswith("\0")
    if isinstance(address, bytes):
        return bool(address) and not address.startswith(b"\0")
    return False


def remove_stale_socket_file(path: UnixPath, socket_type: int) -> bool:
    """Unlink *path* if it is a socket file that no live process is listening on.

    A connection attempt tells the two apart (unix(7)): ECONNREFUSED means nobody is
    bound; success, or any other error such as EPROTOTYPE, means somebody is.  Regular
    files and live sockets are left alone so that bind() reports EADDRINUSE as usual.

    Returns:
        True if a stale file was removed.
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except FileNotFoundError:
        return False
    with socket.socket(socket.AF_UNIX, socket_type) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            pass
        except OSError:
            return False
        else:
            return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    logger.info("removed stale Unix socket file %r", path)
    return True


@dataclass(frozen=True)
class OwnedSocketFile:
    """The socket file this process created by bind(), identified by inode."""

    path: UnixPath
    device: int
    inode: int
    pid: int

    @classmethod
    def after_bind(cls, path: UnixPath) -> OwnedSocketFile:
        st = os.lstat(path)
        return cls(path, st.st_dev, st.st_ino, os.getpid())

    def remove(self) -> None:
        """Unlink the file if it is still the one we created, from the process that created it.

        A forked child must not remove its parent's socket, and a file that another
        server has since bound at the same path (a new inode) is not ours to remove.
        """
        if os.getpid() != self.pid:
            return
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) != (self.device, self.inode):
            return
        try:
            os.unlink(self.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                logger.warning("could not remove Unix socket file %r: %s", self.path, exc)
