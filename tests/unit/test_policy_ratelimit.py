"""Sending limits: the sliding-window arithmetic with a fake clock, and the check's
counting at END-OF-MESSAGE or RCPT against a fake send_counters table."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.fakes_policy import (
    Clock,
    FakePolicyDB,
    decide,
    decisions,
    make_service,
    request,
)
from vmaild.policy.ratelimit import bucket_of, window_totals

T0 = 1_700_000_040.0  # a multiple of 60: bucket 28_333_334 starts here
B0 = bucket_of(T0)
LOGIN = "alice@example.com"
AUTH = {
    "sasl_method": "plain",
    "sasl_username": LOGIN,
    "sender": LOGIN,
    "recipient": "x@remote.example",
}


def test_bucket_of() -> None:
    assert T0 % 60 == 0
    assert bucket_of(T0) == bucket_of(T0 + 59.9) == bucket_of(T0 + 60) - 1
    assert bucket_of(-1) == -1


@pytest.mark.parametrize(
    ("rows", "now", "window", "expected"),
    [
        ([], T0, 3600, (0, 0)),
        ([(B0, 3, 7)], T0 + 30, 3600, (3, 7)),
        # A bucket an hour old: with now exactly on a bucket edge the window starts at B0-60's
        # start, so that bucket counts fully; 30 s later only half of it is inside.
        ([(B0 - 60, 10, 20)], T0, 3600, (10, 20)),
        ([(B0 - 60, 10, 20)], T0 + 30, 3600, (5, 10)),
        ([(B0 - 60, 10, 20)], T0 + 45, 3600, (2.5, 5)),
        ([(B0 - 60, 10, 20)], T0 + 60, 3600, (0, 0)),  # slid out
        ([(B0 - 61, 10, 20)], T0, 3600, (0, 0)),
        ([(B0 - 60, 10, 20), (B0 - 1, 1, 1), (B0, 2, 2)], T0 + 15, 3600, (10.5, 18)),
        ([(B0 + 5, 4, 4)], T0, 3600, (4, 4)),  # a clock ahead of ours still counts
        ([(B0 - 2, 6, 6)], T0 + 30, 120, (3, 3)),  # short windows too
        ([(str(B0), "2", b"3")], T0, 60, (2, 3)),  # driver types: str, bytes
    ],
)
def test_window_totals(rows, now: float, window: int, expected) -> None:  # type: ignore[no-untyped-def]
    assert window_totals(rows, now, window) == pytest.approx(expected)


def limited(extra: str = "", clock: Clock | None = None):  # type: ignore[no-untyped-def]
    """Only the limits on: 3 messages, 5 recipients per 600 s unless ``extra`` says otherwise."""
    db = FakePolicyDB()
    clock = clock or Clock(T0)
    settings = {
        "sender_check": "no",
        "recipient_check": "no",
        "quota_check": "no",
        "ratelimit_messages": "3",
        "ratelimit_recipients": "5",
        "ratelimit_window": "600",
    }
    for line in extra.splitlines():
        key, _, value = line.partition("=")
        settings[key.strip()] = value.strip()
    service, metrics = make_service(
        db, "".join(f"{k} = {v}\n" for k, v in settings.items()), clock=clock
    )
    return service, metrics, db, clock


def send(service, n: int, instance: str, state_eom: bool = True) -> list[str | None]:  # type: ignore[no-untyped-def]
    """One transaction: n RCPTs, then END-OF-MESSAGE; every answer."""
    out = [decide(service, request(instance=instance, **AUTH)) for _ in range(n)]
    if state_eom:
        out.append(
            decide(
                service,
                request(
                    instance=instance,
                    protocol_state="END-OF-MESSAGE",
                    recipient_count=sum(a == "DUNNO" for a in out),
                    **{**AUTH, "recipient": ""},
                ),
            )
        )
    return out


def test_messages_counted_at_end_of_message() -> None:
    service, metrics, db, _ = limited()
    for i in range(3):
        assert send(service, 1, f"i{i}") == ["DUNNO", "DUNNO"]
    assert db.counters == {(LOGIN, B0): [3, 3]}
    assert send(service, 1, "i3", state_eom=False) == ["450 4.7.1 Sending limit exceeded"]
    assert decisions(metrics)[("ratelimit", "450")] == 1


def test_recipients_of_one_transaction_add_up_before_counting() -> None:
    service, _, db, _ = limited()
    assert send(service, 7, "big") == ["DUNNO"] * 5 + ["450 4.7.1 Sending limit exceeded"] * 2 + [
        "DUNNO"
    ]
    assert db.counters == {(LOGIN, B0): [1, 5]}
    assert send(service, 1, "next", state_eom=False) == ["450 4.7.1 Sending limit exceeded"]


def test_aborted_transactions_do_not_count_by_default() -> None:
    service, _, db, _ = limited()
    for i in range(10):
        assert send(service, 1, f"i{i}", state_eom=False) == ["DUNNO"]
    assert db.counters == {}


def test_the_window_slides() -> None:
    service, _, db, clock = limited()
    for i in range(3):
        send(service, 1, f"i{i}")
    assert send(service, 1, "late", state_eom=False)[0].startswith("450")
    clock.now += 300
    assert send(service, 1, "still", state_eom=False)[0].startswith("450")
    clock.now += 299  # 599 s later the first bucket is still (barely) inside the window
    assert send(service, 1, "barely", state_eom=False)[0].startswith("450")
    clock.now += 60
    assert send(service, 1, "free") == ["DUNNO", "DUNNO"]


def test_counting_at_rcpt() -> None:
    service, _, db, _ = limited("ratelimit_count_state = RCPT\n")
    assert send(service, 2, "a", state_eom=False) == ["DUNNO", "DUNNO"]
    assert db.counters == {(LOGIN, B0): [1, 2]}
    # END-OF-MESSAGE is not even asked about in this mode.
    db.queries.clear()
    assert (
        decide(
            service,
            request(instance="a", protocol_state="END-OF-MESSAGE", recipient_count=2, **AUTH),
        )
        == "DUNNO"
    )
    assert db.queries == []
    assert send(service, 4, "b", state_eom=False) == ["DUNNO"] * 3 + [
        "450 4.7.1 Sending limit exceeded"
    ]
    assert db.counters == {(LOGIN, B0): [2, 5]}


def test_limits_can_be_switched_off() -> None:
    service, _, db, _ = limited("ratelimit_messages = 0\n")
    for i in range(5):
        assert send(service, 1, f"i{i}") == ["DUNNO", "DUNNO"]
    assert send(service, 1, "six", state_eom=False)[0].startswith("450")  # 5 recipients
    service, _, db, _ = limited("ratelimit_messages = 0\nratelimit_recipients = 0\n")
    assert service.ratelimit is None
    assert send(service, 9, "x") == ["DUNNO"] * 10
    assert db.queries == []


def test_unauthenticated_mail_is_not_limited() -> None:
    service, _, db, _ = limited()
    for _ in range(10):
        assert decide(service, request(recipient="a@example.com")) == "DUNNO"
    assert db.queries == []


def test_login_is_case_insensitive() -> None:
    service, _, db, _ = limited()
    decide(service, request(instance="i", **{**AUTH, "sasl_username": "Alice@Example.COM"}))
    assert db.queries[0][1]["login"] == LOGIN


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", "DUNNO"),
        (
            "ratelimit_fail_action = DEFER_IF_PERMIT Limits unavailable\n",
            "DEFER_IF_PERMIT Limits unavailable",
        ),
    ],
)
def test_database_down(extra: str, expected: str) -> None:
    service, metrics, db, _ = limited(extra)
    db.down = True
    assert decide(service, request(instance="i", **AUTH)) == expected
    assert (
        decide(
            service,
            request(instance="i", protocol_state="END-OF-MESSAGE", recipient_count=1, **AUTH),
        )
        == expected
    )


def test_old_buckets_are_pruned_now_and_then() -> None:
    db = FakePolicyDB()
    clock = Clock(T0)
    db.counters = {(LOGIN, B0 - 100): [1, 1], (LOGIN, B0 - 11): [1, 1], (LOGIN, B0 - 3): [1, 1]}
    service, _ = make_service(
        db,
        "sender_check = no\nrecipient_check = no\nquota_check = no\n"
        "ratelimit_window = 600\nratelimit_prune_interval = 300\n",
        clock=clock,
    )

    async def run() -> None:
        await service.decide(request(instance="i", **AUTH))
        await asyncio.sleep(0)  # let the background prune run
        await asyncio.sleep(0)

    asyncio.run(run())
    # The window starts in bucket B0-10; one more is kept for hosts whose clock runs late.
    assert sorted(db.counters) == [(LOGIN, B0 - 11), (LOGIN, B0 - 3)]
    assert db.kinds().count("prune") == 1
    asyncio.run(run())
    assert db.kinds().count("prune") == 1  # not again within the interval
    clock.now += 301
    asyncio.run(run())
    assert db.kinds().count("prune") == 2


def test_one_read_per_transaction() -> None:
    service, _, db, _ = limited("ratelimit_prune_interval = 0\n")
    # One advisory read per mail transaction; each count is its own check-and-count
    # transaction on the writer (lock row, window, update: policy/counting.py).
    count = ["lock", "select", "update"]
    assert send(service, 3, "t") == ["DUNNO"] * 4
    assert db.kinds() == ["select", *count]
    db.queries.clear()
    service, _, db, _ = limited("ratelimit_count_state = RCPT\nratelimit_prune_interval = 0\n")
    assert send(service, 3, "t", state_eom=False) == ["DUNNO"] * 3
    assert db.kinds() == ["select", *count * 3]
    assert db.counters == {(LOGIN, B0): [1, 3]}


def test_end_of_message_without_its_rcpts_reads_the_totals() -> None:
    # The RCPTs went to another vmaild (or this one restarted): the totals are read then.
    service, _, db, _ = limited("ratelimit_prune_interval = 0\n")
    db.counters[(LOGIN, B0)] = [3, 3]
    got = decide(
        service,
        request(instance="elsewhere", protocol_state="END-OF-MESSAGE", recipient_count=1, **AUTH),
    )
    assert got == "450 4.7.1 Sending limit exceeded"
    assert db.kinds() == ["select"]
