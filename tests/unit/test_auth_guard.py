"""vmaild.auth.guard: the brute-force guard over a fake store and a fake clock."""

from __future__ import annotations

import ipaddress
import logging
import re

import pytest

from vmaild import config
from vmaild.auth.guard import BLOCK_CACHE_SECONDS, Guard
from vmaild.auth.guard_rules import PAIR, Subject
from vmaild.auth.guard_store import MemoryStore
from vmaild.metrics import Metrics

from .fakes_auth import aio
from .fakes_guard import BASE, FakeClock, down, make_guard

ALICE = "alice@example.org"
A = ipaddress.ip_address("203.0.113.7")
B = ipaddress.ip_address("198.51.100.9")
LOCAL = ipaddress.ip_address("127.0.0.1")


def value(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


async def fail(guard: Guard, times: int, key: str = ALICE, client: object = A) -> list[float]:
    delays = []
    for _ in range(times):
        delays.append(await guard.failed(key, client))  # type: ignore[arg-type]
    return delays


@aio
async def test_the_pair_blocks_first_and_only_that_login_from_that_address() -> None:
    guard, _, clock, m = make_guard("fail_window = 3600\n")
    assert await fail(guard, 4) == [0, 0.5, 1, 2]
    assert await guard.refusal(ALICE, A) is None
    await fail(guard, 1)  # the 5th: block_pair_after
    assert await guard.refusal(ALICE, A) == PAIR
    assert await guard.refusal("bob@example.org", A) is None  # the address is not blocked
    assert await guard.refusal(ALICE, B) is None  # nor the login elsewhere
    clock.advance(3)  # authpipe: after the delay of the last failure
    assert await guard.refusal(ALICE, None) is None  # 5 < block_login_after
    assert value(m, "vmaild_login_guard_blocks_total", kind="pair") == 1
    assert value(m, "vmaild_login_guard_refusals_total", kind="pair") == 1
    clock.advance(900)  # block_time
    assert await guard.refusal(ALICE, A) is None
    await fail(guard, 1)  # still within the window: the next failure blocks again
    assert await guard.refusal(ALICE, A) == PAIR
    assert value(m, "vmaild_login_guard_blocks_total", kind="pair") == 2


@aio
async def test_an_address_trying_many_logins_is_blocked_for_all_of_them() -> None:
    guard, _, _, m = make_guard()
    for i in range(20):
        await guard.failed(f"user{i}@example.org", A)
    assert await guard.refusal("anyone@example.org", A) == "address"
    assert await guard.refusal("anyone@example.org", B) is None
    assert value(m, "vmaild_login_guard_blocks_total", kind="address") == 1
    assert value(m, "vmaild_login_guard_failures_total", kind="address") == 20
    assert value(m, "vmaild_login_guard_failures_total", kind="login") == 20
    assert value(m, "vmaild_login_guard_failures_total", kind="pair") == 20


def spread(n: int) -> list[ipaddress.IPv4Address]:
    return [ipaddress.IPv4Address(0xC6336400 + i) for i in range(n)]  # 198.51.100.0 + i


@aio
async def test_the_victims_own_login_keeps_working_during_a_distributed_attack() -> None:
    guard, _, _, m = make_guard()
    for addr in spread(50):  # one failure from each of 50 addresses: block_login_after
        await guard.failed(ALICE, addr)
    assert value(m, "vmaild_login_guard_blocks_total", kind="login") == 1
    # From an address that is not itself blocked, the owner is never refused ...
    assert await guard.refusal(ALICE, A) is None
    # ... nor from the attackers' addresses (none is blocked: the rule is per address).
    assert await guard.refusal(ALICE, spread(1)[0]) is None
    # ... only slowed on a failure of their own: the login's count gives the delay.
    assert await guard.failed(ALICE, A) == 3.0
    # Where the address is unknown (authpipe), the login-wide block refuses.
    assert await guard.refusal(ALICE, None) == "login"
    assert await guard.refusal("bob@example.org", None) is None


@aio
async def test_unknown_names_are_counted_and_blocked_like_known_ones() -> None:
    guard, _, _, _ = make_guard("block_login_after = 3\n")
    for key in (ALICE, "nobody@example.org"):
        await fail(guard, 3, key, None)
    assert await guard.refusal(ALICE, None) == "login"
    assert await guard.refusal("nobody@example.org", None) == "login"
    assert await guard.refusal("NoBody@Example.org", None) == "login"


@aio
async def test_trusted_networks_count_by_login_only_and_are_never_refused() -> None:
    guard, store, _, m = make_guard("block_login_after = 3\n")
    await fail(guard, 10, client=LOCAL)
    assert value(m, "vmaild_login_guard_failures_total", kind="address") == 0
    assert value(m, "vmaild_login_guard_failures_total", kind="login") == 10
    assert await guard.refusal(ALICE, LOCAL) is None
    assert await guard.refusal(ALICE, None) == "login"
    assert len(store.inner) == 1  # one subject: the login


@aio
async def test_counts_restart_after_the_window() -> None:
    guard, _, clock, _ = make_guard("fail_window = 60\n")
    assert await fail(guard, 3) == [0, 0.5, 1]
    clock.advance(59)
    assert await fail(guard, 1) == [2]  # within the window of the last failure
    clock.advance(60)
    assert await fail(guard, 2) == [0, 0.5]
    assert await guard.refusal(ALICE, A) is None


@aio
async def test_ipv6_clients_count_by_their_64() -> None:
    guard, _, _, _ = make_guard("block_address_after = 3\n")
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
        await guard.failed(f"{host}@example.org", ipaddress.ip_address(host))
    assert await guard.refusal("x@example.org", ipaddress.ip_address("2001:db8:1:2::99")) == (
        "address"
    )
    assert await guard.refusal("x@example.org", ipaddress.ip_address("2001:db8:1:3::1")) is None


@aio
async def test_a_door_that_cannot_wait_is_refused_until_the_delay_passed() -> None:
    guard, _, clock, m = make_guard()
    assert await fail(guard, 2, client=None) == [0, 0.5]
    assert value(m, "vmaild_login_guard_delays_total") == 0  # authpipe: nobody waited
    clock.advance(0.2)
    assert await guard.refusal(ALICE, None) == "early"
    assert await guard.refusal(ALICE, None, can_wait=True) is None
    clock.advance(0.3)
    assert await guard.refusal(ALICE, None) is None
    assert value(m, "vmaild_login_guard_refusals_total", kind="early") == 1


@aio
async def test_a_door_that_can_wait_gets_the_delay_counted() -> None:
    guard, _, _, m = make_guard()
    await fail(guard, 3)
    assert value(m, "vmaild_login_guard_delays_total") == 2


@aio
async def test_success_clears_only_a_pair_with_failures_and_writes_nothing_otherwise() -> None:
    guard, store, _, _ = make_guard()
    assert await guard.refusal(ALICE, A) is None
    await guard.succeeded(ALICE, A)
    await guard.succeeded(ALICE, None)
    assert store.clears == [] and store.records == 0
    await fail(guard, 3)
    assert await guard.refusal(ALICE, A) is None
    await guard.succeeded(ALICE, A)
    pair = Subject(PAIR, f"203.0.113.7/32 {ALICE}")
    assert store.clears == [[pair]]
    await guard.succeeded(ALICE, A)  # nothing recorded any more
    assert store.clears == [[pair]]
    # The login-wide count stays (the 4th failure: 2 s, from any address): the owner's
    # success must not reset an attacker's.
    assert await guard.failed(ALICE, B) == 2.0


@aio
async def test_success_clears_a_pair_another_host_recorded() -> None:
    guard, store, _, _ = make_guard()
    other = Guard(guard_cfg(), None, Metrics(), guard.clock, store=store)
    await fail(other, 2)
    assert await guard.refusal(ALICE, A) is None  # this host reads the pair's failures
    await guard.succeeded(ALICE, A)
    assert len(store.clears) == 1


def guard_cfg() -> config.Config:
    return config.parse(BASE)


@aio
async def test_a_block_seen_is_remembered_without_reading_again() -> None:
    guard, store, clock, _ = make_guard()
    await fail(guard, 5)
    reads = store.reads
    for _ in range(100):
        assert await guard.refusal(ALICE, A) == PAIR
    assert store.reads == reads
    clock.advance(BLOCK_CACHE_SECONDS)
    assert await guard.refusal(ALICE, A) == PAIR
    assert store.reads == reads + 1


@pytest.mark.parametrize("error", [down(), RuntimeError("a bug")])
@aio
async def test_the_store_failing_never_refuses_and_counts_in_this_process(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    guard, store, clock, m = make_guard()
    store.error = error
    with caplog.at_level(logging.INFO, "vmaild.guard"):
        assert await guard.refusal(ALICE, A) is None
        assert await fail(guard, 5) == [0, 0.5, 1, 2, 3]
        assert await guard.refusal(ALICE, A) == PAIR  # on this host's own evidence
        await guard.succeeded(ALICE, A)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len([r for r in warnings if "in this process only" in r.getMessage()]) == 1
    assert value(m, "vmaild_login_guard_local") == 1
    assert store.reads == 0 and store.records == 0
    # After retry_interval the database is tried again; it answers: shared counts again.
    store.error = None
    clock.advance(10)
    caplog.clear()
    with caplog.at_level(logging.INFO, "vmaild.guard"):
        assert await guard.refusal(ALICE, B) is None
    assert store.reads == 1
    assert value(m, "vmaild_login_guard_local") == 0
    assert sum("answers again" in r.getMessage() for r in caplog.records) == 1


@aio
async def test_no_store_at_all_counts_in_this_process() -> None:
    guard = Guard(guard_cfg(), None, Metrics(), FakeClock())
    await fail(guard, 5)
    assert await guard.refusal(ALICE, A) == PAIR


FAILED = re.compile(
    r"^login failed: client=(?P<client>\S+) service=(?P<service>\S+) "
    r"failures=(?P<n>\d+) delay=(?P<delay>[\d.]+)s$"
)


@aio
async def test_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    guard, _, _, _ = make_guard("block_pair_after = 2\nblock_login_after = 3\n")
    with caplog.at_level(logging.INFO, "vmaild.guard"):
        await guard.failed(ALICE, A, service="smtp", known=True)
        await guard.failed(ALICE, A, service="smtp", known=True)  # blocks the pair
        await guard.failed("s3cret-typed-as-name", B)  # unknown: withheld
        await guard.failed("s3cret-typed-as-name", B)
        await guard.failed("s3cret-typed-as-name", B)
        await guard.failed(ALICE, LOCAL, service="imap", known=True)
        await guard.failed(ALICE, None)
    lines = [r.getMessage() for r in caplog.records]
    matched = [FAILED.match(line) for line in lines]
    found = [(x["client"], x["service"], x["n"], x["delay"]) for x in matched if x]
    assert found == [
        ("203.0.113.7", "smtp", "1", "0"),
        ("203.0.113.7", "smtp", "2", "0.5"),
        ("198.51.100.9", "-", "1", "0"),
        ("198.51.100.9", "-", "2", "0.5"),
        ("198.51.100.9", "-", "3", "1"),
    ]
    assert "login failed from a trusted network: client=127.0.0.1 service=imap" in "\n".join(lines)
    blocks = [line for line in lines if line.startswith("login blocked:")]
    assert blocks == [
        f"login blocked: kind=pair client=203.0.113.7 login={ALICE} failures=2 for=900s",
        "login blocked: kind=pair client=198.51.100.9 login=(withheld) failures=2 for=900s",
        "login blocked: kind=login client=198.51.100.9 login=(withheld) failures=3 for=900s",
        f"login blocked: kind=login client=127.0.0.1 login={ALICE} failures=3 for=900s",
    ]
    assert not any("s3cret" in line for line in lines)
    assert len(lines) == 6 + len(blocks)  # the authpipe failure logs no guard line


@aio
async def test_the_fallback_store_is_bounded() -> None:
    guard, store, _, _ = make_guard("fail_tracked = 10\n")
    store.error = down()
    for i in range(100):
        await guard.failed(f"user{i}@example.org", None)
    assert isinstance(guard.local, MemoryStore) and len(guard.local) == 10
