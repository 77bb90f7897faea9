"""Address rules Postfix leaves to tcp:/socketmap: servers (virtual(5), PROTOCOLS.md §1.5)."""

from __future__ import annotations

import pytest

from vmaild.addresses import candidates, normalise, strip_extension


@pytest.mark.parametrize(
    ("key", "delims", "catchall", "expected"),
    [
        ("user@ex.com", "+", False, ["user@ex.com"]),
        ("user@ex.com", "+", True, ["user@ex.com", "@ex.com"]),
        ("user+tag@ex.com", "+", False, ["user+tag@ex.com", "user@ex.com"]),
        ("user+tag@ex.com", "+", True, ["user+tag@ex.com", "user@ex.com", "@ex.com"]),
        ("user+a+b@ex.com", "+", False, ["user+a+b@ex.com", "user@ex.com"]),
        ("user-tag@ex.com", "+-", False, ["user-tag@ex.com", "user@ex.com"]),
        ("user-a+b@ex.com", "+-", False, ["user-a+b@ex.com", "user@ex.com"]),
        ("user+tag@ex.com", "", False, ["user+tag@ex.com"]),
        ("+tag@ex.com", "+", False, ["+tag@ex.com"]),  # would leave an empty local part
        ("ex.com", "+", True, ["ex.com"]),  # domain keys: no address rules
        ("@ex.com", "+", True, ["@ex.com"]),
        ("user@", "+", True, ["user@"]),
        ('"a b"@ex.com', "+", True, ['"a b"@ex.com', "@ex.com"]),
        ("a@b@ex.com", "+", True, ["a@b@ex.com", "@ex.com"]),  # the last '@' splits, as Postfix
    ],
)
def test_candidates(key: str, delims: str, catchall: bool, expected: list[str]) -> None:
    assert candidates(key, delims, catchall) == expected


def test_strip_extension_none_without_extension() -> None:
    assert strip_extension("user@ex.com", "+") is None


def test_normalise_folds_case_unless_told_not_to() -> None:
    assert normalise("Sales+X@Raecoo.COM") == "sales+x@raecoo.com"
    assert normalise("Sales@Raecoo.COM", fold_case=False) == "Sales@Raecoo.COM"
