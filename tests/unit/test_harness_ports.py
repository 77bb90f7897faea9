"""The test harness's free_port: distinct, bindable, and clear of outgoing connections."""

from __future__ import annotations

import socket

import pytest

from harness.common import ports


def test_free_port_never_repeats_within_a_process() -> None:
    handed = [ports.free_port() for _ in range(300)]
    assert len(set(handed)) == len(handed)


def test_free_port_stays_below_the_ephemeral_range() -> None:
    low, _high = ports._ephemeral_range()
    first, last = ports._candidate_range()
    assert last < low or (first, last) == ports._FALLBACK_RANGE
    assert all(first <= ports.free_port() <= last for _ in range(20))


class _Scripted:
    """Stands in for the random source: yields the given ports in order."""

    def __init__(self, picks: list[int]) -> None:
        self.picks = picks

    def randint(self, _low: int, _high: int) -> int:
        return self.picks.pop(0)


def test_free_port_skips_a_port_someone_is_listening_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as busy:
        busy.bind((ports.LOOPBACK, 0))
        busy.listen()
        taken = busy.getsockname()[1]
        spare = ports.free_port()
        ports._handed_out.discard(spare)
        monkeypatch.setattr(ports, "_random", _Scripted([taken, spare]))
        assert ports.free_port() == spare


def test_free_port_skips_a_port_it_already_handed_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = ports.free_port()
    spare = ports.free_port()
    ports._handed_out.discard(spare)
    monkeypatch.setattr(ports, "_random", _Scripted([given, spare]))
    assert ports.free_port() == spare


def test_free_port_gives_up_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    given = ports.free_port()
    monkeypatch.setattr(ports, "_random", _Scripted([given] * 200))
    with pytest.raises(RuntimeError, match="no free port"):
        ports.free_port()
