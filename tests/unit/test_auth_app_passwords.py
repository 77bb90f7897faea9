"""vmaild.auth.app_passwords: one query per login, services, expiry, networks, the
unknown client, constant-time comparison of every row, last_used_at throttled and in the
background, database errors propagated."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.unit.fakes_auth import aio
from vmaild import config
from vmaild.auth import app_passwords as ap
from vmaild.auth import app_secrets, contract
from vmaild.auth.accounts import Account
from vmaild.db import DatabaseError
from vmaild.metrics import Metrics

CFG = config.parse("[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n")
ALICE = Account("alice@example.test", "x", "/home/vmail", "example.test/alice/", 5000, 5000)
SECRET = "kq7rt-mw2xa-b5nzc-h3pde"
OTHER = "aaaaa-bbbbb-ccccc-ddddd"
ip = ipaddress.ip_address


@dataclass
class Row:
    id: int
    email: str
    secret: str
    services: str = "imap,pop3,smtp"
    networks: str | None = None
    expired: bool = False


@dataclass
class FakeAppDB:
    """Database.run with the app_passwords table filtered as QUERY does (expiry is the
    database's), and Database.execute for the last_used_at update."""

    rows: list[Row] = field(default_factory=list)
    down: bool = False
    queries: list[tuple[str, Any]] = field(default_factory=list)
    touches: list[int] = field(default_factory=list)
    touch_error: bool = False

    async def run(self, fn: Any, *, retry: bool = False, write: bool = False) -> Any:
        await asyncio.sleep(0)
        if self.down:
            raise DatabaseError("(2003) Can't connect to MySQL server")
        return fn(_Conn(self))

    def select(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        assert sql == ap.QUERY
        self.queries.append((sql, params))
        email, service = params
        return [
            (r.id, app_secrets.digest(r.secret), r.networks)
            for r in self.rows
            if r.email.lower() == email.lower()
            and service in r.services.split(",")
            and not r.expired
        ]

    async def execute(self, sql: str, params: Any = ()) -> int:
        assert sql == ap.TOUCH
        await asyncio.sleep(0)
        if self.touch_error:
            raise DatabaseError("(2013) Lost connection")
        self.touches.append(params[0])
        return 1


class _Conn:
    def __init__(self, db: FakeAppDB):
        self.db = db
        self._rows: list[tuple[Any, ...]] = []

    def cursor(self) -> _Conn:
        return self

    def __enter__(self) -> _Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: Any) -> int:
        self._rows = self.db.select(sql, params)
        return len(self._rows)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(*rows: Row) -> tuple[ap.AppPasswords, FakeAppDB, Clock, Metrics]:
    db = FakeAppDB(list(rows))
    clock = Clock()
    metrics = Metrics()
    return ap.AppPasswords(CFG, db, metrics, clock), db, clock, metrics  # type: ignore[arg-type]


@aio
async def test_a_valid_app_password_matches_with_one_query() -> None:
    checker, db, _, metrics = make(Row(1, "alice@example.test", SECRET))
    assert await checker.matches(ALICE, "imap", None, SECRET)
    assert await checker.matches(ALICE, "smtp", ip("192.0.2.1"), SECRET.upper())
    assert len(db.queries) == 2
    assert db.queries[0][1] == ("alice@example.test", "imap")
    assert metrics.app_password_checks.labels("ok")._value.get() == 2
    await checker.close()


@aio
async def test_wrong_secret_other_account_or_shape_do_not_match() -> None:
    checker, db, _, metrics = make(Row(1, "bob@example.test", SECRET))
    assert not await checker.matches(ALICE, "imap", None, SECRET)  # bob's, not alice's
    assert not await checker.matches(ALICE, "imap", None, OTHER)
    assert len(db.queries) == 2
    # Not the shape, or no such service: no query at all.
    assert not await checker.matches(ALICE, "imap", None, "her-main-password")
    assert not await checker.matches(ALICE, "webmail", None, SECRET)
    assert len(db.queries) == 2
    assert metrics.app_password_checks.labels("fail")._value.get() == 2
    assert db.touches == []


@aio
async def test_services_and_expiry_are_the_query_s() -> None:
    checker, db, _, _ = make(
        Row(1, "alice@example.test", SECRET, services="smtp"),
        Row(2, "alice@example.test", OTHER, expired=True),
    )
    assert await checker.matches(ALICE, "smtp", None, SECRET)
    assert not await checker.matches(ALICE, "imap", None, SECRET)
    assert not await checker.matches(ALICE, "pop3", None, SECRET)
    assert not await checker.matches(ALICE, "smtp", None, OTHER)
    await checker.close()


@pytest.mark.parametrize(
    ("networks", "client", "ok"),
    [
        (None, None, True),
        ("", ip("203.0.113.5"), True),
        ("192.0.2.0/24", ip("192.0.2.77"), True),
        ("192.0.2.0/24", ip("::ffff:192.0.2.77"), True),
        ("192.0.2.0/24,2001:db8::/48", ip("2001:db8::1"), True),
        ("192.0.2.0/24", ip("198.51.100.1"), False),
        # Restricted and the address unknown (Courier's authpipe): refused.
        ("192.0.2.0/24", None, False),
        # A hand-typed bad column fails closed.
        ("192.0.2.0/24,bogus", ip("192.0.2.77"), False),
    ],
)
def test_networks(networks: str | None, client: Any, ok: bool) -> None:
    async def run() -> None:
        checker, _, _, _ = make(Row(1, "alice@example.test", SECRET, networks=networks))
        assert await checker.matches(ALICE, "smtp", client, SECRET) is ok
        await checker.close()

    asyncio.run(run())


@aio
async def test_every_row_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = ap.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(a)
        return real(a, b)

    monkeypatch.setattr(ap.hmac, "compare_digest", counting)
    rows = [Row(i, "alice@example.test", app_secrets.generate()) for i in range(1, 5)]
    checker, _, _, _ = make(*rows)
    assert await checker.matches(ALICE, "imap", None, rows[0].secret)
    assert len(calls) == 4  # the match came first; the rest were compared all the same
    await checker.close()


@aio
async def test_last_used_is_bumped_at_most_once_a_minute_in_the_background() -> None:
    checker, db, clock, _ = make(Row(7, "alice@example.test", SECRET))
    for _ in range(50):
        assert await checker.matches(ALICE, "imap", None, SECRET)
    await checker.close()
    assert db.touches == [7]
    clock.now += 59
    assert await checker.matches(ALICE, "imap", None, SECRET)
    await checker.close()
    assert db.touches == [7]
    clock.now += 2
    assert await checker.matches(ALICE, "imap", None, SECRET)
    await checker.close()
    assert db.touches == [7, 7]


@aio
async def test_a_failing_touch_never_fails_the_login(caplog: pytest.LogCaptureFixture) -> None:
    checker, db, clock, _ = make(Row(7, "alice@example.test", SECRET))
    db.touch_error = True
    for _ in range(3):
        assert await checker.matches(ALICE, "imap", None, SECRET)
        clock.now += 61
        await checker.close()
    assert db.touches == []
    # Logged once a minute at most: the clock moved 61 s between tries.
    assert len([r for r in caplog.records if "last-used" in r.getMessage()]) == 3


@aio
async def test_a_database_error_propagates() -> None:
    checker, db, _, _ = make(Row(1, "alice@example.test", SECRET))
    db.down = True
    with pytest.raises(DatabaseError):
        await checker.matches(ALICE, "imap", None, SECRET)
    assert not await checker.matches(ALICE, "imap", None, "not-an-app-password")


def test_looks_like_app_password_is_exposed() -> None:
    assert ap.AppPasswords.looks_like_app_password(SECRET)
    assert not ap.AppPasswords.looks_like_app_password("hunter2")


def test_implements_the_contract() -> None:
    theirs = inspect.signature(contract.AppPasswordChecker.matches)
    assert inspect.signature(ap.AppPasswords.matches) == theirs
