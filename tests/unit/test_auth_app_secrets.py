"""vmaild.auth.app_secrets: the secret's shape, its digest, networks."""

from __future__ import annotations

import hashlib
import ipaddress
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmaild.auth import app_secrets as s


def test_generated_secrets_have_the_shape_and_100_bits() -> None:
    assert s.BITS == 100 and math.log2(len(s.ALPHABET)) * 20 == 100
    seen = {s.generate() for _ in range(200)}
    assert len(seen) == 200
    for secret in seen:
        groups = secret.split("-")
        assert [len(g) for g in groups] == [5, 5, 5, 5]
        assert set(secret.replace("-", "")) <= set(s.ALPHABET)
        assert s.canonical(secret) == secret
        assert s.looks_like_app_password(secret)


@pytest.mark.parametrize(
    "typed",
    [
        "kq7rt-mw2xa-b5nzc-h3pde",
        "KQ7RT-MW2XA-B5NZC-H3PDE",
        "kq7rtmw2xab5nzch3pde",
        "kq7rt mw2xa b5nzc h3pde",
        "  kq7rt-mw2xa-b5nzc-h3pde\t",
    ],
)
def test_typed_forms_are_one_secret(typed: str) -> None:
    assert s.canonical(typed) == "kq7rt-mw2xa-b5nzc-h3pde"
    assert s.digest(typed) == hashlib.sha256(b"kq7rt-mw2xa-b5nzc-h3pde").hexdigest()


@pytest.mark.parametrize(
    "password",
    [
        "",
        "secret",
        "kq7rt-mw2xa-b5nzc",  # three groups
        "kq7rt-mw2xa-b5nzc-h3pde-aaaaa",  # five
        "kq7rt-mw2xa-b5nzc-h3pd1",  # 1 is not in the alphabet
        "kq7rt--mw2xa-b5nzc-h3pde",
        "kq7r-tmw2xa-b5nzc-h3pde",
        "kq7rt-mw2xa-b5nzc-h3pdé",
    ],
)
def test_other_passwords_do_not_look_like_one(password: str) -> None:
    assert not s.looks_like_app_password(password)
    assert s.canonical(password) is None


@given(st.text(max_size=40))
def test_canonical_is_total_and_idempotent(text: str) -> None:
    c = s.canonical(text)
    assert c is None or (s.canonical(c) == c and len(c) == 23)


def test_networks_parse_and_match() -> None:
    nets = s.parse_networks("192.0.2.0/24, 2001:db8::/32,198.51.100.7")
    assert [str(n) for n in nets] == ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32"]
    assert s.parse_networks("10.1.2.3/8") == [ipaddress.ip_network("10.0.0.0/8")]
    assert s.parse_networks(None) == [] and s.parse_networks(" , ") == []
    ip = ipaddress.ip_address
    assert s.within(ip("192.0.2.200"), nets)
    assert s.within(ip("::ffff:192.0.2.9"), nets)  # IPv4-mapped counts as IPv4
    assert s.within(ip("2001:db8:1::5"), nets)
    assert s.within(ip("198.51.100.7"), nets)
    assert not s.within(ip("198.51.100.8"), nets)
    assert not s.within(ip("2001:db9::1"), nets)
    assert not s.within(ip("192.0.2.1"), [])


@pytest.mark.parametrize("bad", ["192.0.2.0/33", "example.net", "192.0.2.0/24;x", "1.2.3"])
def test_bad_networks_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="not a network address"):
        s.parse_networks(f"10.0.0.0/8,{bad}")
