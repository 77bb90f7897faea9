"""The brute-force guard against a real MariaDB, as two vmaild hosts sharing one database:
two Guard instances, each with its own connection pool, on one login_failures table
(created by ``vmailctl``'s schema description). A fake clock shared by both stands in for
the hosts' synchronised clocks, so windows and blocks are tested without waiting."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from harness.mariadb.server import MariaDB
from vmaild import config
from vmaild.auth.guard import Guard
from vmaild.ctl import schema
from vmaild.db import Database
from vmaild.metrics import Metrics

ALICE = "alice@example.org"
A = ipaddress.ip_address("203.0.113.7")
B = ipaddress.ip_address("198.51.100.9")


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Host:
    """One vmaild host: its own pool, metrics and guard."""

    def __init__(self, cfg: config.Config, clock: Clock):
        self.db = Database(cfg.database)
        self.metrics = Metrics()
        self.guard = Guard(cfg, self.db, self.metrics, clock)

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def shared(mariadb: MariaDB) -> Iterator[tuple[MariaDB, str, Callable[[str], config.Config]]]:
    name = f"guard_{uuid.uuid4().hex[:8]}"
    mariadb.create_database(name, "guard", "guard-pw")
    mariadb.query(schema.create_table(schema.BY_NAME["login_failures"]), database=name)

    def cfg(auth: str = "") -> config.Config:
        return config.parse(
            f"[database]\nhosts = 127.0.0.1:{mariadb.port}\nuser = guard\n"
            f"password = guard-pw\ndbname = {name}\nretry_interval = 5\n[auth]\n{auth}"
        )

    try:
        yield mariadb, name, cfg
    finally:
        mariadb.drop_database(name)


def run(cfg: config.Config, body: Callable[[Host, Host, Clock], Coroutine[Any, Any, None]]) -> None:
    clock = Clock()
    one, two = Host(cfg, clock), Host(cfg, clock)
    try:
        asyncio.run(asyncio.wait_for(body(one, two, clock), 120))
    finally:
        one.db.close()
        two.db.close()


def test_failures_on_one_host_block_on_the_other(shared: Any) -> None:
    mariadb, name, cfg = shared

    async def body(one: Host, two: Host, clock: Clock) -> None:
        delays = [await h.guard.failed(ALICE, A) for h in (one, two, one, two)]
        assert delays == [0, 0.5, 1, 2]  # one count, whichever host saw the failure
        assert await two.guard.refusal(ALICE, A) is None
        await one.guard.failed(ALICE, A)  # the 5th: the pair blocks, on both hosts
        assert await two.guard.refusal(ALICE, A) == "pair"
        assert await one.guard.refusal(ALICE, A) == "pair"
        assert await two.guard.refusal(ALICE, B) is None
        for i in range(15):  # the address reaches 20 over other logins, from host two
            await two.guard.failed(f"user{i}@example.org", A)
        assert await one.guard.refusal("someone@example.org", A) == "address"
        assert one.value("vmaild_login_guard_blocks_total", kind="pair") == 1
        assert two.value("vmaild_login_guard_blocks_total", kind="address") == 1
        clock.now += 900  # block_time; the window (900 s after the last failure) too
        assert await one.guard.refusal("someone@example.org", A) is None
        assert await two.guard.failed(ALICE, A) == 0  # counts restarted

    run(cfg(), body)
    rows = mariadb.query(
        "SELECT kind, subject, failures FROM login_failures ORDER BY kind, subject", database=name
    )
    assert ("login", ALICE, 1) in rows and ("pair", f"203.0.113.7/32 {ALICE}", 1) in rows


def test_concurrent_failures_from_both_hosts_are_all_counted(shared: Any) -> None:
    mariadb, name, cfg = shared
    per_host = 60

    async def body(one: Host, two: Host, clock: Clock) -> None:
        addrs = [ipaddress.IPv4Address(0xC6336400 + i) for i in range(per_host)]
        await asyncio.gather(
            *(h.guard.failed(ALICE, addr) for h in (one, two) for addr in addrs),
            *(h.guard.failed(ALICE, None) for h in (one, two) for _ in range(per_host)),
        )
        # Exactly one failure reached block_login_after: one block, on one host.
        blocks = [h.value("vmaild_login_guard_blocks_total", kind="login") for h in (one, two)]
        assert sum(blocks) == 1
        assert sum(h.value("vmaild_login_guard_local") for h in (one, two)) == 0

    run(cfg(), body)
    counts = dict(
        (k, n)
        for k, n in mariadb.query(
            "SELECT subject, failures FROM login_failures WHERE kind IN ('login', 'pair')",
            database=name,
        )
    )
    assert counts[ALICE] == 4 * per_host
    pairs = [n for k, n in counts.items() if k != ALICE]
    assert pairs == [2] * per_host  # each address from both hosts


def test_the_victims_own_login_keeps_working(shared: Any) -> None:
    _, _, cfg = shared

    async def body(one: Host, two: Host, clock: Clock) -> None:
        # A distributed attack on alice through both hosts: 50 addresses, one try each.
        for i in range(50):
            host = (one, two)[i % 2]
            await host.guard.failed(ALICE, ipaddress.IPv4Address(0xC6336400 + i))
        # Alice from home, through either host: not refused; her login succeeds.
        for host in (one, two):
            assert await host.guard.refusal(ALICE, A) is None
        await one.guard.succeeded(ALICE, A)
        # Through authpipe (no address), the login-wide block refuses.
        assert await two.guard.refusal(ALICE, None) == "login"
        assert await one.guard.refusal("bob@example.org", None) is None

    run(cfg(), body)


def test_success_clears_the_pair_another_host_recorded(shared: Any) -> None:
    mariadb, name, cfg = shared

    async def body(one: Host, two: Host, clock: Clock) -> None:
        await one.guard.failed(ALICE, A)
        await one.guard.failed(ALICE, A)
        assert await two.guard.refusal(ALICE, A) is None
        await two.guard.succeeded(ALICE, A)

    run(cfg(), body)
    kinds = sorted(k for (k,) in mariadb.query("SELECT kind FROM login_failures", database=name))
    assert kinds == ["address", "login"]


def test_the_read_is_one_primary_key_lookup_per_subject(shared: Any) -> None:
    mariadb, name, cfg = shared
    sql = (
        "SELECT 0, failures, last_at, blocked_until FROM login_failures "
        "WHERE kind = 'address' AND subject = 'x' UNION ALL "
        "SELECT 1, failures, last_at, blocked_until FROM login_failures "
        "WHERE kind = 'login' AND subject = 'y'"
    )
    mariadb.query(
        "INSERT INTO login_failures (kind, subject, failures) VALUES ('address', 'x', 1), "
        "('login', 'y', 1), ('login', 'z', 1), ('pair', 'x y', 1)",
        database=name,
    )
    plan = mariadb.query(f"EXPLAIN {sql}", database=name)
    for row in plan:
        if row[2] is not None:  # the UNION result row has no table
            assert row[3] == "const" and row[5] == "PRIMARY", row


def test_without_the_table_logins_go_on_counted_in_each_process(
    shared: Any, caplog: pytest.LogCaptureFixture
) -> None:
    mariadb, name, cfg = shared
    mariadb.query("DROP TABLE login_failures", database=name)

    async def body(one: Host, two: Host, clock: Clock) -> None:
        assert await one.guard.refusal(ALICE, A) is None
        for _ in range(5):
            await one.guard.failed(ALICE, A)
        assert await one.guard.refusal(ALICE, A) == "pair"  # this host's own count
        assert await two.guard.refusal(ALICE, A) is None  # not shared
        assert one.value("vmaild_login_guard_local") == 1

    with caplog.at_level(logging.INFO, "vmaild.guard"):
        run(cfg(), body)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    fallbacks = [w for w in warnings if "in this process only" in w]
    assert len(fallbacks) == 2, warnings  # once per host
    assert "login_failures" in fallbacks[0]


def test_the_database_and_the_fallback_count_alike(shared: Any) -> None:
    """One script of failures, refusals, successes and time passing, through the
    database's store and through the in-process one: the same answers throughout."""
    _, _, cfg = shared
    c = cfg("fail_window = 60\nblock_time = 30\nblock_pair_after = 3\nblock_login_after = 4\n")
    steps: list[tuple[str, Any, float]] = [
        ("fail", A, 1),
        ("fail", A, 1),
        ("refuse", A, 0),
        ("fail", A, 1),
        ("refuse", A, 0),  # pair blocked
        ("refuse", B, 0),
        ("fail", B, 1),  # the login's 4th: login blocked
        ("refuse", None, 29),
        ("refuse", None, 2),  # the block is over
        ("fail", None, 1),  # still in the window: blocked again
        ("refuse", None, 0),
        ("ok", B, 61),
        ("fail", B, 0),  # the window passed: counts restart
        ("refuse", B, 0),
    ]

    async def script(guard: Guard, clock: Clock) -> list[Any]:
        out: list[Any] = []
        for op, client, advance in steps:
            if op == "fail":
                out.append(await guard.failed(ALICE, client))
            elif op == "refuse":
                out.append(await guard.refusal(ALICE, client, can_wait=True))
            else:
                out.append(await guard.succeeded(ALICE, client))
            clock.now += advance
        return out

    results: list[list[Any]] = []

    async def body(one: Host, two: Host, clock: Clock) -> None:
        results.append(await script(one.guard, clock))
        local_clock = Clock()
        results.append(await script(Guard(c, None, Metrics(), local_clock), local_clock))

    run(c, body)
    assert results[0] == results[1]
    assert results[0][4] == "pair" and results[0][7] == "login" and results[0][8] is None


def test_rows_whose_window_and_block_are_over_are_pruned(shared: Any) -> None:
    mariadb, name, cfg = shared
    now_ms = int(Clock.now * 1000)
    old = now_ms - 901_000  # the window (900 s) is over
    mariadb.query(
        "INSERT INTO login_failures (kind, subject, failures, last_at, blocked_until) VALUES "
        "('address', 'gone', 3, %s, 0), ('login', 'still-blocked', 60, %s, %s), "
        "('login', 'recent', 1, %s, 0)",
        (old, old, now_ms + 1000, now_ms - 1000),
        database=name,
    )

    async def body(one: Host, two: Host, clock: Clock) -> None:
        await one.guard.failed(ALICE, None)

    run(cfg(), body)
    left = sorted(s for (s,) in mariadb.query("SELECT subject FROM login_failures", database=name))
    assert left == [ALICE, "recent", "still-blocked"]
