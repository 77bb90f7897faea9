"""Sending limits checked and counted in one transaction on the writer.

``check_and_count`` runs, in one transaction: take the login's lock row (``ratelimit_lock``:
an upsert of the row ``bucket = 0``, older than any window, so no window ever counts it),
read the window (``ratelimit_query``), and add the message (``ratelimit_update``) only if
the totals stay within the limits. Every vmaild counting for one login queues on that one
row lock, and each one reads the window after the previous holder committed (READ
COMMITTED), so the check and the count are atomic across hosts:

    bound: for any login, at every count, the total over the window as window_totals
    computes it (the oldest minute bucket weighted by the part of it inside the window)
    stays <= the limit, whatever the number of hosts. So n hosts hammering one login within
    one window accept exactly the limit (tests/integration/test_change_log.py). Over an
    exact window-long interval the true count is at most the limit plus the unweighted rest
    of that oldest bucket (the weighting assumes its events evenly spread), i.e. less than
    one minute's worth; that is the sliding window's approximation, not a race.

What it does not cover: hosts whose clocks disagree put counts into different buckets
(each sees the other's "future" buckets fully, so that errs on the strict side, but a
host behind by d seconds lets the oldest bucket's share fade d seconds early); and the
RCPT-time check of the END-OF-MESSAGE mode is only a read, an early refusal: the message
is counted, or refused with the limit action, at END-OF-MESSAGE.

A deadlock (1213; also how Galera reports a certification conflict) or a lock wait
timeout (1205) rolls the transaction back and is retried up to ``ratelimit_retries`` more
times, after a short random pause; then the check's fail action applies. The session's
``innodb_lock_wait_timeout`` is set below the query timeout, so that a long wait ends as
1205 (retried) rather than as a client timeout (a connection given up).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from ..db import CONFLICT_ERRNOS, DatabaseError
from .queries import NamedQuery

Over = Callable[[float, float], bool]  # (messages, recipients) after counting -> over?
Totals = Callable[[list[tuple[Any, ...]]], tuple[float, float]]
RETRY_PAUSE = 0.02  # seconds, doubled per attempt, randomised


class AtomicCounter:
    def __init__(
        self,
        db: Any,
        lock: NamedQuery,
        select: NamedQuery,
        update: NamedQuery,
        retries: int,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.db = db
        self.lock, self.select, self.update = lock, select, update
        self.retries = retries
        self.sleep = sleep
        timeout = float(getattr(getattr(db, "cfg", None), "query_timeout", 2.0))
        self.lock_wait = max(1, int(timeout / 2))  # MariaDB: whole seconds, at least 1
        self.conflicts = 0  # retried conflicts, for tests and logs

    async def check_and_count(
        self,
        values: dict[str, Any],
        adding: tuple[int, int],
        totals: Totals,
        over: Over,
    ) -> bool:
        """Count ``adding`` (messages, recipients) for ``values['login']`` unless the
        window's totals plus it are ``over``; True when counted. Raises DatabaseError
        once the retries are spent (or for any other error)."""
        lock = self.lock.bind(values)
        select = self.select.bind(values)
        update = self.update.bind(values)

        def work(conn: Any) -> bool:
            with conn.cursor() as cur:
                cur.execute(f"SET SESSION innodb_lock_wait_timeout = {self.lock_wait}")
                cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            conn.begin()
            try:
                with conn.cursor() as cur:
                    cur.execute(self.lock.sql, lock)
                    cur.execute(self.select.sql, select)
                    messages, recipients = totals(list(cur.fetchall()))
                    if over(messages + adding[0], recipients + adding[1]):
                        conn.rollback()
                        return False
                    cur.execute(self.update.sql, update)
                conn.commit()
                return True
            except BaseException:
                try:
                    conn.rollback()
                except Exception:  # noqa: BLE001, S110 - the connection may be gone
                    pass
                raise

        for attempt in range(self.retries + 1):
            try:
                counted: bool = await self.db.run(work, write=True)
                return counted
            except DatabaseError as e:
                if e.errno not in CONFLICT_ERRNOS or attempt >= self.retries:
                    raise
                self.conflicts += 1
                await self.sleep(RETRY_PAUSE * (2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")
