"""The change feed over a fake database: targeted drops from the log, a full flush when
a part of it was missed, no log (a version 2 schema) reported, the GTID wait bounded and
sliced, a read host without GTIDs never waited for."""

from __future__ import annotations

import asyncio
from typing import Any

from vmaild.changes import Drop, Scope
from vmaild.db import DatabaseError
from vmaild.invalidation import HOLES_QUERY, LOG_QUERY, POSITION_QUERY, WAIT_QUERY, ChangeFeed


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeLogDB:
    """The change log and the GTID position of one read host."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.log: list[tuple[int, str, str]] = []
        self.position = ""
        self.no_table = False
        self.no_gtid = False
        self.waits: list[tuple[str, float]] = []
        self.hole_reads: list[tuple[int, ...]] = []
        self.apply_after_waits: int | None = None  # the replica catches up then

    async def fetch(
        self, sql: str, params: tuple[Any, ...] = (), *, write: bool = False
    ) -> list[tuple[Any, ...]]:
        if sql == LOG_QUERY:
            if self.no_table:
                raise DatabaseError("(1146) Table doesn't exist", 1146, misfit=True)
            after, limit = params
            ids = [r[0] for r in self.log]
            lo, hi = (min(ids), max(ids)) if ids else (None, None)
            rows = [(lo, hi, *r) for r in self.log if r[0] > after][:limit]
            return rows or [(lo, hi, None, None, None)]
        if sql.startswith(HOLES_QUERY.split("(")[0]):
            self.hole_reads.append(tuple(params))
            return [r for r in self.log if r[0] in params]
        if sql == POSITION_QUERY:
            if self.no_gtid:
                raise DatabaseError("(1193) Unknown system variable", 1193, misfit=True)
            return [(self.position,)]
        if sql == WAIT_QUERY:
            gtid, seconds = params
            self.waits.append((gtid, seconds))
            self.clock.now += seconds
            if self.apply_after_waits is not None and len(self.waits) >= self.apply_after_waits:
                self.position = gtid
                return [(0,)]
            return [(-1,)]
        raise AssertionError(sql)


class Target:
    def __init__(self) -> None:
        self.drops: list[Drop] = []
        self.flushes: list[str] = []

    def drop(self, drop: Drop) -> int:
        self.drops.append(drop)
        return 1

    def flush_all(self, reason: str, label: str = "change") -> int:
        self.flushes.append(reason)
        return 10


def make(baseline: object = "log:0") -> tuple[ChangeFeed, FakeLogDB, Target, Clock]:
    clock = Clock()
    target = Target()
    return ChangeFeed(target, clock=clock, baseline=baseline), FakeLogDB(clock), target, clock


def test_poll_drops_what_the_log_names() -> None:
    feed, db, target, _ = make()
    db.log = [(1, "users", "a@d.test"), (2, "forwardings", "@d.test"), (3, "domains", "e.test")]
    assert asyncio.run(feed.poll(db)) is True
    assert target.drops == [
        Drop(Scope.ADDRESS, "a@d.test"),
        Drop(Scope.DOMAIN, "d.test"),
        Drop(Scope.DOMAIN, "e.test"),
    ]
    assert not target.flushes and feed.baseline() == "log:3"
    asyncio.run(feed.poll(db))
    assert len(target.drops) == 3  # nothing twice


def test_a_late_commit_below_the_newest_row_is_read_by_id() -> None:
    feed, db, target, clock = make("log:1")
    db.log = [(1, "users", "old@d.test"), (3, "users", "c@d.test"), (4, "users", "d@d.test")]
    asyncio.run(feed.poll(db))  # 2 taken, not committed yet
    assert [d.value for d in target.drops] == ["c@d.test", "d@d.test"]
    db.log.append((5, "users", "e@d.test"))
    asyncio.run(feed.poll(db))
    assert db.hole_reads == [(2,)] and feed.position.since() == 5
    db.log.insert(1, (2, "users", "b@d.test"))  # it commits
    asyncio.run(feed.poll(db))
    assert [d.value for d in target.drops] == ["c@d.test", "d@d.test", "e@d.test", "b@d.test"]
    assert feed.position.done == 5 and not feed.position.holes
    asyncio.run(feed.poll(db))
    assert len(db.hole_reads) == 2 and len(target.drops) == 4 and not target.flushes


def test_a_gap_is_one_full_flush_then_targeted_again() -> None:
    feed, db, target, _ = make("log:5")
    db.log = [(9, "users", "a@d.test")]  # 6..8 were pruned before this reader saw them
    asyncio.run(feed.poll(db))
    assert len(target.flushes) == 1 and "pruned" in target.flushes[0] and not target.drops
    db.log.append((10, "users", "b@d.test"))
    asyncio.run(feed.poll(db))
    assert target.drops == [Drop(Scope.ADDRESS, "b@d.test")] and len(target.flushes) == 1


def test_a_backlog_is_read_in_batches() -> None:
    feed, db, target, _ = make()
    db.log = [(i, "users", f"u{i}@d.test") for i in range(1, 2501)]
    asyncio.run(feed.poll(db))
    assert len(target.drops) == 2500 and feed.position.done == 2500


def test_no_change_log_is_reported() -> None:
    feed, db, target, _ = make()
    db.no_table = True
    assert asyncio.run(feed.poll(db)) is False and feed.has_log is False
    assert asyncio.run(feed.notified(db, "0-1-5", ["a@d.test"], 1.0)) is None
    assert len(feed.pending) == 0


def test_a_notification_applied_at_once_drops_at_once() -> None:
    feed, db, target, _ = make()
    db.position = "0-1-7"
    db.log = [(1, "users", "new@d.test")]
    assert asyncio.run(feed.notified(db, "0-1-7", ["new@d.test"], 5.0)) == (1, True)
    assert db.waits == [] and len(feed.pending) == 0


def test_a_lagging_read_host_is_waited_for_in_slices_then_left_pending() -> None:
    feed, db, target, clock = make()
    db.position = "0-1-3"
    result = asyncio.run(feed.notified(db, "0-1-7", ["new@d.test"], 3.0))
    assert result == (0, False)
    assert sum(s for _, s in db.waits) == 3.0 and all(s <= 1.0 for _, s in db.waits)
    assert feed.pending.holds_back("new@d.test", "")
    # The replica catches up: the next poll settles it and applies the log.
    db.position = "0-1-7"
    db.log = [(1, "users", "new@d.test")]
    asyncio.run(feed.poll(db))
    assert len(feed.pending) == 0 and target.drops == [Drop(Scope.ADDRESS, "new@d.test")]


def test_the_wait_ends_when_the_replica_applies_it() -> None:
    feed, db, _, _ = make()
    db.position = "0-1-3"
    db.apply_after_waits = 2
    assert asyncio.run(feed.notified(db, "0-1-7", None, 5.0)) == (0, True)
    assert len(db.waits) == 2


def test_a_read_host_without_gtids_is_not_waited_for() -> None:
    feed, db, target, _ = make()
    db.no_gtid = True
    db.log = [(1, "users", "a@d.test")]
    assert asyncio.run(feed.notified(db, "0-1-7", ["a@d.test"], 5.0)) == (1, True)
    assert db.waits == [] and not feed.gtids and len(feed.pending) == 0
    assert asyncio.run(feed.notified(db, "0-1-8", ["a@d.test"], 5.0)) == (0, True)
