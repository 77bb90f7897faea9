"""harness.stack.ledger: how the fault-injection run judges each answer."""

from __future__ import annotations

import pytest

from harness.stack.ledger import (
    ABSENT,
    DYNAMIC,
    EXISTS,
    LOGIN,
    LOOKUP,
    POLICY,
    RIGHT,
    WRONG,
    Answer,
    Ledger,
    Phase,
    figures,
    table,
)

KEY = "new0@example.test"


def lookup(outcome: str, t0: float, t1: float, host: str = "A", key: str = KEY) -> Answer:
    expect = DYNAMIC if key == KEY else EXISTS
    return Answer(host, LOOKUP, key, expect, t0, t1, outcome, outcome)


@pytest.fixture
def ledger() -> Ledger:
    """KEY created by vmailctl over [10, 11] telling host A, removed over [20, 21] by B."""
    led = Ledger()
    led.begin(KEY)
    led.record(KEY, True, 10.0, 11.0, True, "A")
    led.record(KEY, False, 20.0, 21.0, True, "B")
    return led


@pytest.mark.parametrize(
    ("outcome", "t0", "t1", "host", "kind", "violation"),
    [
        ("notfound", 5.0, 5.1, "A", "notfound", False),  # before the creation
        ("notfound", 10.5, 10.6, "A", "notfound", False),  # while vmailctl ran: either
        ("found", 10.5, 10.6, "B", "found", False),
        ("found", 12.0, 12.1, "B", "found", False),
        ("notfound", 12.0, 12.1, "B", "stale", False),  # not told: stale, allowed
        ("notfound", 12.0, 12.1, "A", "stale", True),  # told: never "not found"
        ("notfound", 9.0, 12.0, "A", "notfound", False),  # the request spans the change
        ("4xx", 12.0, 12.1, "A", "4xx", False),  # a temporary failure is allowed
        ("found", 22.0, 22.1, "A", "stale", False),  # removed, still found
        ("notfound", 22.0, 22.1, "A", "notfound", False),
        ("found", 5.0, 5.1, "A", "5xx", True),  # found before it ever existed
    ],
)
def test_judge(
    ledger: Ledger, outcome: str, t0: float, t1: float, host: str, kind: str, violation: bool
) -> None:
    got, why, _age = ledger.judge(lookup(outcome, t0, t1, host))
    assert got == kind
    assert (why is not None) == violation


def test_a_failed_command_leaves_the_key_unjudged() -> None:
    led = Ledger()
    led.record(KEY, True, 10.0, 11.0, False, "A")
    assert led.judge(lookup("notfound", 12.0, 12.1)) == ("notfound", None, 0.0)
    assert led.judge(lookup("found", 12.0, 12.1)) == ("found", None, 0.0)


def test_the_stale_age_is_counted_from_the_command_s_return(ledger: Ledger) -> None:
    assert ledger.judge(lookup("found", 23.5, 23.6))[2] == pytest.approx(2.5)


def test_figures_count_violations_and_recovery(ledger: Ledger) -> None:
    phase = Phase("2 primary", 0.0, fault_start=10.0, fault_end=20.0, end=30.0)
    phase.writer_fault = True
    answers = [
        lookup("found", 1.0, 1.1, key="alice@example.test"),
        lookup("4xx", 12.0, 13.5, key="alice@example.test"),  # a failed read in the fault
        lookup("notfound", 14.0, 14.1, key="alice@example.test"),  # an existing one: bad
        Answer("A", LOOKUP, "nobody@example.test", ABSENT, 2.0, 2.1, "notfound"),
        Answer("A", LOGIN, "u", RIGHT, 3.0, 3.1, "fail"),
        Answer("A", LOGIN, "d", WRONG, 3.0, 3.1, "ok"),
        Answer("A", POLICY, "s", "", 15.0, 15.1, "4xx"),  # counting down: by design
        Answer("A", POLICY, "s", "", 21.0, 22.0, "accepted"),
        Answer("B", LOGIN, "u", RIGHT, 3.0, 3.1, "ok"),  # another host
        Answer("A", LOOKUP, "x", EXISTS, 40.0, 40.1, "4xx"),  # another phase
    ]
    f = figures(phase, "A", answers, ledger)
    assert f.lookups["found"] == 1 and f.lookups["4xx"] == 1
    assert f.existing_bad == 1 and f.right_fail == 1 and f.wrong_ok == 1
    assert len(f.violations) == 3
    assert f.recovery == pytest.approx(14.1 - 10.0)
    assert f.counting_recovery == pytest.approx(2.0)
    assert f.first_good == {"policy": pytest.approx(2.0)}
    text = table([phase], ["A"], {("2 primary", "A"): f})
    assert "right password FAIL: 1" in text and "first counted policy answer 2.00s" in text
