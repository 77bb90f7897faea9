"""vmaild.auth.limits: failure delays with a fake clock, and LocalGuard on them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from vmaild.auth.limits import FailureLimits, LocalGuard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def limits(clock: Clock, **kw: float) -> FailureLimits:
    args = {"base": 0.5, "cap": 3.0, "window": 900.0, "max_entries": 1000, **kw}
    return FailureLimits(args["base"], args["cap"], args["window"], int(args["max_entries"]), clock)


def test_delays_double_from_the_second_failure_and_are_capped(clock: Clock) -> None:
    fl = limits(clock)
    delays = []
    for _ in range(7):
        delays.append(fl.failed("joe@example.test"))
        clock.now += 1
    assert delays == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert fl.count("joe@example.test") == 7


def test_the_cap_stays_well_under_what_clients_wait(clock: Clock) -> None:
    fl = limits(clock)
    assert max(fl.failed("x") for _ in range(100)) == 3.0
    assert fl.delay_for(10_000) == 3.0  # no overflow for long runs


def test_success_resets(clock: Clock) -> None:
    fl = limits(clock)
    fl.failed("joe")
    fl.failed("joe")
    fl.succeeded("JOE")  # login names are compared case-insensitively
    assert fl.count("joe") == 0
    assert fl.failed("joe") == 0.0


def test_failures_are_forgotten_after_the_window(clock: Clock) -> None:
    fl = limits(clock, window=60)
    for _ in range(4):
        fl.failed("joe")
    clock.now += 59
    assert fl.failed("joe") == 3.0
    clock.now += 60
    assert fl.count("joe") == 0
    assert fl.failed("joe") == 0.0


def test_accounts_are_independent(clock: Clock) -> None:
    fl = limits(clock)
    for _ in range(3):
        fl.failed("joe")
    assert fl.failed("ann") == 0.0
    assert fl.failed("joe") == 2.0


def test_memory_is_bounded(clock: Clock) -> None:
    fl = limits(clock, max_entries=100)
    for i in range(10_000):
        fl.failed(f"user{i}@example.test")
    assert len(fl) == 100
    # The most recent ones are kept.
    assert fl.count("user9999@example.test") == 1
    assert fl.count("user0@example.test") == 0


def test_zero_base_switches_delays_off(clock: Clock) -> None:
    fl = limits(clock, base=0)
    assert [fl.failed("joe") for _ in range(5)] == [0.0] * 5


def test_wait_left_after_each_failure(clock: Clock) -> None:
    fl = limits(clock)
    fl.failed("joe@x")
    assert fl.wait_left("joe@x") == 0  # a typo costs nothing
    fl.failed("JOE@x")
    assert fl.wait_left("joe@x") == 0.5
    clock.now += 0.4
    assert fl.wait_left("joe@x") == pytest.approx(0.1)
    clock.now += 0.1
    assert fl.wait_left("joe@x") == 0
    assert fl.wait_left("ann@x") == 0


def test_local_guard_refuses_inside_the_wait() -> None:
    clock = Clock()
    guard = LocalGuard(limits(clock))

    async def run() -> list[object]:
        kw: dict[str, Any] = {"service": "imap", "known": True, "can_wait": False}
        out: list[object] = [await guard.failed("joe@x", None, **kw)]
        out.append(await guard.failed("joe@x", None, **kw))
        out.append(await guard.refusal("joe@x", None, can_wait=False))
        out.append(await guard.refusal("ann@x", None, can_wait=False))
        clock.now += 0.5
        out.append(await guard.refusal("joe@x", None, can_wait=False))
        await guard.failed("joe@x", None, **kw)
        await guard.succeeded("joe@x", None)
        out.append(await guard.refusal("joe@x", None, can_wait=False))
        return out

    assert asyncio.run(run()) == [0.0, 0.5, "login", None, None, None]
