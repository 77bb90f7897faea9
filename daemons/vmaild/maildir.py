"""Maildir creation with the account's owner.

Courier never creates a Maildir (docs/STACK.md): the seed's admins had to send a
"hello" mail first. vmailctl creates one when it adds a user, and the auth service when an
account logs in or is looked up without one.
"""

from __future__ import annotations

import os
from pathlib import Path

SUBDIRS = ("cur", "new", "tmp")


def ensure_maildir(path: str | os.PathLike[str], uid: int, gid: int) -> bool:
    """Create ``path`` with cur/new/tmp (and missing parents, such as the domain
    directory) owned by uid:gid, mode 0700. Returns True if anything was created."""
    target = Path(path)
    created = False
    missing = []
    p = target
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
        _chown(d, uid, gid)
        created = True
    for sub in SUBDIRS:
        d = target / sub
        if not d.is_dir():
            d.mkdir(mode=0o700, exist_ok=True)
            _chown(d, uid, gid)
            created = True
    return created


def _chown(path: Path, uid: int, gid: int) -> None:
    # Only root (or CAP_CHOWN) may give files away; an unprivileged daemon running as the
    # mail owner itself creates them with the right owner already.
    if os.geteuid() == 0 or (os.geteuid(), os.getegid()) != (uid, gid):
        try:
            os.chown(path, uid, gid)
        except PermissionError:
            if os.geteuid() == 0:
                raise
