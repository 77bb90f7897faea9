"""Where the brute-force guard keeps its counts: the database, or this process.

:class:`DbStore` keeps them in ``login_failures`` (ctl/schema.py), one row per
(kind, subject), so that every vmaild host on the database sees the same counts.
:class:`MemoryStore` keeps them in a bounded dict, with the same rule; the guard uses it
while the database (or the table) does not answer.

The rule both apply to each subject a failure is counted under:

- the count restarts at 1 when the last failure is ``window`` seconds old or older
  (``first_at`` then restarts too), otherwise it grows by one;
- when the count reaches the kind's threshold and no block is active, a block starts:
  ``blocked_until = now + block_time``. Failures during a block do not extend it; the
  first failure after it ends, with the count still at or over the threshold, starts the
  next one.

In the database one failure is one transaction: one multi-row ``INSERT ... ON DUPLICATE KEY
UPDATE`` (each row's increment is atomic, so failures arriving at once from several hosts
are all counted) and one ``SELECT`` of the same rows, which still holds the values this
very upsert left (its row locks last until the commit). The upsert copies
``blocked_until`` to ``blocked_before`` before changing it, so exactly one failure sees a
block start (the two differ), even when failures on several hosts share a millisecond,
and only that host logs the block. A deadlock between two such transactions is retried.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import pymysql  # type: ignore[import-untyped]  # pymysql ships no type hints

from ..db import Database, errno_of
from .guard_rules import Rules, Subject, Tally

TABLE = "login_failures"
# Lock wait timeout, deadlock: the transaction was rolled back and may simply run again.
_RETRY_ERRNOS = frozenset({1205, 1213})
_ATTEMPTS = 3
# Rows whose window and block are both over are deleted after a failure, at most this
# often per host and this many at a time (the last_at index finds them).
PRUNE_SECONDS = 60.0
PRUNE_ROWS = 5000


class Store(Protocol):
    async def read(self, subjects: Sequence[Subject], now: float) -> dict[Subject, Tally]:
        """The counts of ``subjects`` (absent: never failed), failures 0 once expired."""
        ...

    async def record(
        self, subjects: Sequence[Subject], now: float
    ) -> dict[Subject, tuple[Tally, bool]]:
        """Count one failure under each subject; per subject its new count and whether
        this failure started a block."""
        ...

    async def clear(self, subjects: Sequence[Subject]) -> None:
        """Forget these subjects' failures (a success)."""
        ...


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


