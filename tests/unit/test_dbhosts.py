"""dbhosts.HostState: the order hosts are tried in, by role, outage and replica lag."""

from __future__ import annotations

import pytest

from vmaild.dbhosts import HostState
from vmaild.values import DatabaseHost, parse_db_host

R1, R2, R3 = (parse_db_host(f"10.0.0.{i}") for i in (1, 2, 3))
W = parse_db_host("10.0.0.9")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(
    max_lag: float = 30.0, reads: tuple[DatabaseHost, ...] = (R1, R2, R3)
) -> tuple[HostState, Clock]:
    clock = Clock()
    return HostState(reads, (W,), retry_interval=10, max_lag=max_lag, clock=clock), clock


def test_reads_and_writes_have_their_own_lists() -> None:
    hosts, _ = state()
    assert hosts.order() == [R1, R2, R3]
    assert hosts.order(write=True) == [W]
    assert hosts.preferred() == R1 and hosts.preferred(write=True) == W


def test_a_host_that_failed_goes_last_for_retry_interval_then_back() -> None:
    hosts, clock = state()
    hosts.mark_down(R1)
    assert hosts.order() == [R2, R3, R1]  # still tried when all else fails
    assert hosts.is_down(R1)
    clock.now += 9.9
    assert hosts.preferred() == R2
    clock.now += 0.2
    assert hosts.preferred() == R1 and not hosts.is_down(R1)


def test_a_connection_that_works_clears_the_mark_at_once() -> None:
    hosts, _ = state()
    hosts.mark_down(R1)
    assert hosts.mark_up(R1) is True
    assert hosts.mark_up(R1) is False
    assert hosts.preferred() == R1


def test_down_is_shared_by_both_roles() -> None:
    hosts = HostState((R1, W), (W, R1), retry_interval=10)
    hosts.mark_down(W)
    assert hosts.order() == [R1, W]
    assert hosts.order(write=True) == [R1, W]


@pytest.mark.parametrize(
    ("lags", "expected"),
    [
        ({}, [R1, R2, R3]),  # unknown lag: within bound
        ({R1: 0.0, R2: 0.0, R3: 0.0}, [R1, R2, R3]),
        ({R1: 30.0}, [R1, R2, R3]),  # the bound itself is within
        ({R1: 31.0}, [R2, R3, R1]),
        ({R1: 100.0, R2: 50.0}, [R3, R2, R1]),  # beyond: least lagged first
        ({R1: 100.0, R2: 50.0, R3: 70.0}, [R2, R3, R1]),  # none within: least lagged
        ({R1: 40.0, R2: 40.0, R3: 40.0}, [R1, R2, R3]),  # equal: configured order
    ],
)
def test_lag_above_max_lag_moves_a_host_back(
    lags: dict[DatabaseHost, float], expected: list[DatabaseHost]
) -> None:
    hosts, _ = state()
    for host, lag in lags.items():
        hosts.set_lag(host, lag)
    assert hosts.order() == expected
    assert hosts.order(write=True) == [W]  # lag never touches the writer


def test_lag_never_brings_a_host_that_is_down_forward() -> None:
    hosts, _ = state()
    hosts.set_lag(R2, 100.0)
    hosts.set_lag(R3, 100.0)
    hosts.mark_down(R1)
    assert hosts.order() == [R2, R3, R1]


def test_max_lag_zero_switches_lag_off_and_unknown_resets() -> None:
    hosts, _ = state(max_lag=0)
    hosts.set_lag(R1, 1e6)
    assert hosts.preferred() == R1
    hosts, _ = state()
    hosts.set_lag(R1, 1e6)
    assert hosts.preferred() == R2
    hosts.set_lag(R1, None)
    assert hosts.lag(R1) is None and hosts.preferred() == R1
    hosts.set_lag(R1, -1.0)  # clocks never make lag negative
    assert hosts.lag(R1) == 0.0
