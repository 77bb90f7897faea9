"""Sending limits per authenticated user: messages and recipients per sliding window.

Counters live in the database (send_counters: one row per login and minute), so every
Postfix host and every vmaild instance sees the same totals. The window is a sliding one
approximated from the minute buckets: full buckets inside the window count fully, and the
oldest, partly covered bucket counts in proportion to the part of it still inside.

When is a message counted? Postfix calls the policy service at the restriction lists it is
named in (PROTOCOLS.md 3.1). By default (``ratelimit_count_state = END-OF-MESSAGE``) the
limits are enforced at each RCPT, so that a client over its limit is refused before it sends
the data, and a message is counted once it is complete, at END-OF-MESSAGE, with its
``recipient_count``: only accepted mail counts. That needs ``check_policy_service`` in
``smtpd_end_of_data_restrictions`` too (the shipped snippet does it). With ``RCPT``, every
accepted RCPT counts a recipient and the first RCPT of a transaction (``instance``) counts
the message: nothing needed at END-OF-MESSAGE, but aborted transactions count as well.

The window's totals are read once per transaction (at its first request, on the read
host) and this transaction's own recipients are added to them in memory: that is the
early, advisory check at each RCPT. Where a message is counted, the check is made again
and the count added in one transaction on the writer (counting.py, which states the
bound): concurrent sessions of one user, on any number of hosts, cannot overshoot the
limit. Over a limit, the user gets a temporary code and its client retries later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..codec.policy import PolicyRequest
from ..db import DatabaseError
from ..logsafe import shown
from ..sections import PolicyConfig
from .actions import check_action
from .check import CheckFailed, Result, number
from .counting import AtomicCounter
from .queries import compile_named
from .settings import COUNT_STATES, QUERY_PARAMS

if TYPE_CHECKING:
    from ..schema_fit import SchemaFit

log = logging.getLogger("vmaild.policy")

BUCKET_SECONDS = 60  # send_counters.bucket = floor(unix_time / 60)
_TRANSACTIONS = 10_000


def bucket_of(t: float) -> int:
    return math.floor(t / BUCKET_SECONDS)


def window_totals(
    rows: Iterable[tuple[object, ...]], now: float, window: float
) -> tuple[float, float]:
    """(messages, recipients) in the ``window`` seconds before ``now``.

    Rows are ``(bucket, messages, recipients)``. A bucket older than the window counts for
    nothing; the bucket the window starts in counts for the fraction of it inside the
    window (its events assumed evenly spread); newer ones, even "future" ones written by a
    host whose clock runs ahead, count fully.
    """
    start = now - window
    first = bucket_of(start)
    fraction = ((first + 1) * BUCKET_SECONDS - start) / BUCKET_SECONDS
    messages = recipients = 0.0
    for row in rows:
        b, m, r = number(row[0]), number(row[1]), number(row[2])
        if b < first:
            continue
        weight = fraction if b == first else 1.0
        messages += m * weight
        recipients += r * weight
    return messages, recipients


@dataclass(slots=True)
class _Transaction:
    """One mail transaction (Postfix's ``instance``) of one login, as this vmaild saw it."""

    messages: float  # the window's totals when the transaction began
    recipients: float
    accepted: int = 0  # RCPTs let through so far


class RateLimitCheck:
    name = "ratelimit"

    def __init__(
        self,
        pc: PolicyConfig,
        db: object,
        clock: Callable[[], float] = time.time,
        fit: SchemaFit | None = None,
    ):
        self.db = db
        self.fit = fit  # reports a query that does not fit the schema, once
        self.clock = clock  # wall clock: buckets are shared between hosts
        self.window = pc.ratelimit_window
        self.max_messages = pc.ratelimit_messages
        self.max_recipients = pc.ratelimit_recipients
        state = pc.ratelimit_count_state.strip().upper()
        if state not in COUNT_STATES:
            raise ValueError(f"ratelimit_count_state must be one of {', '.join(COUNT_STATES)}")
        self.count_at_rcpt = state == "RCPT"
        self.select = compile_named(pc.ratelimit_query, QUERY_PARAMS["ratelimit_query"])
        self.update = compile_named(pc.ratelimit_update, QUERY_PARAMS["ratelimit_update"])
        self.prune = compile_named(pc.ratelimit_prune, QUERY_PARAMS["ratelimit_prune"])
        lock = compile_named(pc.ratelimit_lock, QUERY_PARAMS["ratelimit_lock"])
        self.counter = AtomicCounter(db, lock, self.select, self.update, pc.ratelimit_retries)
        self.prune_interval = pc.ratelimit_prune_interval
        self.action = check_action(pc.ratelimit_action)
        self.fail_action = check_action(pc.ratelimit_fail_action, fail=True)
        # (instance, login) -> what this instance knows about that open transaction.
        self._txns: dict[tuple[str, str], _Transaction] = {}
        self._last_prune = 0.0
        self._prune_task: asyncio.Task[None] | None = None

    def applies(self, request: PolicyRequest) -> bool:
        if not request.sasl_username:
            return False
        state = request.protocol_state.upper()
        return state == "RCPT" or (state == "END-OF-MESSAGE" and not self.count_at_rcpt)

    async def run(self, request: PolicyRequest) -> Result:
        login = request.sasl_username.strip().lower()
        now = self.clock()
        self._maybe_prune(now)
        key = (request.instance, login)
        txn = self._txns.get(key) if request.instance else None
        if txn is None:
            # The totals are read once per transaction, before it added anything: later
            # RCPTs and END-OF-MESSAGE add this transaction's own recipients to them.
            txn = _Transaction(*await self._totals(login, now))
        if request.protocol_state.upper() == "RCPT":
            if self._over(login, txn.messages + 1, txn.recipients + txn.accepted + 1):
                return Result(self.name, self.action)
            # The message is counted at its first RCPT: later ones check it is in.
            if self.count_at_rcpt and not await self._count(
                login, now, 0 if txn.accepted else 1, 1
            ):
                return Result(self.name, self.action)
            txn.accepted += 1
            self._remember(key, txn)
            return Result(self.name)
        # END-OF-MESSAGE: recipient_count is the number of accepted recipients (3.1).
        self._txns.pop(key, None)
        n = request.recipient_count or txn.accepted or 1
        if self._over(login, txn.messages + 1, txn.recipients + n):
            return Result(self.name, self.action)
        if not await self._count(login, now, 1, n):
            return Result(self.name, self.action)
        return Result(self.name)

    def _over(self, login: str, messages: float, recipients: float) -> bool:
        over_m = self.max_messages > 0 and messages > self.max_messages
        over_r = self.max_recipients > 0 and recipients > self.max_recipients
        if over_m or over_r:
            log.info(
                "policy: %s over its sending limit (%.0f/%d messages, %.0f/%d recipients per %ds)",
                shown(login),
                messages,
                self.max_messages,
                recipients,
                self.max_recipients,
                self.window,
            )
        return over_m or over_r

    def _remember(self, key: tuple[str, str], txn: _Transaction) -> None:
        if not key[0]:
            return  # no instance: nothing ties the requests of a transaction together
        if key not in self._txns and len(self._txns) >= _TRANSACTIONS:
            self._txns.pop(next(iter(self._txns)))  # the oldest: an abandoned transaction
        self._txns[key] = txn

    async def _totals(self, login: str, now: float) -> tuple[float, float]:
        params = self.select.bind({"login": login, "since": bucket_of(now - self.window)})
        try:
            rows = await self.db.fetch(self.select.sql, params)  # type: ignore[attr-defined]
        except DatabaseError as e:
            raise CheckFailed(str(e), key="ratelimit_query", error=e) from e
        return window_totals(rows, now, self.window)

    async def _count(self, login: str, now: float, messages: int, recipients: int) -> bool:
        """Check and count in one transaction on the writer (counting.py); False: over
        the limit, nothing counted."""
        values = {
            "login": login,
            "since": bucket_of(now - self.window),
            "bucket": bucket_of(now),
            "messages": messages,
            "recipients": recipients,
        }
        # (A message counted at an earlier RCPT of this transaction is in the totals
        # already; a later RCPT adds no message.)
        try:
            return await self.counter.check_and_count(
                values,
                (messages, recipients),
                lambda rows: window_totals(rows, now, self.window),
                lambda m, r: self._over(login, m, r),
            )
        except DatabaseError as e:
            raise CheckFailed(f"counting failed: {e}", key="ratelimit_update", error=e) from e

    def _maybe_prune(self, now: float) -> None:
        """Delete buckets no window can see any more, now and then, in the background."""
        if self.prune_interval <= 0 or now - self._last_prune < self.prune_interval:
            return
        if self._prune_task is not None and not self._prune_task.done():
            return
        self._last_prune = now
        before = bucket_of(now - self.window) - 1
        self._prune_task = asyncio.get_running_loop().create_task(self._prune(before))

    async def _prune(self, before: int) -> None:
        try:
            n = await self.db.execute(  # type: ignore[attr-defined]
                self.prune.sql,
                self.prune.bind({"before": before}),
            )
        except DatabaseError as e:
            if not (self.fit is not None and self.fit.report("policy", "ratelimit_prune", e)):
                log.warning("policy: pruning old send_counters rows failed: %s", e)
            return
        if n:
            log.debug("policy: pruned %d old send_counters rows", n)

    def close(self) -> None:
        """Called from a worker thread (Runtime.close on reload and stop): the task is
        cancelled through its own loop, the only thread-safe way."""
        task = self._prune_task
        if task is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                task.get_loop().call_soon_threadsafe(task.cancel)
