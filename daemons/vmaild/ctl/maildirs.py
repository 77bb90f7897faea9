"""Where an account's Maildir is, creating it, and removing it safely (``--purge``).

The seed's layout is ``<base>/<domain>/<user>/`` (Courier's MAILDIR expression and
Postfix's mailbox query both build it from the address); ``users.maildir`` overrides it
per account, relative to the base unless absolute.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..maildir import SUBDIRS, ensure_maildir
from ..sections import MailboxConfig
from .errors import Refused


class Incomplete(Refused):
    """The database change was made but a file-system step after it was not."""

    label = "incomplete"


def path_for(mailbox: MailboxConfig, email: str, maildir: str | None = None) -> Path:
    base = Path(mailbox.base)
    if maildir:
        p = Path(maildir)
        return p if p.is_absolute() else base / p
    local, _, domain = email.rpartition("@")
    return base / domain / local


def create(mailbox: MailboxConfig, path: Path) -> bool:
    """Create the Maildir (and its domain directory) owned by [mailbox] uid/gid."""
    try:
        return ensure_maildir(path, mailbox.uid, mailbox.gid)
    except OSError as e:
        raise Incomplete(f"cannot create Maildir {path}: {e.strerror or e}") from None


def _inside(base: str, path: str) -> bool:
    return path != base and os.path.commonpath([base, path]) == base


def purge(mailbox: MailboxConfig, path: Path) -> bool:
    """Remove a Maildir; True if something was removed. Refuses anything that is not a
    Maildir strictly inside the mailbox base (a symlink, ``..`` tricks in a stored
    ``maildir`` value, the base itself, a domain directory)."""
    base = os.path.realpath(mailbox.base)
    if os.path.islink(path):
        raise Incomplete(f"kept {path}: it is a symbolic link")
    real = os.path.realpath(path)
    if not _inside(base, real):
        raise Incomplete(f"kept {path}: it is not inside the mailbox base {mailbox.base}")
    if not os.path.lexists(real):
        return False
    if not os.path.isdir(real):
        raise Incomplete(f"kept {path}: not a directory")
    entries = set(os.listdir(real))
    if entries and not entries & set(SUBDIRS):
        raise Incomplete(f"kept {path}: it does not look like a Maildir (no cur/new/tmp)")
    try:
        shutil.rmtree(real)
    except OSError as e:
        raise Incomplete(f"could not remove all of {path}: {e.strerror or e}") from None
    return True


def remove_if_empty(mailbox: MailboxConfig, directory: Path) -> bool:
    """Remove a domain directory left empty by purges; never the base itself."""
    base = os.path.realpath(mailbox.base)
    real = os.path.realpath(directory)
    if os.path.islink(directory) or not _inside(base, real) or not os.path.isdir(real):
        return False
    try:
        os.rmdir(real)
    except OSError:
        return False  # not empty: other accounts' or foreign files stay
    return True
