"""Sender ownership: an authenticated user may send only as an address it owns.

Owned means: the login itself (with or without a recipient-delimiter extension), an alias
that delivers to the login (a forwardings row whose destinations include it), or an address
or ``@domain`` granted in sender_grants. The null sender is always allowed (bounces,
delivery notifications). Unauthenticated sessions are left alone: sasl_username is empty
(PROTOCOLS.md 3.1) and Postfix's other restrictions apply to them.
"""

from __future__ import annotations

from ..addresses import strip_extension
from ..codec.policy import PolicyRequest
from ..db import DatabaseError
from ..sections import PolicyConfig
from .actions import check_action, fill
from .check import CheckFailed, Result
from .queries import compile_named
from .settings import QUERY_PARAMS

PARAMS = QUERY_PARAMS["sender_query"]
# One decision per mail transaction: Postfix asks again at every RCPT with the same sender
# (3.1), and the answer cannot change within one transaction.
_MEMO_ENTRIES = 4096


class SenderCheck:
    name = "sender"

    def __init__(self, pc: PolicyConfig, delimiter: str, db: object):
        self.db = db
        self.query = compile_named(pc.sender_query, PARAMS)
        self.delimiter = delimiter
        self.action = check_action(fill(pc.sender_action, login="x", sender="x"))
        self.template = pc.sender_action
        self.fail_action = check_action(pc.sender_fail_action, fail=True)
        self._memo: dict[tuple[str, str, str], bool] = {}

    def applies(self, request: PolicyRequest) -> bool:
        # MAIL is seen only with smtpd_delay_reject=no; otherwise the sender restrictions
        # run at RCPT (3.1). Later states have nothing new to say about the sender.
        return bool(request.sasl_username) and request.protocol_state.upper() in ("MAIL", "RCPT")

    async def run(self, request: PolicyRequest) -> Result:
        login = request.sasl_username.strip().lower()
        sender = request.sender.strip().lower()
        if not sender:
            return Result(self.name)  # <>: bounces and notifications carry no owner
        key = (request.instance, login, sender)
        owned = self._memo.get(key) if request.instance else None
        if owned is None:
            owned = await self._owned(login, sender)
            if request.instance:
                if len(self._memo) >= _MEMO_ENTRIES:
                    self._memo.pop(next(iter(self._memo)))
                self._memo[key] = owned
        if owned:
            return Result(self.name)
        return Result(self.name, fill(self.template, login=login, sender=sender))

    async def _owned(self, login: str, sender: str) -> bool:
        candidates = [sender]
        stripped = strip_extension(sender, self.delimiter)
        if stripped is not None:
            candidates.append(stripped)  # alice+lists@example.com is alice's
        if login in candidates:
            return True
        for candidate in candidates:
            local, at, domain = candidate.rpartition("@")
            if not at:
                local, domain = candidate, ""
            values = {
                "login": login,
                "sender": candidate,
                "local": local,
                "domain": domain,
                "at_domain": "@" + domain if domain else "",
            }
            try:
                rows = await self.db.fetch(  # type: ignore[attr-defined]
                    self.query.sql,
                    self.query.bind(values),
                )
            except DatabaseError as e:
                raise CheckFailed(str(e), key="sender_query", error=e) from e
            if rows:
                return True
        return False
