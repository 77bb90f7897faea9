"""Pending changes (read-your-writes): GTID positions, which keys a pending change holds
back from "not found", expiry and the bound on their number."""

from __future__ import annotations

import pytest

from vmaild import pending
from vmaild.pending import PendingChanges, covers, parse_gtids


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0-1-42", {0: 42}),
        ("0-1-42,1-2-7", {0: 42, 1: 7}),
        ("0-1-42, 0-2-40", {0: 42}),
        ("", {}),
        ("0-1", None),
        ("a-b-c", None),
    ],
)
def test_parse_gtids(text: str, parsed: object) -> None:
    assert parse_gtids(text) == parsed


@pytest.mark.parametrize(
    ("position", "gtid", "applied"),
    [
        ("0-1-42", "0-1-42", True),
        ("0-1-43", "0-1-42", True),
        ("0-2-50", "0-1-42", True),  # another server wrote later in the same domain
        ("0-1-41", "0-1-42", False),
        ("", "0-1-42", False),
        ("1-1-100", "0-1-42", False),  # that domain not reached at all
        ("0-1-42,1-1-3", "0-1-40,1-1-3", True),
        ("0-1-42,1-1-2", "0-1-40,1-1-3", False),
    ],
)
def test_covers(position: str, gtid: str, applied: bool) -> None:
    assert covers(position, gtid) is applied


def test_holds_back_the_notified_keys_until_applied() -> None:
    p = PendingChanges(Clock())
    assert not p.holds_back("a@d.test", "+")
    p.add("0-1-42", ["new@d.test", "@e.test"])
    assert p.holds_back("new@d.test", "+")
    assert p.holds_back("new+tag@d.test", "+")
    assert p.holds_back("anyone@e.test", "+")  # a catch-all: the whole domain
    assert not p.holds_back("other@d.test", "+")
    assert p.settle("0-1-41") == 1 and p.holds_back("new@d.test", "+")
    assert p.settle("0-1-42") == 0 and not p.holds_back("new@d.test", "+")


def test_unknown_keys_hold_back_everything() -> None:
    p = PendingChanges(Clock())
    p.add("0-1-42", None)
    assert p.holds_back("whoever@wherever.test", "")


def test_a_gtid_that_never_arrives_is_forgotten_after_max_age() -> None:
    clock = Clock()
    p = PendingChanges(clock)
    p.add("0-1-42", ["a@d.test"])
    clock.now += pending.MAX_AGE - 1
    assert p.holds_back("a@d.test", "")
    clock.now += 1
    assert not p.holds_back("a@d.test", "")
    assert p.settle("") == 0


def test_too_many_merge_into_one_that_covers_every_key() -> None:
    p = PendingChanges(Clock())
    for i in range(pending.MAX_ITEMS + 1):
        p.add(f"0-1-{i + 1}", [f"u{i}@d.test"])
    assert len(p) == 1 and p.holds_back("unrelated@x.test", "")
    assert p.settle(f"0-1-{pending.MAX_ITEMS + 1}") == 0
