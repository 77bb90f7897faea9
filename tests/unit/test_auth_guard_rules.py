"""vmaild.auth.guard_rules: subjects, prefixes, delays and refusals as pure functions."""

from __future__ import annotations

import ipaddress

import pytest

from vmaild import config
from vmaild.auth.guard_rules import (
    ADDRESS,
    EARLY,
    LOGIN,
    PAIR,
    Rules,
    Subject,
    Tally,
    login_key,
)
from vmaild.values import ConfigError

from .fakes_guard import BASE

NOW = 1_800_000_000.0


def rules(auth: str = "") -> Rules:
    return Rules(config.parse(BASE + auth).auth)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("auth", "client", "prefix"),
    [
        ("", "203.0.113.7", "203.0.113.7/32"),
        ("", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("", "::ffff:203.0.113.7", "203.0.113.7/32"),  # IPv4-mapped: the IPv4 client
        ("ipv4_prefix = 24\n", "203.0.113.7", "203.0.113.0/24"),
        ("ipv6_prefix = 48\n", "2001:db8:1:2::9", "2001:db8:1::/48"),
        ("ipv6_prefix = 128\n", "2001:db8::9", "2001:db8::9/128"),
    ],
)
def test_address_prefixes(auth: str, client: str, prefix: str) -> None:
    a = rules(auth).attempt("alice@example.org", ip(client))
    assert a.address == Subject(ADDRESS, prefix)
    assert a.pair == Subject(PAIR, f"{prefix} alice@example.org")
    assert a.login == Subject(LOGIN, "alice@example.org")
    assert a.known and not a.trusted
    assert a.subjects() == (a.address, a.login, a.pair)


@pytest.mark.parametrize(
    ("auth", "client", "trusted"),
    [
        ("", "127.0.0.1", True),
        ("", "127.9.9.9", True),
        ("", "::1", True),
        ("", "::ffff:127.0.0.1", True),
        ("", "192.0.2.1", False),
        ("trusted_networks = 192.0.2.0/24, 2001:db8::/32\n", "192.0.2.200", True),
        ("trusted_networks = 192.0.2.0/24, 2001:db8::/32\n", "2001:db8:ff::1", True),
        ("trusted_networks = 192.0.2.0/24, 2001:db8::/32\n", "127.0.0.1", False),
        ("trusted_networks =\n", "127.0.0.1", False),
    ],
)
def test_trusted_networks_are_not_counted_by_address(auth: str, client: str, trusted: bool) -> None:
    a = rules(auth).attempt("Alice@Example.org", ip(client))
    assert a.trusted is trusted and a.known
    assert (a.address is None) is trusted and (a.pair is None) is trusted
    assert a.login == Subject(LOGIN, "alice@example.org")


