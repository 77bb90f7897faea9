"""vmaild.auth.history: record() does no I/O; one batched upsert per flush however many
logins; the latest login wins; bounded; the database down keeps entries and logs once;
run() paces flushes by the interval; close() flushes."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
from typing import Any

import pytest

from tests.unit.fakes_auth import aio
from vmaild import config
from vmaild.auth import contract
from vmaild.auth import history as h
from vmaild.db import DatabaseError


def cfg(extra: str = "") -> config.Config:
    return config.parse(f"[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n[auth]\n{extra}")


class FakeDB:
    """Database.run: records each statement with its rows; can be down."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, list[Any]]] = []
        self.runs = 0
        self.down = False

    async def run(self, fn: Any, *, retry: bool = False, write: bool = False) -> Any:
        self.runs += 1
        await asyncio.sleep(0)
        if self.down:
            raise DatabaseError("(2003) Can't connect to MySQL server")
        return fn(self)

    def cursor(self) -> FakeDB:
        return self

    def __enter__(self) -> FakeDB:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: list[Any]) -> int:
        self.statements.append((sql, params))
        return len(params) // 4

    def rows(self) -> list[tuple[Any, ...]]:
        out = []
        for _, params in self.statements:
            out += [tuple(params[i : i + 4]) for i in range(0, len(params), 4)]
        return out


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make(extra: str = "") -> tuple[h.LoginHistory, FakeDB, Clock]:
    db, clock = FakeDB(), Clock()
    return h.LoginHistory(cfg(extra), db, clock), db, clock  # type: ignore[arg-type]


IP = ipaddress.ip_address("192.0.2.1")
IP6 = ipaddress.ip_address("2001:db8::7")


@aio
async def test_many_logins_one_statement_latest_wins() -> None:
    history, db, clock = make()
    for i in range(1000):
        clock.now += 1
        history.record("alice@example.test", "imap", IP if i % 2 else IP6)
        history.record("bob@example.test", "smtp", None)
    assert db.runs == 0  # record() did no I/O
    assert len(history) == 2
    assert await history.flush()
    assert db.runs == 1 and len(db.statements) == 1
    sql, _ = db.statements[0]
    assert sql.startswith("INSERT INTO login_history") and "ON DUPLICATE KEY UPDATE" in sql
    assert "GREATEST(last_at" in sql
    assert db.rows() == [
        ("alice@example.test", "imap", int(clock.now), "192.0.2.1"),
        ("bob@example.test", "smtp", int(clock.now), None),
    ]
    assert len(history) == 0
    assert await history.flush()  # nothing pending: no statement
    assert db.runs == 1


@aio
async def test_large_flushes_are_chunked_statements_in_one_job() -> None:
    history, db, _ = make()
    for i in range(h.CHUNK * 2 + 1):
        history.record(f"u{i}@example.test", "pop3", None)
    assert await history.flush()
    assert db.runs == 1
    assert [len(p) // 4 for _, p in db.statements] == [h.CHUNK, h.CHUNK, 1]


@aio
async def test_pending_entries_are_bounded() -> None:
    history, db, _ = make("history_pending = 3\n")
    for i in range(10):
        history.record(f"u{i}@example.test", "imap", None)
    assert len(history) == 3 and history.dropped == 7
    await history.flush()
    assert [r[0] for r in db.rows()] == ["u7@example.test", "u8@example.test", "u9@example.test"]


@aio
async def test_database_down_keeps_entries_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "vmaild")
    history, db, clock = make()
    history.record("alice@example.test", "imap", IP)
    db.down = True
    assert not await history.flush()
    assert not await history.flush()
    assert len(history) == 1
    # A login while down replaces the kept entry; an old one never overwrites a newer.
    clock.now += 30
    history.record("alice@example.test", "imap", IP6)
    assert not await history.flush()
    warnings = [r for r in caplog.records if "login history not written" in r.getMessage()]
    assert len(warnings) == 1
    db.down = False
    assert await history.flush()
    assert db.rows() == [("alice@example.test", "imap", int(clock.now), "2001:db8::7")]
    assert any("written again" in r.getMessage() for r in caplog.records)


@aio
async def test_run_flushes_once_per_interval_and_close_flushes() -> None:
    db, clock = FakeDB(), Clock()
    sleeps: list[float] = []
    gate: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await gate.get()

    history = h.LoginHistory(cfg("history_interval = 60\n"), db, clock, sleep=sleep)  # type: ignore[arg-type]
    task = asyncio.create_task(history.run())
    for round_ in range(3):
        for _ in range(100):
            history.record("alice@example.test", "imap", IP)
        await asyncio.sleep(0)
        assert db.runs == round_  # nothing written until the interval is over
        gate.put_nowait(None)
        for _ in range(5):
            await asyncio.sleep(0)
        assert db.runs == round_ + 1
    assert sleeps[:3] == [60.0, 60.0, 60.0]
    history.record("bob@example.test", "smtp", None)
    await history.close()
    gate.put_nowait(None)
    await asyncio.wait_for(task, 5)
    assert db.runs == 4
    assert db.rows()[-1][:2] == ("bob@example.test", "smtp")


def test_record_ignores_unusable_names() -> None:
    history, _, _ = make()
    history.record("", "imap", None)
    history.record("x" * 300, "imap", None)
    history.record("a@b", "s" * 100, None)
    assert list(history._pending) == [("a@b", "s" * h.MAX_SERVICE)]


def test_the_interval_is_configured() -> None:
    assert cfg().auth.history_interval == 60.0
    with pytest.raises(config.ConfigError):
        cfg("history_interval = 0\n")


@aio
async def test_start_and_close_end_the_loop_and_flush() -> None:
    db, clock = FakeDB(), Clock()
    history = h.LoginHistory(cfg(), db, clock)  # type: ignore[arg-type]
    task = history.start()
    assert history.start() is task
    history.record("alice@example.test", "imap", IP)
    await asyncio.sleep(0)
    assert db.runs == 0  # the real interval (60 s) has not passed
    await history.close()
    assert task.done() and db.runs == 1
    assert db.rows()[0][:2] == ("alice@example.test", "imap")


def test_implements_the_contract() -> None:
    theirs = inspect.signature(contract.LoginRecorder.record)
    assert inspect.signature(h.LoginHistory.record) == theirs
