"""PolicyService: each check's allow / deny / fail-open / defer paths, with a fake database."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.fakes_policy import (
    BASE,
    FakePolicyDB,
    User,
    decide,
    decisions,
    make_service,
    request,
)
from vmaild import config
from vmaild.values import ConfigError

AUTH = {"sasl_method": "plain", "sasl_username": "alice@example.com"}


def db_with_users() -> FakePolicyDB:
    return FakePolicyDB(
        users={
            "alice@example.com": User(),
            "bob@example.com": User(active=0),
            "carol@off.example": User(),
            "dave@example.com": User(active=b"\x00"),  # BIT(1) column
        },
        domains={"example.com": 1, "off.example": 0},
        forwardings={
            "info@example.com": ("Bob@example.com, alice@example.com", 1),
            "old@example.com": ("alice@example.com", 0),
            "sales@example.com": ("bob@example.com", 1),
        },
        grants={
            ("alice@example.com", "boss@example.org"),
            ("alice@example.com", "@shared.example"),
        },
    )


# --- recipient state -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipient", "expected"),
    [
        ("alice@example.com", "DUNNO"),
        ("ALICE@Example.COM", "DUNNO"),
        ("bob@example.com", "550 5.2.1 Mailbox disabled"),
        ("BOB+news@example.com", "550 5.2.1 Mailbox disabled"),  # extension stripped
        ("carol@off.example", "550 5.2.1 Mailbox disabled"),  # domain inactive
        ("dave@example.com", "550 5.2.1 Mailbox disabled"),
        ("nobody@example.com", "DUNNO"),  # unknown: Postfix's maps decide
        ("info@example.com", "DUNNO"),  # an alias is no mailbox
        ("postmaster", "DUNNO"),  # bare name: no query at all
    ],
)
def test_recipient_state(recipient: str, expected: str) -> None:
    service, _ = make_service(db_with_users(), "ratelimit_check = no\n")
    assert decide(service, request(recipient=recipient)) == expected


def test_recipient_state_only_at_rcpt() -> None:
    db = db_with_users()
    service, _ = make_service(db)
    for state in ("CONNECT", "EHLO", "MAIL", "DATA", "END-OF-MESSAGE", "VRFY"):
        assert (
            decide(service, request(protocol_state=state, recipient="bob@example.com")) == "DUNNO"
        )
    assert db.queries == []


def test_recipient_actions_are_configurable() -> None:
    service, metrics = make_service(
        db_with_users(), "disabled_action = 450 4.2.1 Try later, mailbox off\n"
    )
    assert (
        decide(service, request(recipient="bob@example.com")) == "450 4.2.1 Try later, mailbox off"
    )
    assert decisions(metrics) == {("recipient", "450"): 1}


def test_recipient_check_off() -> None:
    db = db_with_users()
    service, _ = make_service(db, "recipient_check = no\nquota_check = no\n")
    assert decide(service, request(recipient="bob@example.com")) == "DUNNO"
    assert db.queries == []


@pytest.mark.parametrize(
    ("extra", "expected", "label"),
    [
        ("", "DUNNO", ("recipient_failed", "DUNNO")),
        (
            "recipient_fail_action = DEFER_IF_PERMIT Mailbox state unknown\n",
            "DEFER_IF_PERMIT Mailbox state unknown",
            ("recipient_failed", "DEFER_IF_PERMIT"),
        ),
        (
            "recipient_fail_action = 451 4.3.0 Try again later\n",
            "451 4.3.0 Try again later",
            ("recipient_failed", "451"),
        ),
        ("recipient_fail_action = close\n", None, ("recipient_failed", "NOREPLY")),
    ],
)
def test_recipient_database_down(extra: str, expected: str | None, label: tuple[str, str]) -> None:
    db = db_with_users()
    db.down = True
    service, metrics = make_service(db, extra)
    assert decide(service, request(recipient="bob@example.com")) == expected
    assert decisions(metrics) == {label: 1}


# --- quota (see test_policy_quota.py for the Maildir side) ---------------------------------


def _maildir(tmp_path, name: str, maildirsize: str | None = None, files: int = 0) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "example.com" / name
    for sub in ("cur", "new", "tmp"):
        (d / sub).mkdir(parents=True)
    if maildirsize is not None:
        (d / "maildirsize").write_text(maildirsize)
    for i in range(files):
        (d / "cur" / f"17000{i}.M1P1.host,S=100:2,S").write_bytes(b"x" * 100)


@pytest.mark.parametrize(
    ("quota_bytes", "quota_messages", "size", "expected"),
    [
        (0, 0, 0, "DUNNO"),  # no quota
        (10_000, 0, 0, "DUNNO"),  # 5000 used
        (10_000, 0, 5000, "DUNNO"),  # exactly fills it
        (10_000, 0, 5001, "452 4.2.2 Mailbox full"),  # the announced SIZE= does not fit
        (5000, 0, 0, "452 4.2.2 Mailbox full"),  # full already
        (0, 4, 0, "DUNNO"),  # 3 messages + 1
        (0, 3, 0, "452 4.2.2 Mailbox full"),
    ],
)
def test_quota_from_maildirsize(
    tmp_path,
    quota_bytes: int,
    quota_messages: int,
    size: int,  # type: ignore[no-untyped-def]
    expected: str,
) -> None:
    _maildir(tmp_path, "alice", "10000S\n  3000 2\n  2000 1\n")
    db = db_with_users()
    db.users["alice@example.com"] = User(quota_bytes=quota_bytes, quota_messages=quota_messages)
    service, metrics = make_service(db, "", base=_base(tmp_path))
    assert decide(service, request(recipient="alice@example.com", size=size)) == expected
    if expected != "DUNNO":
        assert decisions(metrics) == {("quota", "452"): 1}


def _base(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """The fake config with [mailbox] base pointing at tmp_path."""
    return BASE.replace("[policy]", f"[mailbox]\nbase = {tmp_path}\n\n[policy]")


def test_quota_counted_without_maildirsize(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _maildir(tmp_path, "alice", None, files=5)  # 5 x 100 bytes
    db = db_with_users()
    db.users["alice@example.com"] = User(quota_bytes=450)
    service, _ = make_service(db, "", base=_base(tmp_path))
    assert decide(service, request(recipient="alice@example.com")) == "452 4.2.2 Mailbox full"
    db.users["alice@example.com"] = User(quota_bytes=1000)
    assert decide(service, request(recipient="alice@example.com")) == "DUNNO"


def test_quota_552_and_custom_maildir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _maildir(tmp_path, "elsewhere", "100S\n100 1\n")
    db = db_with_users()
    db.users["alice@example.com"] = User(quota_bytes=100, maildir="example.com/elsewhere/")
    service, _ = make_service(db, "quota_action = 552 5.2.2 Mailbox full\n", base=_base(tmp_path))
    assert decide(service, request(recipient="alice@example.com")) == "552 5.2.2 Mailbox full"


def test_quota_missing_maildir_is_empty(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = db_with_users()
    db.users["alice@example.com"] = User(quota_bytes=100)
    service, _ = make_service(db, "", base=_base(tmp_path))
    assert decide(service, request(recipient="alice@example.com", size=50)) == "DUNNO"


def test_quota_path_traversal_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = db_with_users()
    db.users["alice@example.com"] = User(quota_bytes=100, maildir="../../etc/")
    service, metrics = make_service(db, "", base=_base(tmp_path))
    assert decide(service, request(recipient="alice@example.com")) == "DUNNO"
    assert decisions(metrics) == {("quota_failed", "DUNNO"): 1}


def test_disabled_wins_over_quota_and_quota_only_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _maildir(tmp_path, "bob", "10S\n10 1\n")
    db = db_with_users()
    db.users["bob@example.com"] = User(active=0, quota_bytes=5)
    service, _ = make_service(db, "", base=_base(tmp_path))
    assert decide(service, request(recipient="bob@example.com")) == "550 5.2.1 Mailbox disabled"
    service, _ = make_service(db, "recipient_check = no\n", base=_base(tmp_path))
    assert decide(service, request(recipient="bob@example.com")) == "452 4.2.2 Mailbox full"


# --- sender ownership ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("alice@example.com", "DUNNO"),  # the login itself (no query)
        ("Alice@EXAMPLE.com", "DUNNO"),
        ("alice+lists@example.com", "DUNNO"),  # extension of the login
        ("", "DUNNO"),  # the null sender
        ("info@example.com", "DUNNO"),  # alias delivering to alice (among others)
        ("info+x@example.com", "DUNNO"),  # ... with an extension
        ("boss@example.org", "DUNNO"),  # granted address
        ("anyone@shared.example", "DUNNO"),  # granted @domain
        ("old@example.com", "553 5.7.1 Sender address not owned by alice@example.com"),  # inactive
        ("sales@example.com", "553 5.7.1 Sender address not owned by alice@example.com"),
        ("bob@example.com", "553 5.7.1 Sender address not owned by alice@example.com"),
        ("boss@other.example.org", "553 5.7.1 Sender address not owned by alice@example.com"),
    ],
)
def test_sender_ownership(sender: str, expected: str) -> None:
    service, _ = make_service(db_with_users(), "ratelimit_check = no\n")
    assert decide(service, request(sender=sender, recipient="x@remote.example", **AUTH)) == expected


def test_sender_login_case_and_unauthenticated() -> None:
    db = db_with_users()
    service, _ = make_service(db, "ratelimit_check = no\n")
    assert decide(
        service,
        request(
            sender="bob@example.com", recipient="x@r.example", sasl_username="ALICE@example.com"
        ),
    ).startswith("553 ")
    db.queries.clear()
    # No SASL login: nothing to own, no query.
    assert decide(service, request(sender="bob@example.com", recipient="x@r.example")) == "DUNNO"
    assert db.kinds() == ["recipient"]


def test_sender_decided_once_per_transaction() -> None:
    db = db_with_users()
    service, _ = make_service(db, "ratelimit_check = no\nrecipient_check = no\nquota_check = no\n")
    for rcpt in ("a@r.example", "b@r.example", "c@r.example"):
        assert (
            decide(service, request(sender="info@example.com", recipient=rcpt, **AUTH)) == "DUNNO"
        )
    assert db.kinds() == ["sender"]
    decide(service, request(sender="info@example.com", instance="other", **AUTH))
    assert db.kinds() == ["sender", "sender"]


def test_sender_action_template_cannot_break_the_reply() -> None:
    service, _ = make_service(
        db_with_users(),
        "ratelimit_check = no\nsender_action = 553 5.7.1 <{sender}> is not yours, {login}\n",
    )
    got = decide(
        service,
        request(
            sender="bob@example.com", recipient="x@r.example", sasl_username="alice@example.com\r"
        ),
    )
    assert got == "553 5.7.1 <bob@example.com> is not yours, alice@example.com"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", "DEFER_IF_PERMIT Sender address check temporarily unavailable"),
        ("sender_fail_action = DUNNO\n", "DUNNO"),
        ("sender_fail_action = close\n", None),
    ],
)
def test_sender_database_down(extra: str, expected: str | None) -> None:
    db = db_with_users()
    db.down = True
    service, _ = make_service(db, "ratelimit_check = no\n" + extra)
    assert (
        decide(service, request(sender="bob@example.com", recipient="x@r.example", **AUTH))
        == expected
    )


def test_fail_open_goes_on_with_the_next_check() -> None:
    db = db_with_users()
    service, metrics = make_service(db, "ratelimit_check = no\nsender_fail_action = DUNNO\n")

    calls = 0
    real = db.fetch

    async def flaky(sql, params=()):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            db.down = True
            try:
                return await real(sql, params)
            finally:
                db.down = False
        return await real(sql, params)

    db.fetch = flaky  # type: ignore[method-assign]
    got = decide(service, request(sender="bob@example.com", recipient="bob@example.com", **AUTH))
    assert got == "550 5.2.1 Mailbox disabled"
    assert decisions(metrics) == {("sender_failed", "DUNNO"): 1, ("recipient", "550"): 1}


# --- time bound, request types, validation -------------------------------------------------


def test_slow_database_gets_the_fail_action_in_time() -> None:
    db = db_with_users()
    db.delay = 5.0
    service, metrics = make_service(db, "request_timeout = 0.1\n")

    async def timed() -> tuple[str | None, float]:
        loop = asyncio.get_running_loop()
        t = loop.time()
        action = await service.decide(request(sender="bob@example.com", **AUTH))
        return action, loop.time() - t

    action, took = asyncio.run(timed())
    assert action == "DEFER_IF_PERMIT Sender address check temporarily unavailable"
    assert took < 1.0
    assert decisions(metrics) == {("sender_failed", "DEFER_IF_PERMIT"): 1}


def test_other_request_types_get_dunno() -> None:
    db = db_with_users()
    service, metrics = make_service(db)
    assert decide(service, request(request="junk", recipient="bob@example.com")) == "DUNNO"
    assert db.queries == []
    assert decisions(metrics) == {("request", "DUNNO"): 1}


def test_latency_is_observed() -> None:
    service, metrics = make_service(db_with_users())
    decide(service, request())
    samples = {s.name: s.value for m in metrics.policy_seconds.collect() for s in m.samples}
    assert samples["vmaild_policy_request_seconds_count"] == 1


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("disabled_action = 550", "disabled_action"),  # all digits: a permit!
        ("quota_action = 452", "quota_action"),
        ("sender_action = FROBNICATE", "sender_action"),  # unknown verb: 451 4.3.5
        ("ratelimit_fail_action = REJECT", "ratelimit_fail_action"),  # a failure never rejects
        ("sender_fail_action = 554 5.7.1 no", "sender_fail_action"),
        ("recipient_query = SELECT 1 FROM users WHERE email = %(login)s", "recipient_query"),
        ("sender_query = SELECT 1 WHERE x = %(sender", "sender_query"),
        ("ratelimit_count_state = DATA", "ratelimit_count_state"),
    ],
)
def test_bad_settings_are_refused_at_start(line: str, key: str) -> None:
    # A ConfigError naming the file, the section and the key.
    with pytest.raises(ConfigError) as e:
        config.parse(BASE + line + "\n")
    assert f"[policy] {key}" in str(e.value)


def test_settings_are_not_checked_without_listener() -> None:
    text = "[database]\nhosts = h\nuser = u\ndbname = d\n[policy]\ndisabled_action = 550\n"
    assert config.parse(text).policy.listen is None


def test_close_releases_threads() -> None:
    service, _ = make_service(db_with_users())
    service.close()
    service.close()
