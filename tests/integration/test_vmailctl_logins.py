"""App passwords, access switches and the login history in vmailctl, against a private
MariaDB: the schema (migration from version 2 included), ``vmailctl app-password``,
``user set`` and ``user show``. The daemon's side is test_auth_login_tables.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable

import pytest

from tests.integration.test_vmailctl import Ctl, make_ctl, schema_only
from vmaild import config as vconfig
from vmaild.auth.accounts import Account, AccountSource
from vmaild.db import Database

pytestmark = pytest.mark.integration
__all__ = ["make_ctl"]  # test_vmailctl's fixture: imported so that pytest finds it here

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
