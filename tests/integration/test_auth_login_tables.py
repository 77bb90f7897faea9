"""The daemon's side of app passwords and the login history on the real tables of a
private MariaDB: ``AppPasswords.matches`` (services, networks, expiry, revocation,
last_used_at) and ``LoginHistory`` (one row write per interval however many logins,
newest wins across hosts, entries kept while the database fails).
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest

from tests.integration.test_vmailctl import Ctl, make_ctl
from tests.integration.test_vmailctl_logins import account, ctl
from vmaild import config as vconfig
from vmaild.auth.app_passwords import AppPasswords
from vmaild.auth.history import LoginHistory
from vmaild.db import Database
from vmaild.metrics import Metrics

pytestmark = pytest.mark.integration
__all__ = ["ctl", "make_ctl"]  # fixtures: imported so that pytest finds them here

ip = ipaddress.ip_address


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
