"""Maildirs for the virtual mail user.

Courier never creates a Maildir (the seed tutorial's "send a hello mail
first" gotcha; imapd answers "[ALERT] Fatal error: No such file or
directory"), so tests create them explicitly, owned by the vmail uid/gid the
delivery agents and imapd switch to.
"""

from __future__ import annotations

import os
import socket
import time
from itertools import count
from pathlib import Path

VMAIL_UID = 5000
VMAIL_GID = 5000

_seq = count()


def make_maildir(path: str | os.PathLike[str], uid: int = VMAIL_UID, gid: int = VMAIL_GID) -> Path:
    """Create ``path`` with cur/new/tmp (and missing parents), all owned by
    uid:gid. Parents are made 0755 so the vmail user can reach the Maildir
    from a root-owned temp dir."""
    maildir = Path(path)
    missing = []
    parent = maildir
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o755)
        os.chown(directory, uid, gid)
    for sub in ("cur", "new", "tmp"):
        d = maildir / sub
        d.mkdir(mode=0o700, exist_ok=True)
        os.chown(d, uid, gid)
    os.chown(maildir, uid, gid)
    os.chmod(maildir, 0o700)
    return maildir


def drop_message(
    maildir: str | os.PathLike[str],
    message: bytes | str,
    uid: int = VMAIL_UID,
    gid: int = VMAIL_GID,
) -> Path:
    """Deliver ``message`` into Maildir/new the way an MDA does (write to tmp,
    rename to new). Use LF line ends: Maildir stores messages in Unix form and
    imapd adds the CRs itself."""
    data = message.encode() if isinstance(message, str) else message
    name = f"{int(time.time())}.P{os.getpid()}Q{next(_seq)}.{socket.gethostname()}"
    tmp = Path(maildir) / "tmp" / name
    tmp.write_bytes(data)
    os.chown(tmp, uid, gid)
    final = Path(maildir) / "new" / name
    os.rename(tmp, final)
    return final


def messages(maildir: str | os.PathLike[str]) -> list[Path]:
    """All message files in new/ and cur/, oldest name first."""
    root = Path(maildir)
    return sorted([*(root / "new").iterdir(), *(root / "cur").iterdir()])
