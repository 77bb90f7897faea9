"""vmaild.auth.names: which spellings of a login name log in, and the guard's keys."""

from __future__ import annotations

import pytest

from vmaild.auth.accounts import Account
from vmaild.auth.names import guard_key, same_spelling


@pytest.mark.parametrize(
    ("login", "address", "same"),
    [
        ("a@x", "a@x", True),
        ("A@X", "a@x", True),
        ("a@x ", "a@x", False),
        ("\u212a@x", "k@x", False),  # KELVIN SIGN: str.lower() would make it "k"
        ("ß@x", "ss@x", False),
        ("", "a@x", False),
    ],
)
def test_same_spelling(login: str, address: str, same: bool) -> None:
    assert same_spelling(login, address) is same


def test_guard_keys() -> None:
    account = Account("Alice@Example.test", "", "/h", "m/", 1, 1)
    assert guard_key(account, "ÄLICE@example.test") == "alice@example.test"
    assert guard_key(None, "Nobody@X") == "nobody@x"
    assert len(guard_key(None, "x" * 1000)) == 255
