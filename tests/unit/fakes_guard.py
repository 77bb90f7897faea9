"""Fakes for the brute-force guard's unit tests: a clock the test moves, and a store with
the real counting rule (guard_store.MemoryStore) that counts its calls and can be made to
fail like a database that does not answer."""

from __future__ import annotations

from collections.abc import Sequence

from vmaild import config
from vmaild.auth.guard import Guard
from vmaild.auth.guard_rules import Rules, Subject, Tally
from vmaild.auth.guard_store import MemoryStore
from vmaild.db import DatabaseError
from vmaild.metrics import Metrics

BASE = "[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\nretry_interval = 10\n[auth]\n"


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeStore:
    """MemoryStore's rule, with calls counted; ``error`` set: every call raises it."""

    def __init__(self, rules: Rules):
        self.inner = MemoryStore(rules, 100_000)
        self.reads = 0
        self.records = 0
        self.clears: list[list[Subject]] = []
        self.error: Exception | None = None

    def _call(self) -> None:
        if self.error is not None:
            raise self.error

    async def read(self, subjects: Sequence[Subject], now: float) -> dict[Subject, Tally]:
        self._call()
        self.reads += 1
        return await self.inner.read(subjects, now)

    async def record(
        self, subjects: Sequence[Subject], now: float
    ) -> dict[Subject, tuple[Tally, bool]]:
        self._call()
        self.records += 1
        return await self.inner.record(subjects, now)

    async def clear(self, subjects: Sequence[Subject]) -> None:
        self._call()
        self.clears.append(list(subjects))
        await self.inner.clear(subjects)


def down() -> DatabaseError:
    return DatabaseError("no database host answered: 127.0.0.1:3306: refused", 2003)


def make_guard(auth: str = "") -> tuple[Guard, FakeStore, FakeClock, Metrics]:
    cfg = config.parse(BASE + auth)
    clock = FakeClock()
    metrics = Metrics()
    rules = Rules(cfg.auth)
    store = FakeStore(rules)
    return Guard(cfg, None, metrics, clock, store=store), store, clock, metrics
