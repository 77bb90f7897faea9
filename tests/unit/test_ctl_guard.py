"""vmailctl guard's pure parts: how an address names its stored prefix, and LIKE escaping.
The commands against MariaDB: tests/integration/test_vmailctl_guard.py."""

from __future__ import annotations

import pytest

from vmaild.auth.guard_rules import Rules
from vmaild.ctl.errors import Refused
from vmaild.ctl.guard import _like, prefix_of
from vmaild.sections_logins import AuthConfig

RULES = Rules(AuthConfig())


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("203.0.113.7", "203.0.113.7/32"),
        (" 203.0.113.7 ", "203.0.113.7/32"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8:0:0:ffff::9", "2001:db8::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7/32"),  # as the guard counts it
        ("198.51.100.0/24", "198.51.100.0/24"),
        ("198.51.100.9/24", "198.51.100.0/24"),  # a prefix is normalised, not refused
        ("2001:db8::/64", "2001:db8::/64"),
    ],
)
def test_an_address_names_its_counted_prefix(given: str, stored: str) -> None:
    assert prefix_of(RULES, given) == stored


@pytest.mark.parametrize("bad", ["alice", "", "203.0.113", "203.0.113.7/33", "::1/129"])
def test_what_is_not_an_address_is_refused(bad: str) -> None:
    with pytest.raises(Refused, match="not an IP address or prefix"):
        prefix_of(RULES, bad)


def test_like_escapes_its_wildcards() -> None:
    assert _like("a_b%c\\d") == "a\\_b\\%c\\\\d"
    assert _like("alice@example.org") == "alice@example.org"
