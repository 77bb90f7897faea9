"""The change log's rules: which entries a logged key affects (table-driven), and the
reader's position: ids applied once, holes waited for then given up, a part of the log
missed (pruned past the position, or emptied) is a full flush."""

from __future__ import annotations

import pytest

from vmaild.changes import HOLE_SETTLE, MAX_HOLES, Drop, LogPosition, Scope, affected, drops_for

A, D, ALL = Scope.ADDRESS, Scope.DOMAIN, Scope.ALL


@pytest.mark.parametrize(
    ("table", "key", "drop"),
    [
        ("users", "a@d.test", Drop(A, "a@d.test")),
        ("users", " A@D.Test ", Drop(A, "a@d.test")),
        ("forwardings", "alias@d.test", Drop(A, "alias@d.test")),
        ("forwardings", "@d.test", Drop(D, "d.test")),  # a catch-all: every address
        ("sender_grants", "login@d.test", Drop(A, "login@d.test")),
        ("domains", "d.test", Drop(D, "d.test")),
        ("transport", "d.test", Drop(D, "d.test")),
        ("transport", ".d.test", Drop(D, "d.test")),
        ("transport", "a@d.test", Drop(A, "a@d.test")),
        ("users", "", Drop(ALL)),
        ("forwardings", "@", Drop(ALL)),
        ("transport", ".", Drop(ALL)),
        ("anything", "x@y", Drop(A, "x@y")),
    ],
)
def test_drops_for(table: str, key: str, drop: Drop) -> None:
    assert drops_for(table, key) == drop


@pytest.mark.parametrize(
    ("key", "drop", "expected"),
    [
        ("a@d.test", Drop(A, "a@d.test"), True),
        ("A+x@d.test", Drop(A, "a@d.test"), True),
        ("ab@d.test", Drop(A, "a@d.test"), False),
        ("a@e.test", Drop(A, "a@d.test"), False),
        ("b@d.test", Drop(D, "d.test"), True),
        ("d.test", Drop(D, "d.test"), True),
        ("@d.test", Drop(D, "d.test"), True),
        ("b@sub.d.test", Drop(D, "d.test"), False),
        ("anything", Drop(ALL), True),
    ],
)
def test_affected(key: str, drop: Drop, expected: bool) -> None:
    assert affected(key, drop, "+") is expected


def rows(*ids: int) -> list[tuple[int, str, str]]:
    return [(i, "users", f"u{i}@d") for i in ids]


def test_first_read_sets_the_position_with_a_flush() -> None:
    p = LogPosition()
    batch = p.advance(1, 10, rows(), now=0)
    assert batch.full_flush and p.done == 10
    assert p.baseline() == "log:10"
    assert LogPosition.from_baseline("log:10").done == 10
    assert LogPosition.from_baseline(7).done is None  # a counter baseline: no position


def test_rows_are_applied_once_in_order() -> None:
    p = LogPosition(done=10)
    batch = p.advance(1, 13, rows(11, 12, 13), now=0)
    assert not batch.full_flush and [k for _, k in batch.changes] == ["u11@d", "u12@d", "u13@d"]
    assert p.done == 13 and p.since() == 13
    assert p.advance(1, 13, rows(), now=1).changes == []


def test_a_hole_is_waited_for_then_given_up() -> None:
    p = LogPosition(done=10)
    # 12 committed before 11 (ids are taken at INSERT, not at COMMIT).
    assert [k for _, k in p.advance(1, 12, rows(12), now=0).changes] == ["u12@d"]
    assert p.done == 10 and p.since() == 12 and p.open_holes() == [11]
    # 11 arrives (asked for by id); 12 is not applied twice.
    batch = p.advance(1, 12, rows(11, 12), now=1)
    assert [k for _, k in batch.changes] == ["u11@d"] and p.done == 12
    # A rolled-back transaction's id never comes: given up after HOLE_SETTLE.
    p.advance(1, 14, rows(14), now=2)
    assert p.done == 12
    p.advance(1, 14, rows(14), now=2 + HOLE_SETTLE - 0.1)
    assert p.done == 12
    p.advance(1, 14, rows(14), now=2 + HOLE_SETTLE)
    assert p.done == 14 and not p.holes and not p.applied


def test_a_huge_jump_in_ids_is_not_waited_for() -> None:
    p = LogPosition(done=10)
    p.advance(1, 10 + MAX_HOLES + 5, rows(10 + MAX_HOLES + 5), now=0)
    assert p.done == 10 + MAX_HOLES + 5 and not p.holes


@pytest.mark.parametrize(
    ("lowest", "highest", "reason"),
    [
        (15, 20, "pruned before they were read"),  # 11..14 gone before this reader got there
        (1, 5, "emptied"),  # ids restarted below the position
    ],
)
def test_a_missed_part_of_the_log_is_a_full_flush(lowest: int, highest: int, reason: str) -> None:
    p = LogPosition(done=10, applied={12}, holes={11: 0.0})
    batch = p.advance(lowest, highest, rows(*range(max(lowest, 11), highest + 1)), now=0)
    assert batch.full_flush and reason in batch.reason
    assert p.done == highest and not p.applied and not p.holes


def test_pruning_up_to_the_position_is_no_gap() -> None:
    p = LogPosition(done=10)
    assert not p.advance(11, 12, rows(11, 12), now=0).full_flush
    assert not p.advance(None, None, rows(), now=0).full_flush  # an empty log: nothing new
    assert p.done == 12
