"""vmaild.auth.accounts: rows read by column name, defaults, the reply fields."""

from __future__ import annotations

import pytest

from vmaild import config
from vmaild.auth.accounts import Account, AccountError, account_from_row, default_maildir
from vmaild.codec.authpipe import encode_account

CFG = config.parse("[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n")


def test_the_seed_layout_by_default() -> None:
    a = account_from_row({"address": "sales@raecoo.com", "password": "abcdefghijklm"}, CFG)
    assert a == Account("sales@raecoo.com", "abcdefghijklm", "/home/vmail", "raecoo.com/sales/",
                        5000, 5000)
    assert a.active
    assert a.maildir_path() == "/home/vmail/raecoo.com/sales"
    assert encode_account(a.fields()) == (
        b"UID=5000\nGID=5000\nHOME=/home/vmail\nADDRESS=sales@raecoo.com\n"
        b"MAILDIR=raecoo.com/sales/\n.\n")


def test_every_known_column() -> None:
    row = {"address": "joe@example.test", "password": "x", "home": "/srv/mail",
           "maildir": "/srv/mail/joe/Maildir", "uid": 6000, "gid": "6001", "quota": "1000000S",
           "name": "Joe User", "options": "disableimap=0", "active": 1}
    a = account_from_row(row, CFG)
    assert dict(a.fields()) == {
        "UID": "6000", "GID": "6001", "HOME": "/srv/mail", "ADDRESS": "joe@example.test",
        "MAILDIR": "/srv/mail/joe/Maildir", "NAME": "Joe User", "QUOTA": "1000000S",
        "OPTIONS": "disableimap=0"}
    assert a.maildir_path() == "/srv/mail/joe/Maildir"


@pytest.mark.parametrize(("row", "quota"), [
    ({"quota_bytes": 1000000, "quota_messages": 0}, "1000000S"),
    ({"quota_bytes": 0, "quota_messages": 500}, "500C"),
    ({"quota_bytes": 10, "quota_messages": 5}, "10S,5C"),
    ({"quota_bytes": 0, "quota_messages": 0}, ""),
    ({"quota_bytes": None}, ""),
    ({"quota": "1000S,10C"}, "1000S,10C"),
    ({"quota": "2048"}, "2048S"),
    ({"quota": ""}, ""),
    ({"quota": "lots"}, ""),
])
def test_quota(row: dict[str, object], quota: str) -> None:
    a = account_from_row({"address": "a@b.c", **row}, CFG)
    assert a.quota == quota
    assert ("QUOTA" in dict(a.fields())) is bool(quota)


@pytest.mark.parametrize(("value", "active"), [
    (1, True), (0, False), (None, True), (b"\x00", False), (b"\x01", True), ("0", False),
    ("1", True)])
def test_active(value: object, active: bool) -> None:
    assert account_from_row({"address": "a@b.c", "active": value}, CFG).active is active


def test_unsafe_values() -> None:
    a = account_from_row({"address": "a@b.c", "name": "Evil\nUID=0"}, CFG)
    assert a.name == ""  # dropped, never sent
    with pytest.raises(AccountError):
        account_from_row({"address": "a@b.c", "uid": 0}, CFG)
    with pytest.raises(AccountError):
        account_from_row({"address": "a@b.c", "gid": "root"}, CFG)
    with pytest.raises(AccountError):
        account_from_row({"password": "x"}, CFG)
    with pytest.raises(AccountError):
        account_from_row({"address": "a@b.c", "maildir": "x\ny"}, CFG)


def test_bytes_columns_and_mailbox_section() -> None:
    cfg = config.parse("[database]\nhosts = h\nuser = u\ndbname = d\n"
                       "[mailbox]\nbase = /var/mail/v\nuid = 7000\ngid = 7001\n")
    a = account_from_row({"address": b"joe@example.test", "maildir": None}, cfg)
    assert (a.home, a.uid, a.gid, a.maildir) == ("/var/mail/v", 7000, 7001, "example.test/joe/")


def test_default_maildir() -> None:
    assert default_maildir("joe@example.test") == "example.test/joe/"
    assert default_maildir("a@b@c") == "c/a@b/"
    assert default_maildir("joe") == "joe/"
