"""Address and domain validation/normalisation for vmailctl (no database)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmaild.ctl import names, sizes


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("  mail.example.org ", "mail.example.org"),
        ("a-b.example", "a-b.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("Bücher.Example", "xn--bcher-kva.example"),
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        ("straße.de", "strasse.de"),  # Python's idna codec is IDNA 2003 (nameprep)
        ("münchen。de", "xn--mnchen-3ya.de"),  # ideographic full stop separates labels
        ("1.example", "1.example"),
    ],
)
def test_domain_normalised(given_: str, expected: str) -> None:
    assert names.domain(given_) == expected


@pytest.mark.parametrize(
    ("given_", "reason"),
    [
        ("", "empty"),
        (".", "empty"),
        ("localhost", "two labels"),
        ("-bad.example", "bad label"),
        ("bad-.example", "bad label"),
        ("under_score.example", "bad label"),
        ("a..example", "bad label"),
        ("sp ace.example", "bad label"),
        ("a/b.example", "bad label"),
        ("example.123", "all digits"),
        ("x" * 64 + ".example", "bad label"),
        (".".join(["abcdefghi"] * 26), "longer than 253"),
        ("xn--zz.example", "not a valid A-label"),
        ("a\u0000b.example", "bad label"),
        ("a\u0085b.example", "internationalised"),
        ("ü" * 64 + ".example", "internationalised"),
    ],
)
def test_domain_refused(given_: str, reason: str) -> None:
    with pytest.raises(names.InvalidName, match=reason):
        names.domain(given_)


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        (" bob@example.com ", "bob@example.com"),
        ("first.last+tag@example.com", "first.last+tag@example.com"),
        ("o'hara@example.com", "o'hara@example.com"),
        ("user@bücher.example", "user@xn--bcher-kva.example"),
        ("jörg@example.com", "jörg@example.com"),  # SMTPUTF8 local parts are kept
    ],
)
def test_address_normalised(given_: str, expected: str) -> None:
    assert names.address(given_) == expected


@pytest.mark.parametrize(
    ("given_", "reason"),
    [
        ("example.com", "exactly one '@'"),
        ("a@b@example.com", "exactly one '@'"),
        ("@example.com", "empty local part"),
        ("user@", "empty domain"),
        ("us er@example.com", "local part contains ' '"),
        ("us\ter@example.com", "local part contains"),
        ("us\x7fer@example.com", "local part contains"),
        ("a,b@example.com", "local part contains ','"),
        ("../x@example.com", "local part contains '/'"),
        ("..@example.com", "cannot be '..'"),
        (".@example.com", "cannot be '.'"),
        ('"quoted"@example.com', "local part contains"),
        ("a\\b@example.com", "local part contains"),
        ("x" * 65 + "@example.com", "longer than 64"),
        ("user@localhost", "two labels"),
        ("user@exa mple.com", "bad label"),
    ],
)
def test_address_refused(given_: str, reason: str) -> None:
    with pytest.raises(names.InvalidName, match=reason):
        names.address(given_)


def test_pattern_accepts_catchall_and_address() -> None:
    assert names.pattern("@Example.COM") == "@example.com"
    assert names.pattern("@bücher.example") == "@xn--bcher-kva.example"
    assert names.pattern("X@Example.com") == "x@example.com"
    with pytest.raises(names.InvalidName):
        names.pattern("@")
    with pytest.raises(names.InvalidName):
        names.pattern("@@example.com")


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ("a@example.com", ["a@example.com"]),
        ("a@example.com,B@Example.com", ["a@example.com", "b@example.com"]),
        (" a@example.com , b@example.com ", ["a@example.com", "b@example.com"]),
        ("a@example.com,A@example.com", ["a@example.com"]),  # duplicates folded
    ],
)
def test_destinations(given_: str, expected: list[str]) -> None:
    assert names.destinations(given_) == expected


@pytest.mark.parametrize(
    "given_", ["", ",", "a@example.com,,b@example.com", "a@example.com,nobody", "@example.com"]
)
def test_destinations_refused(given_: str) -> None:
    with pytest.raises(names.InvalidName):
        names.destinations(given_)


def test_unicode_domain_round_trip() -> None:
    assert names.unicode_domain("xn--bcher-kva.example") == "bücher.example"
    assert names.unicode_domain("example.com") == "example.com"


@given(st.text(max_size=80))
def test_address_never_crashes_and_is_canonical(text: str) -> None:
    """Any input is either refused with InvalidName or becomes a fixed point."""
    try:
        result = names.address(text)
    except names.InvalidName:
        return
    assert names.address(result) == result
    assert result == result.strip()
    assert result.count("@") == 1
    assert not any(c.isspace() or ord(c) < 32 for c in result)


@given(st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9-]{0,8}[a-z0-9]){1,3}", fullmatch=True))
def test_ascii_domains_are_kept(domain: str) -> None:
    try:
        assert names.domain(domain) == domain
    except names.InvalidName as e:
        assert "all digits" in str(e) or "A-label" in str(e) or "bad label" in str(e)


# -- quota sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ("0", 0),
        ("none", 0),
        ("unlimited", 0),
        ("1024", 1024),
        ("1K", 1024),
        ("1k", 1024),
        ("500M", 500 * 1024**2),
        ("500MB", 500 * 1024**2),
        ("500MiB", 500 * 1024**2),
        ("2G", 2 * 1024**3),
        ("1.5G", 3 * 1024**3 // 2),
        ("1T", 1024**4),
        (" 10 M ", 10 * 1024**2),
    ],
)
def test_parse_size(given_: str, expected: int) -> None:
    assert sizes.parse_size(given_) == expected


@pytest.mark.parametrize(
    "given_", ["", "-1", "M", "1X", "1.2.3G", "abc", "1 G B", "99999999999999999999T"]
)
def test_parse_size_refused(given_: str) -> None:
    with pytest.raises(ValueError):
        sizes.parse_size(given_)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "-"),
        (1, "1"),
        (1024, "1K"),
        (1536, "1536"),
        (500 * 1024**2, "500M"),
        (2 * 1024**3, "2G"),
        (3 * 1024**3 // 2, "1536M"),
        (1024**4, "1T"),
    ],
)
def test_format_size(value: int, text: str) -> None:
    assert sizes.format_size(value) == text
    if value:
        assert sizes.parse_size(text) == value


def test_parse_count() -> None:
    assert sizes.parse_count("0") == 0
    assert sizes.parse_count("1000") == 1000
    for bad in ("-1", "1.5", "x", str(2**32)):
        with pytest.raises(ValueError):
            sizes.parse_count(bad)
