"""The policy service: one request in, one action out (PROTOCOLS.md section 3).

Checks run in a fixed order: sender ownership, recipient state and quota, sending limits.
The first objection is the answer; no objection is ``DUNNO``, never ``OK``, so Postfix's
own restrictions (unknown users, relaying) still decide after us (3.2, P-P3). The limits
come last because they may count the message: only mail nothing else refused is counted.

A check that cannot decide (database down, unreadable Maildir, too slow) never rejects:
its configured fail action answers instead (``DUNNO`` goes on with the next check; a defer
answers at once; ``close`` hangs up without a reply, and Postfix retries once and then
applies its ``default_action``, 3.3).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..codec.policy import PolicyRequest
from ..config import Config
from ..logsafe import shown
from ..metrics import Metrics
from .actions import CLOSE, verb
from .check import CheckFailed, Result
from .quota import UsageReader
from .ratelimit import RateLimitCheck
from .recipient import RecipientCheck
from .sender import SenderCheck

if TYPE_CHECKING:
    from ..schema_fit import SchemaFit

log = logging.getLogger("vmaild.policy")

DUNNO = "DUNNO"
REQUEST_TYPE = "smtpd_access_policy"


class Check(Protocol):
    name: str
    fail_action: str

    def applies(self, request: PolicyRequest) -> bool: ...

    async def run(self, request: PolicyRequest) -> Result: ...


class PolicyService:
    """Built from the configuration by ``Runtime.build``; rebuilt on every reload."""

    def __init__(
        self,
        cfg: Config,
        db: Any,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        fit: SchemaFit | None = None,
    ):
        pc = cfg.policy
        self.metrics = metrics
        self.fit = fit  # reports a query that does not fit the schema, once
        self.timeout = pc.request_timeout
        delimiter = (
            cfg.lookup.recipient_delimiter
            if pc.recipient_delimiter is None
            else pc.recipient_delimiter
        )
        self.reader: UsageReader | None = None
        self.ratelimit: RateLimitCheck | None = None
        self.checks: list[Check] = []
        if pc.sender_check:
            self.checks.append(SenderCheck(pc, delimiter, db))
        if pc.recipient_check or pc.quota_check:
            if pc.quota_check:
                self.reader = UsageReader(pc.quota_count_max_files, pc.quota_count_ttl)
            self.checks.append(RecipientCheck(pc, cfg.mailbox, delimiter, db, self.reader))
        if pc.ratelimit_check and (pc.ratelimit_messages > 0 or pc.ratelimit_recipients > 0):
            self.ratelimit = RateLimitCheck(pc, db, clock, fit)
            self.checks.append(self.ratelimit)
        self._children: dict[tuple[str, str], Any] = {}

    async def decide(self, request: PolicyRequest) -> str | None:
        """The action for ``request``; None means "close without replying"."""
        started = time.perf_counter()
        try:
            if request.request != REQUEST_TYPE:
                # 3.1: "Answer any other request= value with a logged warning and DUNNO."
                log.warning(
                    "policy: unknown request type '%s', answering DUNNO", shown(request.request, 64)
                )
                self._count("request", DUNNO)
                return DUNNO
            current: list[Check | None] = [None]
            try:
                # asyncio.timeout is wait_for without the extra task per request.
                async with asyncio.timeout(self.timeout):
                    return await self._decide(request, current)
            except TimeoutError:
                check = current[0]
                if check is None:
                    return None
                log.warning("policy: %s check took longer than %.1fs", check.name, self.timeout)
                return self._failed(check, None)
        finally:
            self.metrics.policy_seconds.observe(time.perf_counter() - started)

    async def _decide(self, request: PolicyRequest, current: list[Check | None]) -> str | None:
        for check in self.checks:
            if not check.applies(request):
                continue
            current[0] = check
            try:
                result = await check.run(request)
            except CheckFailed as e:
                if not self._misfit(e):
                    log.warning(
                        "policy: %s check failed: %s", e.label or check.name, shown(str(e), 500)
                    )
                action = self._failed(check, e.label)
                if action == DUNNO:
                    continue  # fail open: the other checks may still have something to say
                return action
            self._count(result.label, result.action or DUNNO)
            if result.action is not None:
                log.info(
                    "policy: %s: %s (sender=<%s> recipient=<%s> login=%s client=%s)",
                    result.label,
                    shown(result.action),
                    shown(request.sender),
                    shown(request.recipient),
                    shown(request.sasl_username or "-"),
                    shown(request.client_address),
                )
                return result.action
        return DUNNO

    def _misfit(self, e: CheckFailed) -> bool:
        """True if a [policy] query does not fit the schema (schema_fit logs that once)."""
        return (
            self.fit is not None
            and e.key is not None
            and e.error is not None
            and self.fit.report("policy", e.key, e.error)
        )

    def _failed(self, check: Check, label: str | None) -> str | None:
        action = check.fail_action
        self._count(f"{label or check.name}_failed", "NOREPLY" if action == CLOSE else action)
        return None if action == CLOSE else action

    def _count(self, check: str, action: str) -> None:
        key = (check, verb(action))
        child = self._children.get(key)
        if child is None:  # label values come from check names and configured actions only
            child = self._children[key] = self.metrics.policy_decisions.labels(*key)
        child.inc()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.ratelimit is not None:
            self.ratelimit.close()