def test_an_unknown_address_counts_by_login_only() -> None:
    a = rules().attempt("alice@example.org", None)
    assert a.subjects() == (Subject(LOGIN, "alice@example.org"),)
    assert not a.known and a.client == ""


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("trusted_networks = 10.0.0.1/8\n", "host bits set"),
        ("trusted_networks = localhost\n", "not a network"),
        ("ipv4_prefix = 33\n", "out of range"),
        ("ipv6_prefix = 8\n", "out of range"),
        ("block_time = 0\n", "out of range"),
        ("fail_delay_after = 0\n", "out of range"),
    ],
)
def test_bad_settings_name_the_key(value: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        config.parse(BASE + value)


def test_login_keys_are_lower_cased_and_bounded() -> None:
    assert login_key("Alice@Example.ORG") == "alice@example.org"
    long = login_key("a" * 500)
    assert long.startswith("sha256:") and len(long) == 71
    assert login_key("A" * 500) == long
    broken = login_key("al\udcffice")  # a byte that was not UTF-8
    assert broken.startswith("sha256:")
    assert login_key("x" * 200) == "x" * 200


@pytest.mark.parametrize(
    ("auth", "delays"),
    [
        ("", [0, 0.5, 1, 2, 3, 3, 3]),  # the defaults: from the 2nd failure, 0.5 s doubling to 3
        ("fail_delay_after = 3\n", [0, 0, 0.5, 1, 2, 3, 3]),
        ("fail_delay = 0\n", [0, 0, 0, 0, 0, 0, 0]),
        ("fail_delay = 1\nfail_delay_max = 8\nfail_delay_after = 1\n", [1, 2, 4, 8, 8, 8, 8]),
    ],
)
def test_delays_double_from_the_kth_failure_and_are_capped(auth: str, delays: list[float]) -> None:
    r = rules(auth)
    assert [r.delay_for(n) for n in range(1, 8)] == delays
    assert r.delay_for(10_000) == delays[-1]


def test_the_delay_follows_the_highest_count() -> None:
    r = rules()
    tallies = {Subject(ADDRESS, "a"): Tally(1), Subject(LOGIN, "l"): Tally(4)}
    assert r.delay(tallies) == 2.0
    assert r.delay({}) == 0.0


BLOCKED = Tally(9, NOW - 1, NOW + 100)
STALE_BLOCK = Tally(9, NOW - 1, NOW - 0.001)


@pytest.mark.parametrize(
    ("client", "blocked", "expected"),
    [
        # a known address: its own blocks refuse it ...
        ("203.0.113.7", {ADDRESS}, ADDRESS),
        ("203.0.113.7", {PAIR}, PAIR),
        ("203.0.113.7", {ADDRESS, PAIR, LOGIN}, ADDRESS),
        # ... a login-wide block alone never does (the victim's own login keeps working)
        ("203.0.113.7", {LOGIN}, None),
        # a trusted address is never refused
        ("127.0.0.1", {LOGIN}, None),
        # an unknown address (authpipe): the login-wide block refuses
        (None, {LOGIN}, LOGIN),
        (None, set(), None),
    ],
)
def test_which_blocks_refuse(client: str | None, blocked: set[str], expected: str | None) -> None:
    r = rules()
    a = r.attempt("alice@example.org", ip(client) if client else None)
    subjects = {ADDRESS: a.address, LOGIN: a.login, PAIR: a.pair}
    tallies = {subjects[k]: BLOCKED for k in blocked if subjects[k] is not None}
    assert r.refusal(a, tallies, NOW, can_wait=a.known) == expected


def test_a_block_ends_at_blocked_until() -> None:
    r = rules()
    a = r.attempt("alice@example.org", None)
    assert r.refusal(a, {a.login: STALE_BLOCK}, NOW, can_wait=True) is None
    assert r.refusal(a, {a.login: Tally(0, 0, NOW + 0.001)}, NOW, can_wait=True) == LOGIN


@pytest.mark.parametrize(
    ("failures", "since_last", "can_wait", "expected"),
    [
        (1, 0.0, False, None),  # no delay after the first failure: nothing to wait for
        (2, 0.1, False, EARLY),  # the 2nd earned 0.5 s: back after 0.1 s is too early
        (2, 0.5, False, None),
        (3, 0.9, False, EARLY),  # 1 s
        (3, 1.0, False, None),
        (2, 0.1, True, None),  # a door that can wait waits instead
    ],
)
def test_a_door_that_cannot_wait_is_refused_within_the_delay(
    failures: int, since_last: float, can_wait: bool, expected: str | None
) -> None:
    r = rules()
    a = r.attempt("alice@example.org", None)
    tallies = {a.login: Tally(failures, NOW - since_last, 0.0)}
    assert r.refusal(a, tallies, NOW, can_wait=can_wait) == expected


def test_counts_expire_after_the_window_but_blocks_do_not() -> None:
    r = rules("fail_window = 60\n")
    assert r.counted(Tally(5, NOW - 59.9, 0), NOW).failures == 5
    expired = r.counted(Tally(5, NOW - 60, NOW + 5), NOW)
    assert expired.failures == 0 and expired.blocked(NOW)
