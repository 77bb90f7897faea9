"""Recipient state at RCPT: a disabled mailbox, or one over its quota.

Only mailboxes are judged. An address that is not a mailbox (an alias, a catch-all, a
typo) gets no objection here: Postfix's own maps decide whether it exists, so this check
never turns an unknown user into anything but Postfix's usual answer.
"""

from __future__ import annotations

import logging
import os

from ..addresses import strip_extension
from ..codec.policy import PolicyRequest
from ..db import DatabaseError
from ..logsafe import shown
from ..sections import MailboxConfig, PolicyConfig
from .actions import check_action
from .check import CheckFailed, Result, flag, number, text
from .queries import compile_named
from .quota import UsageReader
from .settings import QUERY_PARAMS

log = logging.getLogger("vmaild.policy")

PARAMS = QUERY_PARAMS["recipient_query"]


class RecipientCheck:
    """Answers at ``protocol_state=RCPT`` (the only state with a recipient per request,
    PROTOCOLS.md 3.1); everywhere else it has nothing to say."""

    name = "recipient"

    def __init__(
        self,
        pc: PolicyConfig,
        mailbox: MailboxConfig,
        delimiter: str,
        db: object,
        reader: UsageReader | None,
    ):
        self.db = db
        self.query = compile_named(pc.recipient_query, PARAMS)
        self.delimiter = delimiter
        self.base = mailbox.base
        self.disabled_action = check_action(pc.disabled_action)
        self.quota_action = check_action(pc.quota_action)
        self.fail_action = check_action(pc.recipient_fail_action, fail=True)
        self.state_check = pc.recipient_check  # False: only the quota is checked
        self.reader = reader  # None: quota not checked

    def applies(self, request: PolicyRequest) -> bool:
        return request.protocol_state.upper() == "RCPT" and bool(request.recipient)

    async def run(self, request: PolicyRequest) -> Result:
        address = request.recipient.strip().lower()
        row = await self._mailbox(address)
        if row is None:
            return Result(self.name)  # not a mailbox: Postfix's maps decide (DUNNO)
        found, cols = row
        if self.state_check and (
            not flag(cols[0] if cols else None) or not flag(cols[1] if len(cols) > 1 else None)
        ):
            return Result(self.name, self.disabled_action)
        quota_bytes = number(cols[2]) if len(cols) > 2 else 0
        quota_messages = number(cols[3]) if len(cols) > 3 else 0
        if self.reader is None or (quota_bytes == 0 and quota_messages == 0):
            return Result(self.name)
        maildir = self._maildir_path(found, text(cols[4]) if len(cols) > 4 else None)
        try:
            usage = await self.reader.usage(maildir)
        except OSError as e:
            raise CheckFailed(f"cannot read the usage of {maildir}: {e}", "quota") from e
        size = request.size  # MAIL FROM SIZE=, 0 when the client did not say (3.1)
        over_bytes = quota_bytes > 0 and (
            usage.bytes + size > quota_bytes or usage.bytes >= quota_bytes
        )
        over_count = quota_messages > 0 and usage.messages + 1 > quota_messages
        if over_bytes or over_count:
            log.info(
                "policy: %s is over quota (%d of %d bytes, %d of %d messages, message size %d)",
                shown(found),
                usage.bytes,
                quota_bytes,
                usage.messages,
                quota_messages,
                size,
            )
            return Result("quota", self.quota_action)
        return Result(self.name)

    async def _mailbox(self, address: str) -> tuple[str, tuple[object, ...]] | None:
        """The row for the address as given, else without its extension (user+ext@dom)."""
        candidates = [address]
        stripped = strip_extension(address, self.delimiter)
        if stripped is not None:
            candidates.append(stripped)
        for candidate in candidates:
            local, at, domain = candidate.rpartition("@")
            if not at or not local or not domain:
                return None  # a bare name or '@domain' is no mailbox
            params = self.query.bind({"address": candidate, "local": local, "domain": domain})
            try:
                rows = await self.db.fetch(self.query.sql, params)  # type: ignore[attr-defined]
            except DatabaseError as e:
                raise CheckFailed(str(e), key="recipient_query", error=e) from e
            if rows:
                return candidate, tuple(rows[0])
        return None

    def _maildir_path(self, address: str, maildir: str | None) -> str:
        """[mailbox] base + users.maildir, or the seed's ``domain/user/`` layout."""
        local, _, domain = address.rpartition("@")
        relative = maildir or f"{domain}/{local}/"
        path = os.path.normpath(os.path.join(self.base, relative))
        if ".." in relative.split("/") or "\0" in relative:
            raise CheckFailed(f"refusing maildir path {relative!r} for {address}", "quota")
        return path
