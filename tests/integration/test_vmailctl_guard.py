"""``vmailctl guard list|clear`` against a private MariaDB, with the failures recorded by a
real brute-force guard (auth/guard.py) and the refusal lifted for a guard that had seen
the block."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Callable

import pytest

from tests.integration.test_vmailctl import Ctl, make_ctl
from vmaild import config as vconfig
from vmaild.auth.guard import BLOCK_CACHE_SECONDS, Guard
from vmaild.db import Database
from vmaild.metrics import Metrics

pytestmark = pytest.mark.integration
__all__ = ["make_ctl"]  # test_vmailctl's fixture: imported so that pytest finds it here

ALICE = "alice@example.com"
BOB = "bob@example.com"
A = ipaddress.ip_address("203.0.113.7")
B = ipaddress.ip_address("2001:db8::1")


class Clock:
    """Real time (vmailctl compares with it), plus what the test skips ahead."""

    def __init__(self) -> None:
        self.skip = 0.0

    def __call__(self) -> float:
        return time.time() + self.skip


@pytest.fixture
def ctl(make_ctl: Callable[..., Ctl]) -> Ctl:
    c = make_ctl()
    c.ok("db", "init")
    return c


def attack(c: Ctl, body: Callable[[Guard, Clock], object]) -> None:
    async def run() -> None:
        db = Database(vconfig.load(str(c.conf)).database)
        clock = Clock()
        try:
            guard = Guard(vconfig.load(str(c.conf)), db, Metrics(), clock)
            await body(guard, clock)  # type: ignore[misc]
        finally:
            db.close()

    asyncio.run(asyncio.wait_for(run(), 60))


def test_list_shows_counts_and_blocks_and_clear_lifts_them(ctl: Ctl) -> None:
    async def block(guard: Guard, clock: Clock) -> None:
        for _ in range(5):  # block_pair_after = 5
            await guard.failed(ALICE, A)
        await guard.failed(BOB, B)
        assert await guard.refusal(ALICE, A) == "pair"

    attack(ctl, block)
    rows = json.loads(ctl.ok("--json", "guard", "list").out)
    by_subject = {(r["kind"], r["subject"]): r for r in rows}
    pair = by_subject[("pair", f"203.0.113.7/32 {ALICE}")]
    assert pair["failures"] == 5 and pair["blocked_until"] is not None
    assert by_subject[("login", ALICE)]["blocked_until"] is None
    assert by_subject[("address", "2001:db8::/64")]["failures"] == 1
    assert rows[0] is pair  # active blocks first
    table = ctl.ok("guard", "list").out.splitlines()
    assert table[0].split() == "KIND SUBJECT FAILURES LAST FAILURE BLOCKED UNTIL".split()
    assert len(table) == 1 + len(rows)

    # The same guard still holds the block it read (BLOCK_CACHE_SECONDS); after the clear
    # and that long, it lets the owner in from the same address.
    async def cleared(guard: Guard, clock: Clock) -> None:
        assert await guard.refusal(ALICE, A) == "pair"
        done = ctl.ok("guard", "clear", "--login", ALICE.upper())
        assert done.out.startswith("cleared 2 count(s), 1 of them blocked; every host")
        clock.skip = BLOCK_CACHE_SECONDS + 1
        assert await guard.refusal(ALICE, A) is None

    attack(ctl, cleared)
    left = {(r["kind"], r["subject"]) for r in json.loads(ctl.ok("--json", "guard", "list").out)}
    assert ("login", ALICE) not in left and ("address", "203.0.113.7/32") in left
    assert ("login", BOB) in left


def test_clear_by_address_takes_its_pairs_along(ctl: Ctl) -> None:
    async def fail(guard: Guard, clock: Clock) -> None:
        await guard.failed(ALICE, A)
        await guard.failed(BOB, A)
        await guard.failed(BOB, B)

    attack(ctl, fail)
    # An address is counted as its prefix: any address in 2001:db8::/64 names that one.
    done = json.loads(ctl.ok("--json", "guard", "clear", "--address", "2001:db8::ffff").out)
    assert done["cleared"] == 2 and done["blocks"] == 0
    done = json.loads(ctl.ok("--json", "guard", "clear", "--address", "203.0.113.7").out)
    assert done["cleared"] == 3  # the address and its two pairs
    left = {(r["kind"], r["subject"]) for r in json.loads(ctl.ok("--json", "guard", "list").out)}
    assert left == {("login", ALICE), ("login", BOB)}
    assert ctl.ok("guard", "clear", "--address", "203.0.113.7").out == (
        "no failures recorded for that; nothing to clear\n"
    )
    assert ctl.ok("guard", "clear", "--all").out.startswith("cleared 2 count(s), 0 of them")
    assert ctl.ok("guard", "list").out == "(none)\n"


def test_clear_refuses_what_it_cannot_mean(ctl: Ctl) -> None:
    ctl.refused("guard", "clear", match="nothing to clear: give --login, --address or --all")
    ctl.refused("guard", "clear", "--all", "--login", ALICE, match="give it alone")
    ctl.refused("guard", "clear", "--address", "alice", match="not an IP address or prefix")
    # A login with LIKE's wildcards is taken literally: it clears no other login's pairs.
    attack(ctl, lambda g, c: g.failed(ALICE, A))
    assert ctl.ok("guard", "clear", "--login", "%").out.startswith("no failures recorded")
    assert ctl.ok("guard", "clear", "--login", "_lice@example.com").out.startswith("no failures")