class MemoryStore:
    """The counts of this process only, at most ``max_entries`` subjects (least recently
    failed forgotten first)."""

    def __init__(self, rules: Rules, max_entries: int):
        self.rules = rules
        self.max_entries = max(1, max_entries)
        # subject -> [failures, first_at, last_at, blocked_until]
        self._rows: OrderedDict[Subject, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    async def read(self, subjects: Sequence[Subject], now: float) -> dict[Subject, Tally]:
        found = {}
        for s in subjects:
            row = self._rows.get(s)
            if row is not None:
                found[s] = self.rules.counted(Tally(int(row[0]), row[2], row[3]), now)
        return found

    async def record(
        self, subjects: Sequence[Subject], now: float
    ) -> dict[Subject, tuple[Tally, bool]]:
        out = {}
        window = self.rules.window
        for s in subjects:
            row = self._rows.get(s)
            if row is None:
                row = self._rows[s] = [0, now, now, 0.0]
            if row[0] == 0 or row[2] <= now - window:
                row[0], row[1] = 1, now
            else:
                row[0] += 1
            threshold = self.rules.threshold(s.kind)
            started = 0 < threshold <= row[0] and row[3] <= now
            if started:
                row[3] = now + self.rules.block_time
            row[2] = now
            self._rows.move_to_end(s)
            out[s] = (Tally(int(row[0]), row[2], row[3]), started)
        while len(self._rows) > self.max_entries:
            self._rows.popitem(last=False)
        return out

    async def clear(self, subjects: Sequence[Subject]) -> None:
        for s in subjects:
            self._rows.pop(s, None)


class DbStore:
    """The counts in ``login_failures``, shared by every host on the database."""

    def __init__(self, rules: Rules, db: Database):
        self.rules = rules
        self.db = db
        self._next_prune = 0.0

    async def read(self, subjects: Sequence[Subject], now: float) -> dict[Subject, Tally]:
        if not subjects:
            return {}
        sql, params = _select(subjects, "failures, last_at, blocked_until")
        rows = await self.db.fetch(sql, params)
        return {
            subjects[int(i)]: self.rules.counted(Tally(int(n), last / 1000, until / 1000), now)
            for i, n, last, until in rows
        }

    async def record(
        self, subjects: Sequence[Subject], now: float
    ) -> dict[Subject, tuple[Tally, bool]]:
        now_ms = _ms(now)
        until_ms = now_ms + _ms(self.rules.block_time)
        cut_ms = now_ms - _ms(self.rules.window)
        upsert, params = self._upsert(subjects, now_ms, until_ms, cut_ms)
        select, sparams = _select(subjects, "failures, last_at, blocked_until, blocked_before")
        prune = now >= self._next_prune
        if prune:
            self._next_prune = now + PRUNE_SECONDS

        def work(conn: pymysql.connections.Connection) -> list[tuple[Any, ...]]:
            rows = _transaction(conn, [(upsert, params), (select, sparams)])
            if prune:
                with conn.cursor() as cur:
                    cur.execute(
                        f"DELETE FROM {TABLE} WHERE last_at <= %s AND blocked_until <= %s "
                        f"LIMIT {PRUNE_ROWS}",
                        (cut_ms, now_ms),
                    )
            return rows

        rows = await self.db.run(work, write=True)
        out = {}
        for i, n, last, until, before in rows:
            out[subjects[int(i)]] = (Tally(int(n), last / 1000, until / 1000), until != before)
        return out

    def _upsert(
        self, subjects: Sequence[Subject], now_ms: int, until_ms: int, cut_ms: int
    ) -> tuple[str, list[Any]]:
        """The one statement counting a failure under every subject. Assignments run left
        to right and later ones see earlier results (MySQL and MariaDB alike), so
        ``first_at`` and ``failures`` read the old ``last_at``, ``blocked_before`` keeps
        the old ``blocked_until``, which then reads the new ``failures``, and ``last_at``
        is set last."""
        values: list[str] = []
        params: list[Any] = []
        for s in subjects:
            threshold = self.rules.threshold(s.kind)
            values.append("(%s, %s, 1, %s, %s, %s)")
            params += [s.kind, s.name, now_ms, now_ms, until_ms if threshold == 1 else 0]
        r = self.rules
        threshold_sql = "CASE kind WHEN 'address' THEN %s WHEN 'pair' THEN %s ELSE %s END"
        thresholds = [r.threshold("address"), r.threshold("pair"), r.threshold("login")]
        sql = (
            f"INSERT INTO {TABLE} (kind, subject, failures, first_at, last_at, blocked_until) "
            f"VALUES {', '.join(values)} ON DUPLICATE KEY UPDATE "
            "first_at = IF(last_at <= %s OR failures = 0, VALUES(first_at), first_at), "
            "failures = IF(last_at <= %s OR failures = 0, 1, failures + 1), "
            "blocked_before = blocked_until, "
            f"blocked_until = IF(blocked_until <= %s AND ({threshold_sql}) > 0 "
            f"AND failures >= ({threshold_sql}), %s, blocked_until), "
            "last_at = VALUES(last_at)"
        )
        params += [cut_ms, cut_ms, now_ms, *thresholds, *thresholds, until_ms]
        return sql, params

    async def clear(self, subjects: Sequence[Subject]) -> None:
        if not subjects:
            return
        where = " OR ".join("(kind = %s AND subject = %s)" for _ in subjects)
        params: list[Any] = []
        for s in subjects:
            params += [s.kind, s.name]
        await self.db.execute(f"DELETE FROM {TABLE} WHERE {where}", params)


def _transaction(
    conn: pymysql.connections.Connection, statements: list[tuple[str, list[Any]]]
) -> list[tuple[Any, ...]]:
    """Run ``statements`` in one READ COMMITTED transaction (no gap locks: concurrent
    inserts of new subjects do not deadlock each other) and return the last one's rows.
    Rolled back on any error, so the pooled connection never goes back mid-transaction;
    a deadlock or lock wait timeout is tried again."""
    for attempt in range(_ATTEMPTS):
        try:
            with conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                conn.begin()
                rows: list[tuple[Any, ...]] = []
                for sql, params in statements:
                    cur.execute(sql, tuple(params))
                    rows = list(cur.fetchall())
            conn.commit()
            return rows
        except BaseException as e:
            with contextlib.suppress(Exception):
                conn.rollback()
            if errno_of(e) in _RETRY_ERRNOS and attempt + 1 < _ATTEMPTS:
                continue
            raise
    raise AssertionError("unreachable")


def _select(subjects: Sequence[Subject], columns: str) -> tuple[str, list[Any]]:
    """One primary-key lookup per subject, tagged with its index: the tag maps rows back to
    subjects exactly (the column's collation matches spellings Python would tell apart)."""
    sql = " UNION ALL ".join(
        f"SELECT {i}, {columns} FROM {TABLE} WHERE kind = %s AND subject = %s"
        for i in range(len(subjects))
    )
    params: list[Any] = []
    for s in subjects:
        params += [s.kind, s.name]
    return sql, params
