"""vmaild.auth.maildirs: the Maildir of an account the auth service answers for is created
when missing, only under [mailbox] base, checked again only after MAILDIR_RECHECK."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import pytest

from vmaild.auth.accounts import Account
from vmaild.auth.maildirs import MAILDIR_RECHECK, AccountMaildirs
from vmaild.sections import MailboxConfig


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def account(home: str, maildir: str = "") -> Account:
    return Account("joe@example.test", "x", home, maildir, 5000, 5001)


def make(
    tmp_path: Path, base: str | None = None, create: bool = True
) -> tuple[AccountMaildirs, Clock, Path]:
    clock = Clock()
    default = tmp_path / "vmail"
    mailbox = MailboxConfig(base=base or str(default), create_maildirs=create)
    return AccountMaildirs(mailbox, clock), clock, default


def ensure(maildirs: AccountMaildirs, acct: Account) -> None:
    asyncio.run(maildirs.ensure(acct))


def test_a_missing_maildir_is_created_with_its_parents(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    maildirs, _, base = make(tmp_path)
    caplog.set_level(logging.INFO, "vmaild.auth")
    ensure(maildirs, account(str(base / "example.test"), "joe/"))
    box = base / "example.test/joe"
    assert all((box / sub).is_dir() for sub in ("cur", "new", "tmp"))
    assert box.stat().st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        assert (box.stat().st_uid, box.stat().st_gid) == (5000, 5001)
    assert caplog.messages == [f"created Maildir {box} for joe@example.test"]


def test_an_existing_maildir_is_left_alone_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    maildirs, _, base = make(tmp_path)
    for sub in ("cur", "new", "tmp"):
        (base / "joe" / sub).mkdir(parents=True)
    (base / "joe/new/1.msg").write_text("x")
    caplog.set_level(logging.INFO, "vmaild.auth")
    ensure(maildirs, account(str(base / "joe")))
    assert (base / "joe/new/1.msg").read_text() == "x" and caplog.messages == []


@pytest.mark.parametrize(
    "where",
    [
        "../outside",  # climbs out of base
        "",  # base itself
        "../vmail2/joe",  # a sibling whose name starts like base
    ],
)
def test_nothing_is_created_outside_base(tmp_path: Path, where: str) -> None:
    maildirs, _, base = make(tmp_path)
    base.mkdir()
    ensure(maildirs, account(str(base), where))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vmail"]
    assert list(base.iterdir()) == []


def test_a_relative_maildir_or_base_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    maildirs, _, _ = make(tmp_path, base="vmail")
    ensure(maildirs, account("vmail", "joe"))
    maildirs, _, _ = make(tmp_path)
    ensure(maildirs, account("vmail/joe"))
    assert list(tmp_path.iterdir()) == []


def test_creation_can_be_switched_off(tmp_path: Path) -> None:
    maildirs, _, base = make(tmp_path, create=False)
    ensure(maildirs, account(str(base / "joe")))
    assert not base.exists()


def test_a_maildir_seen_is_checked_again_only_after_the_recheck_interval(tmp_path: Path) -> None:
    maildirs, clock, base = make(tmp_path)
    joe = account(str(base / "joe"))
    ensure(maildirs, joe)
    shutil.rmtree(base / "joe")
    clock.now += MAILDIR_RECHECK - 1
    ensure(maildirs, joe)
    assert not (base / "joe").exists()  # seen a moment ago: no filesystem check
    clock.now += 1
    ensure(maildirs, joe)
    assert (base / "joe/new").is_dir()


def test_a_failure_is_logged_and_tried_again_next_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    maildirs, _, base = make(tmp_path)
    base.mkdir()
    (base / "example.test").write_text("a file where the domain directory belongs")
    joe = account(str(base / "example.test/joe"))
    ensure(maildirs, joe)  # no exception: the request is answered anyway
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert caplog.messages[0].startswith(
        f"cannot create Maildir {base}/example.test/joe for joe@example.test: "
    )
    (base / "example.test").unlink()
    ensure(maildirs, joe)  # not remembered as present: checked again
    assert (base / "example.test/joe/new").is_dir()
