"""Targeted cache invalidation from the change log, and read-your-writes with GTIDs.

``ChangeFeed`` reads ``vmaild_change_log`` on the read host (every ``check_interval``, and
at once when vmailctl notifies a change) and drops only the cache entries the logged keys
affect (changes.py has the rules). Reading the log on the host the lookups read from is
consistent by construction: a log row and the change it records are one transaction, so
they reach a replica together; an entry is dropped only once the new rows are readable
there, and never re-read from a state older than the change.

A notification carries the commit's GTID (servers/control.py). Before reading the log,
the feed waits, at most ``[cache] gtid_wait`` seconds, for the read host to apply it. If it
has not by then, the cached entries stay (the old answers) and the polls go on looking;
meanwhile "not found" for the notified keys is a temporary failure (pending.py).

Without a change log (a version 2 schema before ``vmailctl db migrate``) ``poll`` and
``notified`` say so and the daemon keeps the version counter's whole-cache flushes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .changes import BATCH, Batch, Drop, LogPosition, Scope, drops_for
from .db import DatabaseError
from .pending import PendingChanges

log = logging.getLogger("vmaild.changes")

LOG_QUERY = (
    "SELECT m.lo, m.hi, l.id, l.tbl, l.change_key "
    "FROM (SELECT MIN(id) AS lo, MAX(id) AS hi FROM vmaild_change_log) AS m "
    "LEFT JOIN vmaild_change_log AS l ON l.id > %s ORDER BY l.id LIMIT %s"
)
HOLES_QUERY = "SELECT id, tbl, change_key FROM vmaild_change_log WHERE id IN ({})"
# The newest row is always kept: the reader tells "pruned past me" from the smallest id.
PRUNE_QUERY = (
    "DELETE FROM vmaild_change_log WHERE changed_at < NOW(6) - INTERVAL %s SECOND "
    "AND id < (SELECT hi FROM (SELECT MAX(id) AS hi FROM vmaild_change_log) AS t) "
    "LIMIT 10000"
)
POSITION_QUERY = "SELECT @@gtid_current_pos"
WAIT_QUERY = "SELECT MASTER_GTID_WAIT(%s, %s)"
NO_TABLE = (1146, 1054)  # no such table / column: a schema before the change log
NO_GTID = (1193, 1305)  # unknown system variable / function: not MariaDB
MAX_BATCHES = 10  # per poll; a backlog larger than this is read over the next polls
PRUNE_SECONDS = 300.0


class Reader(Protocol):
    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


class Writer(Protocol):
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...


class Target(Protocol):
    """What the feed drops from: the daemon's cache (and the login rows)."""

    def drop(self, drop: Drop) -> int: ...

    def flush_all(self, reason: str, label: str = "change") -> int: ...


