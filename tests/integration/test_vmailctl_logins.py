"""App passwords, access switches and the login history against a private MariaDB:
``vmailctl app-password``, ``user set``/``show``, migration from version 2, and the
daemon's side (``AppPasswords.matches``, ``LoginHistory``) on the real tables.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.test_vmailctl import Ctl, make_ctl, schema_only
from vmaild import config as vconfig
from vmaild.auth.accounts import Account, AccountSource
from vmaild.auth.app_passwords import AppPasswords
from vmaild.auth.history import LoginHistory
from vmaild.db import Database
from vmaild.metrics import Metrics

pytestmark = pytest.mark.integration
__all__ = ["make_ctl"]  # test_vmailctl's fixture: imported so that pytest finds it here

ip = ipaddress.ip_address
SECRET = re.compile(r"^    ([a-z2-7]{5}(?:-[a-z2-7]{5}){3})$", re.MULTILINE)


@pytest.fixture
def ctl(make_ctl: Callable[..., Ctl]) -> Ctl:
    c = make_ctl()
    c.ok("db", "init")
    c.ok("domain", "add", "example.com")
    c.add_user("alice@example.com")
    c.add_user("bob@example.com")
    return c


def account(c: Ctl, address: str) -> Account:
    async def fetch() -> Account | None:
        db = Database(vconfig.load(str(c.conf)).database)
        try:
            return await AccountSource(vconfig.load(str(c.conf)), db).fetch(address)
        finally:
            db.close()

    found = asyncio.run(fetch())
    assert found is not None
    return found


# -- schema -----------------------------------------------------------------------------------


def test_migrate_from_version_2(make_ctl: Callable[..., Ctl]) -> None:
    c = make_ctl()
    c.ok("db", "init")
    fresh = schema_only(c)
    # Version 2 as it was: no login tables, no access switches.
    c.query("DROP TABLE app_passwords")
    c.query("DROP TABLE login_history")
    c.query(
        "ALTER TABLE users DROP COLUMN imap_access, DROP COLUMN pop3_access, "
        "DROP COLUMN smtp_access"
    )
    c.query("UPDATE vmaild_schema SET version = 2")
    status = c.ok("--json", "db", "status").json()
    assert status["version"] == "2" and status["advice"] == "run 'vmailctl db migrate'"
    c.refused("user", "list", match="database schema is 2: run 'vmailctl db migrate'")
    assert c.ok("db", "migrate").out == "schema migrated: 2 -> 3\n"
    assert schema_only(c) == fresh
    assert c.ok("db", "migrate").out == "schema already at version 3; nothing to do\n"


def test_the_login_columns_and_tables(ctl: Ctl) -> None:
    cols = dict(
        ctl.query(
            "SELECT CONCAT(table_name, '.', column_name), column_type "
            "FROM information_schema.columns WHERE table_schema = %s",
            (ctl.dbname,),
        )
    )
    for service in ("imap", "pop3", "smtp"):
        assert cols[f"users.{service}_access"] == "enum('on','off','app')"
    assert cols["app_passwords.services"] == "set('imap','pop3','smtp')"
    assert cols["login_history.last_address"] == "varchar(45)"
    assert ctl.query("SELECT DISTINCT imap_access, pop3_access, smtp_access FROM users") == [
        ("on", "on", "on")
    ]
    keys = ctl.query(
        "SELECT index_name, GROUP_CONCAT(column_name ORDER BY seq_in_index) "
        "FROM information_schema.statistics WHERE table_schema = %s "
        "AND table_name = 'app_passwords' GROUP BY index_name",
        (ctl.dbname,),
    )
    assert dict(keys) == {"PRIMARY": "id", "email_name": "email,name"}
    # The daemon's query uses the key (no full scan).
    plan = ctl.query(
        "EXPLAIN SELECT id, secret_hash, networks FROM app_passwords WHERE email = %s "
        "AND FIND_IN_SET(%s, services) > 0 AND (expires_at IS NULL OR expires_at > NOW())",
        ("alice@example.com", "imap"),
    )
    assert plan[0][5] == "email_name", plan  # EXPLAIN's "key" column
    # Changing app passwords or history does not bump the change counter (not watched).
    v = ctl.version()
    ctl.ok("app-password", "add", "alice@example.com", "--name", "phone")
    ctl.query("INSERT INTO login_history (email, service) VALUES ('alice@example.com', 'imap')")
    assert ctl.version() == v


# -- vmailctl ---------------------------------------------------------------------------------


def test_app_password_add_list_revoke(ctl: Ctl) -> None:
    r = ctl.ok(
        "app-password",
        "add",
        "Alice@example.com",
        "--name",
        "phone",
        "--service",
        "imap,smtp",
        "--network",
        "192.0.2.9/24",
        "--network",
        "2001:db8::/32",
        "--expires",
        "30d",
    )
    m = SECRET.search(r.out)
    assert m, r.out
    secret = m.group(1)
    assert r.out.startswith("app password 'phone' for alice@example.com (imap, smtp; from ")
    assert "shown only this once" in r.out
    row = ctl.query(
        "SELECT email, name, secret_hash, services, networks, "
        "expires_at > NOW() + INTERVAL 29 DAY, last_used_at FROM app_passwords"
    )
    assert row == [
        (
            "alice@example.com",
            "phone",
            hashlib.sha256(secret.encode()).hexdigest(),
            "imap,smtp",
            "192.0.2.0/24,2001:db8::/32",
            1,
            None,
        )
    ]

    j = ctl.ok("--json", "app-password", "add", "alice@example.com", "--name", "laptop").json()
    assert j["result"] == "ok" and j["services"] == ["imap", "pop3", "smtp"]
    assert j["networks"] == [] and j["expires_at"] is None
    assert re.fullmatch(r"[a-z2-7]{5}(-[a-z2-7]{5}){3}", j["secret"]) and j["secret"] != secret

    listed = ctl.ok("--json", "app-password", "list", "alice@example.com").json()
    assert [a["name"] for a in listed] == ["laptop", "phone"]
    assert set(listed[1]) == {
        "name",
        "services",
        "networks",
        "expires_at",
        "expired",
        "created_at",
        "last_used_at",
    }
    assert listed[1]["services"] == ["imap", "smtp"] and listed[1]["expired"] is False
    text = ctl.ok("app-password", "list", "alice@example.com").out
    assert text.splitlines()[0].split() == [
        "NAME",
        "SERVICES",
        "NETWORKS",
        "EXPIRES",
        "EXPIRED",
        "CREATED",
        "LAST",
        "USED",
    ]
    assert secret not in text and row[0][2] not in text
    assert ctl.ok("app-password", "list", "bob@example.com").out == "(none)\n"

    ctl.refused(
        "app-password",
        "add",
        "alice@example.com",
        "--name",
        "PHONE",
        match="alice@example.com already has an app password named 'PHONE'",
    )
    ctl.refused(
        "app-password",
        "add",
        "nobody@example.com",
        "--name",
        "x",
        match="no user nobody@example.com",
    )
    ctl.refused(
        "app-password",
        "add",
        "alice@example.com",
        "--name",
        "old",
        "--expires",
        "2001-01-01",
        match="--expires 2001-01-01 is in the past",
    )
    ctl.refused(
        "app-password",
        "add",
        "alice@example.com",
        "--name",
        "far",
        "--expires",
        "2999-01-01",
        match="is after 2038-01-19",
    )
    ctl.refused(
        "app-password",
        "add",
        "alice@example.com",
        "--name",
        "bad",
        "--expires",
        "2030-02-30",
        match="no such date",
    )
    ctl.refused(
        "app-password",
        "add",
        "alice@example.com",
        "--name",
        "net",
        "--network",
        "192.0.2.0/33",
        match="bad --network",
    )
    ctl.refused("app-password", "list", "nobody@example.com", match="no user nobody@example.com")
    # Through the end of the given day.
    ctl.ok("app-password", "add", "alice@example.com", "--name", "day", "--expires", "2030-01-31")
    assert (
        ctl.query("SELECT expires_at FROM app_passwords WHERE name = 'day'")[0][0].isoformat()
        == "2030-02-01T00:00:00"
    )

    r = ctl.ok("app-password", "revoke", "alice@example.com", "phone")
    assert r.out == "revoked app password 'phone' of alice@example.com\n"
    ctl.refused(
        "app-password",
        "revoke",
        "alice@example.com",
        "phone",
        match="alice@example.com has no app password named 'phone'",
    )
    ctl.refused(
        "app-password", "revoke", "nobody@example.com", "phone", match="no user nobody@example.com"
    )
    assert [
        a["name"] for a in ctl.ok("--json", "app-password", "list", "alice@example.com").json()
    ] == ["day", "laptop"]
    ctl.ok("user", "remove", "alice@example.com")
    assert ctl.query("SELECT COUNT(*) FROM app_passwords") == [(0,)]


def test_user_set_and_show(ctl: Ctl) -> None:
    v = ctl.version()
    r = ctl.ok("user", "set", "alice@example.com", "--imap", "app", "--pop3", "off")
    assert r.out == "access of alice@example.com: imap app, pop3 off\n"
    assert ctl.version() > v  # users is watched: a running daemon flushes
    assert ctl.query(
        "SELECT imap_access, pop3_access, smtp_access FROM users WHERE email = 'alice@example.com'"
    ) == [("app", "off", "on")]
    a = account(ctl, "alice@example.com")
    assert (a.access_for("imap"), a.access_for("pop3"), a.access_for("smtp")) == (
        "app",
        "off",
        "on",
    )
    ctl.refused(
        "user", "set", "nobody@example.com", "--smtp", "off", match="no user nobody@example.com"
    )
    ctl.ok("app-password", "add", "alice@example.com", "--name", "phone")
    ctl.query(
        "INSERT INTO login_history (email, service, last_at, last_address) VALUES "
        "('alice@example.com', 'smtp', '2026-12-02 10:00:00', '192.0.2.1'), "
        "('alice@example.com', 'imap', '2026-12-01 09:00:00', NULL)"
    )
    shown = ctl.ok("--json", "user", "show", "alice@example.com").json()
    assert shown["access"] == {"imap": "app", "pop3": "off", "smtp": "on"}
    assert shown["app_passwords"] == 1
    assert shown["last_login"] == {
        "imap": {"at": "2026-12-01T09:00:00", "from": None},
        "smtp": {"at": "2026-12-02T10:00:00", "from": "192.0.2.1"},
    }
    out = ctl.ok("user", "show", "alice@example.com").out.splitlines()
    lines = [" ".join(line.split()) for line in out]
    for expected in (
        "imap access app",
        "pop3 access off",
        "smtp access on",
        "app passwords 1",
        "last imap login 2026-12-01 09:00:00",
        "last pop3 login never",
        "last smtp login 2026-12-02 10:00:00 from 192.0.2.1",
    ):
        assert expected in lines, out
    ctl.ok("user", "remove", "alice@example.com")
    assert ctl.query("SELECT COUNT(*) FROM login_history") == [(0,)]


def test_domain_remove_force_takes_the_login_rows_along(ctl: Ctl) -> None:
    ctl.ok("domain", "add", "other.example")
    ctl.add_user("carol@other.example")
    for user in ("alice@example.com", "carol@other.example"):
        ctl.ok("app-password", "add", user, "--name", "phone")
        ctl.query("INSERT INTO login_history (email, service) VALUES (%s, 'imap')", (user,))
    ctl.ok("domain", "remove", "example.com", "--force")
    assert ctl.query("SELECT email FROM app_passwords") == [("carol@other.example",)]
    assert ctl.query("SELECT email FROM login_history") == [("carol@other.example",)]


# -- the daemon's side ------------------------------------------------------------------------


def test_matches_services_networks_expiry_and_revocation(ctl: Ctl) -> None:
    def add(*args: str) -> str:
        return str(
            ctl.ok("--json", "app-password", "add", "alice@example.com", *args).json()["secret"]
        )

    anywhere = add("--name", "anywhere", "--service", "imap,pop3")
    office = add("--name", "office", "--service", "smtp", "--network", "192.0.2.0/24")
    soon = add("--name", "soon", "--expires", "1h")
    alice = account(ctl, "alice@example.com")
    bob = account(ctl, "bob@example.com")

    async def checks() -> dict[str, Any]:
        cfg = vconfig.load(str(ctl.conf))
        db = Database(cfg.database)
        checker = AppPasswords(cfg, db, Metrics())
        out: dict[str, Any] = {}
        try:
            out["imap"] = await checker.matches(alice, "imap", None, anywhere)
            out["typed"] = await checker.matches(
                alice, "pop3", None, anywhere.upper().replace("-", " ")
            )
            out["smtp not allowed"] = await checker.matches(alice, "smtp", None, anywhere)
            out["bob"] = await checker.matches(bob, "imap", None, anywhere)
            out["office in"] = await checker.matches(alice, "smtp", ip("192.0.2.50"), office)
            out["office out"] = await checker.matches(alice, "smtp", ip("198.51.100.1"), office)
            out["office unknown"] = await checker.matches(alice, "smtp", None, office)
            out["soon"] = await checker.matches(alice, "imap", None, soon)
            ctl.query(
                "UPDATE app_passwords SET expires_at = NOW() - INTERVAL 1 SECOND "
                "WHERE name = 'soon'"
            )
            out["expired"] = await checker.matches(alice, "imap", None, soon)
            ctl.ok("app-password", "revoke", "alice@example.com", "anywhere")
            out["revoked"] = await checker.matches(alice, "imap", None, anywhere)
            await checker.close()
        finally:
            db.close()
        return out

    assert asyncio.run(checks()) == {
        "imap": True,
        "typed": True,
        "smtp not allowed": False,
        "bob": False,
        "office in": True,
        "office out": False,
        "office unknown": False,
        "soon": True,
        "expired": False,
        "revoked": False,
    }
    used = dict(ctl.query("SELECT name, last_used_at IS NOT NULL FROM app_passwords"))
    assert used == {"office": 1, "soon": 1}
    listed = ctl.ok("--json", "app-password", "list", "alice@example.com").json()
    assert {a["name"]: a["expired"] for a in listed} == {"office": False, "soon": True}


def _count_writes(c: Ctl) -> None:
    """A test-only counter of row writes to login_history (inserts and updates)."""
    c.query("CREATE TABLE history_writes (n int NOT NULL)")
    c.query("INSERT INTO history_writes VALUES (0)")
    for event in ("INSERT", "UPDATE"):
        c.query(
            f"CREATE TRIGGER test_history_{event.lower()} AFTER {event} ON login_history "
            "FOR EACH ROW UPDATE history_writes SET n = n + 1"
        )


def test_history_writes_once_per_interval_however_many_logins(ctl: Ctl) -> None:
    _count_writes(ctl)
    cfg = vconfig.load(str(ctl.conf))

    async def scenario() -> LoginHistory:
        db = Database(cfg.database)
        gate: asyncio.Queue[None] = asyncio.Queue()

        async def sleep(seconds: float) -> None:  # one interval, ended by the test
            await gate.get()

        async def written(n: int) -> None:
            while history.writes < n:
                await asyncio.sleep(0.01)

        history = LoginHistory(cfg, db, sleep=sleep)
        task = asyncio.create_task(history.run())
        try:
            for round_ in range(3):
                for i in range(2000):
                    history.record("alice@example.com", "imap", ip(f"192.0.2.{i % 250}"))
                    history.record("bob@example.com", "smtp", None)
                    history.record("alice@example.com", "smtp", ip("2001:db8::1"))
                assert history.writes == round_  # nothing written during the interval
                gate.put_nowait(None)  # the interval is over
                await asyncio.wait_for(written(round_ + 1), 30)
            history.record("bob@example.com", "pop3", None)
            await history.close()
            gate.put_nowait(None)
            await asyncio.wait_for(task, 30)
        finally:
            db.close()
        return history

    history = asyncio.run(scenario())
    # 18,000 logins: 3 interval rounds of 3 (account, service) rows, then 1 at close.
    assert history.writes == 4
    assert ctl.query("SELECT n FROM history_writes") == [(3 * 3 + 1,)]
    rows = ctl.query(
        "SELECT email, service, last_address, last_at > NOW() - INTERVAL 1 MINUTE "
        "FROM login_history ORDER BY email, service"
    )
    assert rows == [
        ("alice@example.com", "imap", "192.0.2.249", 1),
        ("alice@example.com", "smtp", "2001:db8::1", 1),
        ("bob@example.com", "pop3", None, 1),
        ("bob@example.com", "smtp", None, 1),
    ]


def test_history_never_moves_back_in_time_across_hosts(ctl: Ctl) -> None:
    cfg = vconfig.load(str(ctl.conf))

    async def scenario() -> None:
        db = Database(cfg.database)
        try:
            new = LoginHistory(cfg, db, clock=lambda: 1_800_000_000.0)
            old = LoginHistory(cfg, db, clock=lambda: 1_700_000_000.0)
            new.record("alice@example.com", "imap", ip("192.0.2.2"))
            old.record("alice@example.com", "imap", ip("192.0.2.1"))
            assert await new.flush()
            assert await old.flush()  # a late host: written, but does not win
        finally:
            db.close()

    asyncio.run(scenario())
    assert ctl.query("SELECT UNIX_TIMESTAMP(last_at), last_address FROM login_history") == [
        (1_800_000_000, "192.0.2.2")
    ]


def test_history_keeps_entries_while_the_database_is_down(ctl: Ctl) -> None:
    cfg = vconfig.load(str(ctl.conf))

    async def scenario() -> None:
        db = Database(cfg.database)
        try:
            history = LoginHistory(cfg, db)
            history.record("alice@example.com", "pop3", None)
            ctl.query("RENAME TABLE login_history TO login_history_away")
            try:
                assert not await history.flush()
            finally:
                ctl.query("RENAME TABLE login_history_away TO login_history")
            assert len(history) == 1
            assert await history.flush()
        finally:
            db.close()

    asyncio.run(scenario())
    assert ctl.query("SELECT email, service FROM login_history") == [("alice@example.com", "pop3")]
