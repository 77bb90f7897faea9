"""vmaild.auth.accounts: rows read by column name, defaults, the reply fields."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.fakes_auth import FakeDB, aio
from vmaild import config
from vmaild.auth.accounts import (
    Account,
    AccountError,
    AccountSource,
    _union,
    account_from_row,
    default_maildir,
)
from vmaild.codec.authpipe import reply_account
from vmaild.db import DatabaseError

CFG = config.parse("[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n")


def test_the_seed_layout_by_default() -> None:
    a = account_from_row({"address": "sales@raecoo.com", "password": "abcdefghijklm"}, CFG)
    assert a == Account(
        "sales@raecoo.com", "abcdefghijklm", "/home/vmail", "raecoo.com/sales/", 5000, 5000
    )
    assert a.active
    assert a.maildir_path() == "/home/vmail/raecoo.com/sales"
    assert reply_account(a.fields()) == (
        b"UID=5000\nGID=5000\nHOME=/home/vmail\nADDRESS=sales@raecoo.com\n"
        b"MAILDIR=raecoo.com/sales/\n.\n"
    )


def test_every_known_column() -> None:
    row = {
        "address": "joe@example.test",
        "password": "x",
        "home": "/srv/mail",
        "maildir": "/srv/mail/joe/Maildir",
        "uid": 6000,
        "gid": "6001",
        "quota": "1000000S",
        "name": "Joe User",
        "options": "disableimap=0",
        "active": 1,
    }
    a = account_from_row(row, CFG)
    assert dict(a.fields()) == {
        "UID": "6000",
        "GID": "6001",
        "HOME": "/srv/mail",
        "ADDRESS": "joe@example.test",
        "MAILDIR": "/srv/mail/joe/Maildir",
        "NAME": "Joe User",
        "QUOTA": "1000000S",
        "OPTIONS": "disableimap=0",
    }
    assert a.maildir_path() == "/srv/mail/joe/Maildir"


@pytest.mark.parametrize(
    ("row", "quota"),
    [
        ({"quota_bytes": 1000000, "quota_messages": 0}, "1000000S"),
        ({"quota_bytes": 0, "quota_messages": 500}, "500C"),
        ({"quota_bytes": 10, "quota_messages": 5}, "10S,5C"),
        ({"quota_bytes": 0, "quota_messages": 0}, ""),
        ({"quota_bytes": None}, ""),
        ({"quota": "1000S,10C"}, "1000S,10C"),
        ({"quota": "2048"}, "2048S"),
        ({"quota": ""}, ""),
        ({"quota": "lots"}, ""),
    ],
)
def test_quota(row: dict[str, object], quota: str) -> None:
    a = account_from_row({"address": "a@b.c", **row}, CFG)
    assert a.quota == quota
    assert ("QUOTA" in dict(a.fields())) is bool(quota)


@pytest.mark.parametrize(
    ("value", "active"),
    [
        (1, True),
        (0, False),
        (None, True),
        (b"\x00", False),
        (b"\x01", True),
        ("0", False),
        ("1", True),
    ],
)
def test_active(value: object, active: bool) -> None:
    assert account_from_row({"address": "a@b.c", "active": value}, CFG).active is active


def test_unsafe_values() -> None:
    a = account_from_row({"address": "a@b.c", "name": "Evil\nUID=0"}, CFG)
    assert a.name == ""  # dropped, never sent
    with pytest.raises(AccountError):
        account_from_row({"address": "a@b.c", "uid": 0}, CFG)
    with pytest.raises(AccountError):
        account_from_row({"address": "a@b.c", "gid": "root"}, CFG)
    with pytest.raises(AccountError):
        account_from_row({"password": "x"}, CFG)
    with pytest.raises(AccountError):
        account_from_row({"address": "a@b.c", "maildir": "x\ny"}, CFG)


def test_bytes_columns_and_mailbox_section() -> None:
    cfg = config.parse(
        "[database]\nhosts = h\nuser = u\ndbname = d\n"
        "[mailbox]\nbase = /var/mail/v\nuid = 7000\ngid = 7001\n"
    )
    a = account_from_row({"address": b"joe@example.test", "maildir": None}, cfg)
    assert (a.home, a.uid, a.gid, a.maildir) == ("/var/mail/v", 7000, 7001, "example.test/joe/")


def test_default_maildir() -> None:
    assert default_maildir("joe@example.test") == "example.test/joe/"
    assert default_maildir("a@b@c") == "c/a@b/"
    assert default_maildir("joe") == "joe/"


# -- batched fetches ------------------------------------------------------------------------


class CountingDB(FakeDB):
    """FakeDB whose jobs wait for the test to release them, counting jobs and queries."""

    def __init__(self, users: int = 0) -> None:
        super().__init__()
        self.jobs = 0
        self.gate = asyncio.Event()
        for i in range(users):  # u0@example.test with hash-0, ...
            self.add(f"u{i}@example.test", f"hash-{i}")

    async def run(self, fn: Any, *, retry: bool = False, write: bool = False) -> Any:
        self.jobs += 1
        await self.gate.wait()
        return await super().run(fn, retry=retry, write=write)


async def settle() -> None:
    """Let every task that can run, run (the fake database never does I/O)."""
    for _ in range(10):
        await asyncio.sleep(0)


def source(db: FakeDB) -> AccountSource:
    return AccountSource(config.parse("[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n"), db)  # type: ignore[arg-type]


@aio
async def test_a_burst_of_fetches_shares_a_few_jobs() -> None:
    db = CountingDB(users=20)
    accounts = source(db)
    tasks = [asyncio.create_task(accounts.fetch(f"U{i}@example.test")) for i in range(20)]
    tasks.append(asyncio.create_task(accounts.fetch("nobody@example.test")))
    await settle()
    assert db.jobs == accounts.max_jobs  # the first ones went at once, the rest wait
    db.gate.set()
    found = await asyncio.gather(*tasks)
    assert [a.password for a in found[:20] if a] == [f"hash-{i}" for i in range(20)]
    assert found[20] is None
    assert accounts.max_jobs == 1  # a batch is one statement: one job is enough
    assert db.jobs == 2  # the first login's, then one batch for the 20 that waited
    # One statement per job: the batch's is the query 20 times over, UNION ALL.
    assert len(db.statements) == 2
    assert db.statements[-1].count("UNION ALL") == 19


@aio
async def test_a_query_that_cannot_be_wrapped_runs_once_per_login() -> None:
    db = CountingDB(users=6)
    accounts = source(db)
    accounts.union = False  # what an ORDER BY or LIMIT in [auth] query means
    assert accounts.max_jobs == 2  # queries one by one: two batches may run at once
    tasks = [asyncio.create_task(accounts.fetch(f"u{i}@example.test")) for i in range(6)]
    await settle()
    db.gate.set()
    assert [a.password for a in await asyncio.gather(*tasks) if a] == [
        f"hash-{i}" for i in range(6)
    ]
    assert db.jobs == accounts.max_jobs + 1 and len(db.statements) == 6


@aio
async def test_a_refused_union_falls_back_for_good() -> None:
    class NoDerivedTables(CountingDB):
        async def run(self, fn: Any, *, retry: bool = False) -> Any:
            result = await super().run(fn, retry=retry)
            if "UNION ALL" in self.statements[-1]:
                raise DatabaseError("(1060) Duplicate column name 'address'", 1060)
            return result

    db = NoDerivedTables(users=5)
    accounts = source(db)
    tasks = [asyncio.create_task(accounts.fetch(f"u{i}@example.test")) for i in range(5)]
    await settle()
    db.gate.set()
    assert all(await asyncio.gather(*tasks))  # answered, not failed
    assert accounts.union is False


@pytest.mark.parametrize(
    ("query", "unionable"),
    [
        ("SELECT email AS address, password FROM users WHERE email = '%s'", True),
        ("select email as address, password from users where email='%s'", True),
        ("SELECT email AS address FROM users WHERE email = '%s' ORDER BY x", False),
        ("SELECT email AS address FROM users WHERE email = '%s' LIMIT 1", False),
        ("SELECT a AS address FROM t WHERE a = '%s' UNION SELECT b FROM u WHERE b = '%s'", False),
        ("WITH x AS (SELECT 1) SELECT email AS address FROM users WHERE email='%s'", False),
    ],
)
def test_which_queries_are_batched_as_one_statement(query: str, unionable: bool) -> None:
    cfg = config.parse(
        f"[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n[auth]\nquery = {query}\n"
    )
    assert AccountSource(cfg, FakeDB()).union is unionable  # type: ignore[arg-type]


def test_the_batch_statement_tags_each_login() -> None:
    sql, params = _union(
        "SELECT a AS address FROM t WHERE a = %s AND b = %s;", [("x", "1"), ("y", "2")]
    )
    assert sql == (
        "SELECT 0 AS vmaild_batch_login, q.* FROM (SELECT a AS address FROM t "
        "WHERE a = %s AND b = %s) AS q UNION ALL SELECT 1 AS vmaild_batch_login, "
        "q.* FROM (SELECT a AS address FROM t WHERE a = %s AND b = %s) AS q"
    )
    assert params == ["x", "1", "y", "2"]


@aio
async def test_a_failed_job_fails_each_of_its_logins_and_the_next_batch_runs() -> None:
    db = CountingDB()
    db.add("joe@example.test", "hash")
    accounts = source(db)
    db.down = True
    first = [asyncio.create_task(accounts.fetch("joe@example.test")) for _ in range(5)]
    await settle()
    db.gate.set()
    results = await asyncio.gather(*first, return_exceptions=True)
    assert all(isinstance(r, DatabaseError) for r in results)
    db.down = False
    account = await accounts.fetch("joe@example.test")
    assert account is not None and account.password == "hash"


@aio
async def test_a_fetch_whose_client_left_is_dropped_from_its_batch() -> None:
    db = CountingDB()
    db.add("joe@example.test", "hash")
    accounts = source(db)
    running = [
        asyncio.create_task(accounts.fetch("joe@example.test")) for _ in range(accounts.max_jobs)
    ]
    gone = asyncio.create_task(accounts.fetch("gone@example.test"))
    kept = asyncio.create_task(accounts.fetch("joe@example.test"))
    await settle()
    gone.cancel()
    db.gate.set()
    assert all(await asyncio.gather(*running, kept))
    assert "gone@example.test" not in str(db.statements)
    assert db.jobs == accounts.max_jobs + 1


# -- per-protocol access -------------------------------------------------------------------


def test_access_switches_default_to_on() -> None:
    a = account_from_row({"address": "a@x", "password": "p"}, CFG)
    assert [a.access_for(s) for s in ("imap", "pop3", "smtp", "courier")] == ["on"] * 4
    a = account_from_row(
        {"address": "a@x", "imap_access": None, "pop3_access": None, "smtp_access": None}, CFG
    )
    assert a.access_for("imap") == a.access_for("smtp") == "on"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("on", "on"),
        ("off", "off"),
        ("app", "app"),
        (" APP ", "app"),
        (b"off", "off"),
        ("maybe", "off"),
        ("", "off"),
    ],
)
def test_access_switch_values(value: Any, expected: str) -> None:
    row = {"address": "a@x", "imap_access": "on", "pop3_access": value, "smtp_access": "app"}
    a = account_from_row(row, CFG)
    assert (a.access_for("imap"), a.access_for("pop3"), a.access_for("smtp")) == (
        "on",
        expected,
        "app",
    )
    assert a.access_for("webmail") == "on"  # no switch for it


def test_the_default_query_returns_the_switches() -> None:
    for column in ("imap_access", "pop3_access", "smtp_access"):
        assert f"u.{column}" in CFG.auth.query