class ChangeFeed:
    def __init__(
        self,
        target: Target,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
        baseline: object = None,
    ):
        self.target = target
        self.metrics = metrics
        self.clock = clock
        self.position = LogPosition.from_baseline(baseline)
        self.pending = PendingChanges(clock)
        self.has_log: bool | None = None  # None: not known yet
        self.gtids = True  # False once the read host turned out not to know GTIDs
        self.dropped = 0  # entries dropped by targeted drops and flushes, in all
        self._lock = asyncio.Lock()
        self._last_prune = clock()

    def baseline(self) -> str | None:
        return self.position.baseline()

    # -- polling -------------------------------------------------------------------------

    async def poll(self, db: Reader) -> bool:
        """Apply what the log holds past the position. False: there is no change log."""
        await self._settle_pending(db)
        async with self._lock:
            for _ in range(MAX_BATCHES):
                try:
                    batch, full = await self._read(db)
                except DatabaseError as e:
                    if e.errno in NO_TABLE:
                        if self.has_log is not False:
                            log.info("no change log (%s): polling the version counter", e)
                        self.has_log = False
                        return False
                    raise
                self.has_log = True
                self._apply(batch)
                if not full:
                    break
        return True

    async def _read(self, db: Reader) -> tuple[Batch, bool]:
        holes = self.position.open_holes()
        late: list[tuple[int, str, str]] = []
        if holes:
            # Transactions that took their ids before others committed: asked for by id.
            sql = HOLES_QUERY.format(", ".join(["%s"] * len(holes)))
            late = [(int(i), _text(t), _text(k)) for i, t, k in await db.fetch(sql, holes)]
        rows = await db.fetch(LOG_QUERY, (self.position.since(), BATCH))
        lowest = highest = None
        fresh: list[tuple[int, str, str]] = []
        for lo, hi, row_id, table, key in rows:
            lowest, highest = _int(lo), _int(hi)
            if row_id is not None:
                fresh.append((int(row_id), _text(table), _text(key)))
        changes = sorted(late + fresh)
        batch = self.position.advance(lowest, highest, changes, self.clock())
        return batch, len(fresh) >= BATCH

    def _apply(self, batch: Batch) -> int:
        if batch.full_flush:
            label = "start" if batch.start else "change"
            n = self.target.flush_all(f"{label}: {batch.reason}", label)
            self.dropped += n
            return n
        dropped = 0
        for table, key in batch.changes:
            drop = drops_for(table, key)
            if drop.scope is Scope.ALL:
                dropped += self.target.flush_all(f"change: an empty key in {table}")
                continue
            n = self.target.drop(drop)
            dropped += n
            if self.metrics is not None:
                self.metrics.cache_drops.labels(drop.scope.value).inc()
                self.metrics.cache_dropped_entries.inc(n)
        if batch.changes:
            log.debug("change log: %d keys, %d entries dropped", len(batch.changes), dropped)
        self.dropped += dropped
        return dropped

    # -- notifications (read-your-writes) --------------------------------------------------

    async def notified(
        self, db: Reader, gtid: str | None, keys: list[str] | None, wait: float
    ) -> tuple[int, bool] | None:
        """vmailctl committed a change (``gtid``, or None without binary log) to ``keys``
        (None: unknown). Waits for the read host to apply it, then reads the log. Returns
        (entries dropped, applied), or None when there is no change log."""
        applied = True
        if gtid and self.gtids:
            self.pending.add(gtid, keys)
            self._report_pending()
            applied = await self._wait_for(db, gtid, wait)
            log.debug(
                "change notification: GTID %s %s on the read host",
                gtid,
                "applied" if applied else f"not applied within {wait:g}s",
            )
        before = self.dropped
        if not await self.poll(db):
            self.pending.clear()
            self._report_pending()
            return None
        return self.dropped - before, applied

    async def _wait_for(self, db: Reader, gtid: str, wait: float) -> bool:
        """Whether the read host has applied ``gtid`` within ``wait`` seconds. The wait
        runs in slices shorter than the query timeout, so that a lagging replica is not
        mistaken for a dead connection."""
        deadline = self.clock() + wait
        slice_seconds = max(0.1, getattr(getattr(db, "cfg", None), "query_timeout", 2.0) / 2)
        while True:
            if not await self._settle_pending(db) or gtid not in self.pending.gtids():
                return True
            left = deadline - self.clock()
            if left <= 0:
                return False
            try:
                await db.fetch(WAIT_QUERY, (gtid, round(min(left, slice_seconds), 3)))
            except DatabaseError as e:
                log.warning("waiting for GTID %s on the read host failed: %s", gtid, e)
                return False

    async def _settle_pending(self, db: Reader) -> int:
        """Forget the pending changes the read host has applied; how many are left."""
        if not len(self.pending):
            return 0
        try:
            rows = await db.fetch(POSITION_QUERY)
        except DatabaseError as e:
            if e.errno in NO_GTID:
                log.info("the read host knows no GTIDs (%s): notifications are not waited for", e)
                self.gtids = False
                self.pending.clear()
                self._report_pending()
                return 0
            return len(self.pending)
        position = str(rows[0][0] or "") if rows else ""
        left = self.pending.settle(position)
        self._report_pending()
        return left

    def _report_pending(self) -> None:
        if self.metrics is not None:
            self.metrics.changes_pending.set(len(self.pending))

    # -- pruning ---------------------------------------------------------------------------

    async def maybe_prune(self, db: Writer, retention: float) -> None:
        """Delete rows older than ``retention`` (at most 10,000 per statement, every
        PRUNE_SECONDS). On the writer: every vmaild does it, which is idempotent."""
        now = self.clock()
        if not self.has_log or now - self._last_prune < PRUNE_SECONDS:
            return
        self._last_prune = now
        try:
            n = await db.execute(PRUNE_QUERY, (int(retention),))
        except DatabaseError as e:
            log.warning("pruning the change log failed: %s", e)
            return
        if n:
            log.debug("change log: %d old rows pruned", n)


def _int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)
