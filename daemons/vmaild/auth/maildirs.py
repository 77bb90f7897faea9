"""Maildirs for the accounts the auth service answers for (issue 4, item 7).

Courier never creates a Maildir (docs/STACK.md), so a lookup (PRE: maildrop, imapd)
or a successful login for an account without one creates it, owned by the account's
uid:gid (``vmaild.maildir.ensure_maildir``), unless ``[mailbox] create_maildirs = no``.
Only under ``[mailbox] base``: a row must not make the daemon create directories (owned by
someone else) anywhere it pleases. The check runs in a worker thread, since a filesystem
can block; a Maildir seen within ``MAILDIR_RECHECK`` seconds is not checked again, which
keeps the thread hop off the common path. A failure is logged and never fails the request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from ..maildir import ensure_maildir
from ..sections import MailboxConfig
from .accounts import Account
from .login_cache import BoundedTTL

log = logging.getLogger("vmaild.auth")
# Seconds a Maildir found present is trusted to still be there.
MAILDIR_RECHECK = 60.0
# Maildirs remembered as present (least recently seen forgotten first).
SEEN_MAX = 100_000


class AccountMaildirs:
    def __init__(self, mailbox: MailboxConfig, clock: Callable[[], float] = time.monotonic):
        self.mailbox = mailbox
        self._seen: BoundedTTL[bool] = BoundedTTL(MAILDIR_RECHECK, SEEN_MAX, clock)

    async def ensure(self, account: Account) -> None:
        """Create ``account``'s Maildir if it is missing (see the module's docstring)."""
        box = self.mailbox
        if not box.create_maildirs:
            return
        path = account.maildir_path()
        if self._seen.get(path):
            return
        base = os.path.normpath(box.base)
        if (
            not os.path.isabs(path)
            or not os.path.isabs(base)
            or os.path.commonpath([base, path]) != base
            or path == base
        ):
            log.debug("not creating %s: outside [mailbox] base %s", path, base)
            return
        loop = asyncio.get_running_loop()
        try:
            created = await loop.run_in_executor(
                None, ensure_maildir, path, account.uid, account.gid
            )
        except OSError as e:
            log.error("cannot create Maildir %s for %s: %s", path, account.address, e)
            return
        self._seen.put(path, True)
        if created:
            log.info("created Maildir %s for %s", path, account.address)
