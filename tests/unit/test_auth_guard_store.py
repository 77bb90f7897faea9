"""vmaild.auth.guard_store: the in-process store's counting rule, and the database store's
transaction handling (rollback, deadlock retry) over a fake connection. The SQL itself is
tested against MariaDB (tests/integration/test_guard.py)."""

from __future__ import annotations

from typing import Any

import pymysql  # type: ignore[import-untyped]
import pytest

from vmaild import config
from vmaild.auth.guard_rules import ADDRESS, LOGIN, PAIR, Rules, Subject
from vmaild.auth.guard_store import MemoryStore, _transaction

from .fakes_auth import aio
from .fakes_guard import BASE

NOW = 1_800_000_000.0
L = Subject(LOGIN, "alice@example.org")
P = Subject(PAIR, "203.0.113.7/32 alice@example.org")
ADDR = Subject(ADDRESS, "203.0.113.7/32")


def store(auth: str = "") -> MemoryStore:
    return MemoryStore(Rules(config.parse(BASE + auth).auth), 1000)


@aio
async def test_counts_grow_block_at_the_threshold_and_restart_after_the_window() -> None:
    s = store("block_pair_after = 3\nfail_window = 60\nblock_time = 30\n")
    started = []
    for i in range(4):
        got = await s.record([P, L], NOW + i)
        started.append(got[P][1])
        assert got[P][0].failures == i + 1 and got[L][0].failures == i + 1
    assert started == [False, False, True, False]  # the 3rd starts it; the 4th is inside
    assert (await s.read([P], NOW + 3))[P].blocked_until == NOW + 2 + 30
    # After the block, still in the window: the next failure starts the next block.
    got = await s.record([P], NOW + 40)
    assert got[P][0].failures == 5 and got[P][1]
    # 60 s without a failure: the count restarts; the read says 0 before that failure.
    assert (await s.read([P], NOW + 100))[P].failures == 0
    got = await s.record([P], NOW + 100)
    assert got[P][0].failures == 1 and not got[P][1]
    await s.clear([P])
    assert list(await s.read([P, L], NOW + 100)) == [L]


@aio
async def test_a_threshold_of_one_blocks_at_the_first_failure_and_zero_never() -> None:
    s = store("block_address_after = 1\nblock_login_after = 0\n")
    got = await s.record([ADDR, L], NOW)
    assert got[ADDR][1] and got[ADDR][0].blocked(NOW)
    for _ in range(100):
        got = await s.record([L], NOW)
    assert not got[L][1] and not got[L][0].blocked(NOW)


class FakeConn:
    """A pymysql connection whose statements fail as told, recording what happened."""

    def __init__(self, errors: list[BaseException | None]):
        self.errors = errors
        self.log: list[str] = []

    def cursor(self) -> FakeConn:
        return self

    def __enter__(self) -> FakeConn:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: Any = None) -> int:
        self.log.append(sql.split()[0])
        if sql.startswith("INSERT") and self.errors:
            error = self.errors.pop(0)
            if error is not None:
                raise error
        return 1

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [(0, 1, 2, 3, 4)]

    def begin(self) -> None:
        self.log.append("BEGIN")

    def commit(self) -> None:
        self.log.append("COMMIT")

    def rollback(self) -> None:
        self.log.append("ROLLBACK")


STATEMENTS: list[tuple[str, list[Any]]] = [("INSERT x", []), ("SELECT y", [])]


def test_a_deadlock_is_tried_again() -> None:
    deadlock = pymysql.err.OperationalError(1213, "Deadlock found")
    conn = FakeConn([deadlock, None])
    assert _transaction(conn, STATEMENTS) == [(0, 1, 2, 3, 4)]
    assert conn.log == [
        *("SET", "BEGIN", "INSERT", "ROLLBACK"),
        *("SET", "BEGIN", "INSERT", "SELECT", "COMMIT"),
    ]


def test_any_other_error_rolls_back_before_the_connection_goes_back() -> None:
    missing = pymysql.err.ProgrammingError(1146, "Table 'login_failures' doesn't exist")
    conn = FakeConn([missing])
    with pytest.raises(pymysql.err.ProgrammingError):
        _transaction(conn, STATEMENTS)
    assert conn.log == ["SET", "BEGIN", "INSERT", "ROLLBACK"]


def test_deadlocks_are_tried_three_times_at_most() -> None:
    deadlocks = [pymysql.err.OperationalError(1213, "Deadlock found") for _ in range(5)]
    conn = FakeConn(list(deadlocks))
    with pytest.raises(pymysql.err.OperationalError):
        _transaction(conn, STATEMENTS)
    assert conn.log.count("ROLLBACK") == 3
