"""Configured actions and queries: what Postfix would misread is refused at start-up."""

from __future__ import annotations

import pytest

from vmaild.policy.actions import CLOSE, check_action, fill, verb
from vmaild.policy.queries import compile_named


@pytest.mark.parametrize(
    "action",
    [
        "DUNNO",
        "dunno",
        "REJECT",
        "REJECT Go away",
        "DEFER_IF_PERMIT Service unavailable",
        "450 4.7.1 Sending limit exceeded",
        "452 4.2.2 Mailbox full",
        "552 5.2.2 Mailbox full",
        "553 5.7.1 Sender address not owned by {login}",
        "550 no",
        "HOLD",
        "WARN watch this",
    ],
)
def test_good_actions(action: str) -> None:
    assert check_action(action) == action


@pytest.mark.parametrize(
    "action",
    [
        "",  # empty: Postfix warns and permits
        "550",  # all digits: the pop-before-smtp "OK"
        "12345",
        "550 ",  # code without text
        " DUNNO",  # leading space: empty verb
        "DUNNO\r",  # CR: Postfix waits 100 s for the empty line
        "FROBNICATE",  # unknown restriction: 451 4.3.5
        "check_sender_access hash:/etc/postfix/x",  # a table in a policy reply: 451 4.3.5
        "OK",
        "RELAY",
        "ok whatever",  # vmaild never permits: no open relay, wherever it is listed
    ],
)
def test_bad_actions(action: str) -> None:
    with pytest.raises(ValueError):
        check_action(action)


@pytest.mark.parametrize(
    ("action", "ok"),
    [
        ("DUNNO", True),
        ("DEFER_IF_PERMIT Try later", True),
        ("DEFER", True),
        ("451 4.3.0 Try later", True),
        ("close", True),
        ("CLOSE", True),
        ("REJECT", False),
        ("550 5.7.1 no", False),
        ("554 5.7.1 no", False),
        ("OK", False),
        ("DISCARD", False),
        ("HOLD", False),
    ],
)
def test_fail_actions_never_reject(action: str, ok: bool) -> None:
    if ok:
        assert check_action(action, fail=True) in (action, CLOSE)
    else:
        with pytest.raises(ValueError):
            check_action(action, fail=True)


@pytest.mark.parametrize(
    ("action", "label"),
    [
        ("DUNNO", "DUNNO"),
        ("defer_if_permit Try later", "DEFER_IF_PERMIT"),
        ("452 4.2.2 Mailbox full", "452"),
        ("", "NONE"),
        ("  ", "NONE"),
    ],
)
def test_verb_is_the_metric_label(action: str, label: str) -> None:
    assert verb(action) == label


def test_fill_drops_control_characters() -> None:
    assert (
        fill("553 5.7.1 {sender} is not {login}'s", sender="a\r\n@x\0", login="b")
        == "553 5.7.1 a@x is not b's"
    )
    assert fill("no placeholders", login="x") == "no placeholders"
    assert fill("{login} {login}", login="{sender}", sender="s") == "{sender} {sender}"


@pytest.mark.parametrize(
    ("sql", "expected_sql", "names"),
    [
        (
            "SELECT 1 FROM users WHERE email = %(address)s",
            "SELECT 1 FROM users WHERE email = %s",
            ("address",),
        ),
        (
            "SELECT 1 FROM users WHERE email = '%(address)s'",
            "SELECT 1 FROM users WHERE email = %s",
            ("address",),
        ),
        (
            'SELECT 1 WHERE a = "%(local)s" AND b = %(domain)s AND c = %(local)s',
            "SELECT 1 WHERE a = %s AND b = %s AND c = %s",
            ("local", "domain", "local"),
        ),
        (
            "SELECT 1 WHERE a LIKE 'x%' AND b = %(local)s",
            "SELECT 1 WHERE a LIKE 'x%%' AND b = %s",
            ("local",),
        ),
        ("SELECT 1 WHERE a LIKE 'x%'", "SELECT 1 WHERE a LIKE 'x%'", ()),  # no params: as written
    ],
)
def test_compile_named(sql: str, expected_sql: str, names: tuple[str, ...]) -> None:
    q = compile_named(sql, frozenset({"address", "local", "domain"}))
    assert (q.sql, q.names) == (expected_sql, names)
    assert q.bind({"address": "a", "local": "l", "domain": "d"}) == tuple(
        {"address": "a", "local": "l", "domain": "d"}[n] for n in names
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 WHERE a = %(login)s",  # not a parameter of this query
        "SELECT 1 WHERE a = %(address)",  # unterminated
        "SELECT 1 WHERE a = %(address)d",
    ],
)
def test_compile_named_errors(sql: str) -> None:
    with pytest.raises(ValueError):
        compile_named(sql, frozenset({"address"}))


def test_request_data_is_never_sql() -> None:
    q = compile_named("SELECT 1 FROM users WHERE email = %(address)s", frozenset({"address"}))
    assert q.bind({"address": "x' OR '1'='1"}) == ("x' OR '1'='1",)
