"""Directories that hold sockets: safe to trust, and created with explicit modes.

Shared by the listeners (servers/sockets.py), which refuse to bind in an unsafe directory,
and by vmaild-authpipe (privdrop.py), which refuses to relay to a socket in one: whoever can
write to a socket's directory can put their own socket in its place.
"""

from __future__ import annotations

import os
import stat

#: Mode of a socket directory vmaild has to create itself.
DIRECTORY_MODE = 0o750


class UnsafeDirectory(OSError):
    """A socket directory others could write to: start-up stops with its one line."""


def check_directory(directory: str, owner: int | None = None) -> None:
    """Refuse ``directory`` if anybody but root and ``owner`` (default: us) could replace
    what is in it.

    Every component from / down is checked (a writable parent lets its writer rename the
    directory away and put their own in its place): it must be owned by root or by
    ``owner``, and not group- or world-writable unless the sticky bit is set."""
    me = os.geteuid() if owner is None else owner
    path = os.path.realpath(directory)
    parts = [p for p in path.split("/") if p]
    current = "/"
    for part in [None, *parts]:
        if part is not None:
            current = os.path.join(current, part)
        st = os.stat(current)
        if st.st_uid not in (0, me):
            raise UnsafeDirectory(
                f"unsafe socket directory {current}: owned by uid {st.st_uid}, "
                f"not by root or uid {me}"
            )
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and not st.st_mode & stat.S_ISVTX:
            who = "world" if st.st_mode & stat.S_IWOTH else "group"
            raise UnsafeDirectory(
                f"unsafe socket directory {current}: {who}-writable "
                f"(mode {stat.S_IMODE(st.st_mode):04o}) without the sticky bit"
            )


def ensure_directory(directory: str, mode: int = DIRECTORY_MODE) -> None:
    """Create ``directory`` with ``mode`` (missing parents 0755, as ``mkdir -p``) whatever
    the umask: mkdir applies the umask, which only removes bits (0700 at worst, nobody
    else gets in), then chmod sets the exact mode."""
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory.rstrip("/")) or "/"
    if parent != directory:
        ensure_directory(parent, 0o755)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        return
    os.chmod(directory, mode)
