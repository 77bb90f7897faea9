"""The sending limits' check-and-count transaction: counted only within the limit, the
lock row taken first, deadlocks and lock wait timeouts retried a bounded number of
times, then the check's fail action; any other error is not retried."""

from __future__ import annotations

import pytest

from tests.unit.fakes_policy import FakePolicyDB, decide, decisions, make_service, request

LOGIN = "alice@example.com"
AUTH = {"sasl_username": LOGIN, "sasl_method": "PLAIN"}
LIMITED = "ratelimit_messages = 2\nratelimit_recipients = 0\nratelimit_prune_interval = 0\n"


def eom(instance: str) -> object:
    return request(instance=instance, protocol_state="END-OF-MESSAGE", recipient_count=1, **AUTH)


def counted(db: FakePolicyDB) -> int:
    return sum(c[0] for (login, b), c in db.counters.items() if login == LOGIN)


def test_counts_only_within_the_limit_and_takes_the_lock_first() -> None:
    db = FakePolicyDB()
    service, _ = make_service(db, LIMITED)
    answers = [decide(service, eom(f"i{i}")) for i in range(4)]
    assert answers == ["DUNNO", "DUNNO"] + ["450 4.7.1 Sending limit exceeded"] * 2
    assert counted(db) == 2
    # Per message: the advisory read, then lock row, window, update (or a rollback).
    assert db.kinds()[:4] == ["select", "lock", "select", "update"]


@pytest.mark.parametrize("errno", [1213, 1205])
def test_conflicts_are_retried(errno: int) -> None:
    db = FakePolicyDB(conflicts=2, conflict_errno=errno)
    service, _ = make_service(db, LIMITED + "ratelimit_retries = 3\n")
    assert decide(service, eom("a")) == "DUNNO"
    assert db.kinds().count("conflict") == 2 and counted(db) == 1


@pytest.mark.parametrize("errno", [1213, 1205])
def test_retries_are_bounded_then_the_fail_action_applies(errno: int) -> None:
    db = FakePolicyDB(conflicts=10, conflict_errno=errno)
    service, metrics = make_service(
        db, LIMITED + "ratelimit_retries = 2\nratelimit_fail_action = DEFER_IF_PERMIT busy\n"
    )
    assert decide(service, eom("a")) == "DEFER_IF_PERMIT busy"
    assert db.kinds().count("conflict") == 3  # the first try and two retries
    assert counted(db) == 0
    assert decisions(metrics) == {("ratelimit_failed", "DEFER_IF_PERMIT"): 1}


def test_other_errors_are_not_retried() -> None:
    db = FakePolicyDB(conflicts=5, conflict_errno=1062)
    service, _ = make_service(db, LIMITED + "ratelimit_retries = 3\n")
    assert decide(service, eom("a")) == "DUNNO"  # the default fail action
    assert db.kinds().count("conflict") == 1
