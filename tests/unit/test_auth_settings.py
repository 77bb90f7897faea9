"""``[auth]`` settings: defaults, validation at start-up with the key named."""

from __future__ import annotations

import pytest

from vmaild import config, expansions
from vmaild.auth.settings import NEW_HASH_SCHEMES
from vmaild.values import ConfigError

BASE = "[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n[auth]\nlisten = unix:/run/v/a.sock\n"


def test_defaults() -> None:
    a = config.parse(BASE).auth
    assert a.password_scheme == "sha512_crypt" and a.rehash
    assert a.fail_delay == 0.5 and a.fail_delay_max == 3.0
    assert a.hash_share_account == 2 and a.hash_share_client == 4
    assert a.relay_timeout == 25.0  # under authdaemond's 30 s
    q = expansions.compile_query(a.query)
    assert q.bind("joe@example.test") == ("joe@example.test",)
    assert "u.active" in a.query and "quota_bytes" in a.query
    for key in ("passwd_query", "rehash_query"):
        assert "%(old)s" in getattr(a, key)
    assert "password_changed_at" in a.passwd_query
    assert "password_changed_at" not in a.rehash_query


def test_the_seed_compatible_settings_parse() -> None:
    text = BASE + (
        "query = SELECT email AS address, password FROM users WHERE email='%s'\n"
        "enumerate_query = SELECT email AS address FROM users\nrehash = no\n"
        "passwd_query = UPDATE users SET password = %(new)s "
        "WHERE email = %(address)s AND password = %(old)s\n"
    )
    assert not config.parse(text).auth.rehash


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ("password_scheme = rot13", "password_scheme", "must be one of"),
        ("password_scheme = des_crypt", "password_scheme", "must be one of"),
        ("password_scheme = bcrypt\npassword_rounds = 40", "password_rounds", "log2"),
        ("password_rounds = 10", "password_rounds", "1000"),
        (
            "rehash_query = UPDATE users SET password = %(new)s WHERE email = %(address)s",
            "rehash_query",
            "%(old)s",
        ),
        (
            "passwd_query = UPDATE users SET password = %(new)s WHERE email = %(user)s "
            "AND password = %(old)s",
            "passwd_query",
            "unknown parameter",
        ),
        (
            "passwd_query = UPDATE users SET password = %(new)s WHERE email = %(address)s "
            "AND password = %(old)s AND email LIKE '%x'",
            "passwd_query",
            "'%%'",
        ),
        ("fail_delay = 2\nfail_delay_max = 1", "fail_delay_max", "less than"),
        ("fail_delay_max = 20", "fail_delay_max", "out of range"),
        ("relay_timeout = 30", "relay_timeout", "out of range"),
        ("hash_share_account = -1", "hash_share_account", "out of range"),
        ("query = SELECT email FROM users", "query", "expansion"),
    ],
)
def test_mistakes_stop_start_up_naming_the_key(line: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse(BASE + line + "\n", "/etc/vmaild/vmaild.conf")
    assert f"[auth] {key}" in str(e.value) and problem in str(e.value)


def test_schemes_match_passwords_module() -> None:
    from vmaild import passwords

    assert set(NEW_HASH_SCHEMES) <= set(passwords.SCHEMES)


def test_no_validation_without_listen() -> None:
    # Without [auth] listen the section is unused; its queries are not judged.
    text = "[database]\nhosts = h\nuser = u\ndbname = d\n[auth]\npassword_scheme = x\n"
    assert config.parse(text).auth.listen is None
