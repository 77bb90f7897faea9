"""Postfix query expansions become bound parameters; keys never reach the SQL text."""

from __future__ import annotations

import pymysql.converters
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmaild.expansions import QueryError, Suppressed, compile_query

SEED_MAILBOXES = (
    "SELECT CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),"
    "'/')\n        FROM users WHERE email='%s'"
)


@pytest.mark.parametrize(
    ("query", "key", "sql", "params"),
    [
        (
            "SELECT domain AS virtual FROM domains WHERE domain='%s'",
            "example.com",
            "SELECT domain AS virtual FROM domains WHERE domain=%s",
            ("example.com",),
        ),
        (
            SEED_MAILBOXES,
            "a@b.c",
            "SELECT CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/')\n"
            "        FROM users WHERE email=%s",
            ("a@b.c",),
        ),
        ("SELECT x FROM t WHERE a=%s", "k", "SELECT x FROM t WHERE a=%s", ("k",)),
        ('SELECT x FROM t WHERE a="%s"', "k", "SELECT x FROM t WHERE a=%s", ("k",)),
        (
            "SELECT x FROM t WHERE u='%u' AND d='%d'",
            "joe@ex.com",
            "SELECT x FROM t WHERE u=%s AND d=%s",
            ("joe", "ex.com"),
        ),
        (
            "SELECT x FROM t WHERE e='%u@%d'",
            "joe@ex.com",
            "SELECT x FROM t WHERE e=%s",
            ("joe@ex.com",),
        ),
        (
            "SELECT x FROM t WHERE tld='%1' AND sld='%2'",
            "a@mail.ex.com",
            "SELECT x FROM t WHERE tld=%s AND sld=%s",
            ("com", "ex"),
        ),
        (
            "SELECT x FROM t WHERE a='%S' AND b='%U' AND c='%D'",
            "a@b",
            "SELECT x FROM t WHERE a=%s AND b=%s AND c=%s",
            ("a@b", "a", "b"),
        ),
        (
            "SELECT x FROM t WHERE a LIKE 'x%%' AND b='%s'",
            "k",
            "SELECT x FROM t WHERE a LIKE 'x%%' AND b=%s",
            ("k",),
        ),
        ("SELECT 'it''s' FROM t WHERE a='%s'", "k", "SELECT 'it''s' FROM t WHERE a=%s", ("k",)),
        ("SELECT x FROM t WHERE a='100%% %s'", "k", "SELECT x FROM t WHERE a=%s", ("100% k",)),
        ("SELECT x FROM t WHERE u='%u'", "bare", "SELECT x FROM t WHERE u=%s", ("bare",)),
    ],
)
def test_compile_and_bind(query: str, key: str, sql: str, params: tuple[str, ...]) -> None:
    q = compile_query(query)
    assert q.sql == sql
    assert q.bind(key) == params


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("SELECT x FROM t WHERE d='%d'", "no-domain"),  # %d needs a domain
        ("SELECT x FROM t WHERE u='%u'", "@example.com"),  # empty local part
        ("SELECT x FROM t WHERE l='%3'", "a@ex.com"),  # no third label
        ("SELECT x FROM t WHERE d='%d'", "a@"),
    ],
)
def test_postfix_suppresses_the_query(query: str, key: str) -> None:
    with pytest.raises(Suppressed):
        compile_query(query).bind(key)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT domain FROM domains", "no %s, %u or %d expansion"),
        ("SELECT x FROM t WHERE a='%s", "unterminated ' string"),
        ("SELECT x FROM t WHERE a=%x", "invalid expansion %x"),
        ("SELECT x FROM t WHERE a=%", "invalid expansion %"),
    ],
)
def test_bad_queries(query: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        compile_query(query)


@given(st.text(min_size=1, max_size=60))
def test_any_key_is_only_ever_a_parameter(key: str) -> None:
    """Whatever the key (quotes, %s, backslashes, SQL), the SQL text does not change and
    pymysql's own escaping of the parameter gives back exactly the key."""
    q = compile_query(SEED_MAILBOXES)
    params = q.bind(key)
    assert q.sql.count("%s") == 1 and params == (key,)
    rendered = q.sql % tuple(pymysql.converters.escape_string(p) for p in params)
    assert rendered.endswith(f"email={pymysql.converters.escape_string(key)}")


@pytest.mark.parametrize("key", ["a'b@x", "%s@x", "x' OR '1'='1", "\\'; DROP TABLE users; --"])
def test_injection_shaped_keys_are_data(key: str) -> None:
    assert compile_query("SELECT email FROM users WHERE email='%s'").bind(key) == (key,)
