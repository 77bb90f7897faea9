"""Who else can read the database password (secret_files.py), and where it is said:
``vmaild check`` and the start of ``vmaild serve``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from vmaild import cli, config
from vmaild.secret_files import exposure

BASE = "[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n"
NOBODY = 65534


def inline(tmp_path: Path, mode: int, mailbox: str = "") -> config.Config:
    path = tmp_path / "vmaild.conf"
    path.write_text(BASE + "password = pw\n" + mailbox)
    path.chmod(mode)
    return config.load(path)


def with_file(tmp_path: Path, mode: int) -> config.Config:
    secret = tmp_path / "db.secret"
    secret.write_text("pw\n")
    secret.chmod(mode)
    path = tmp_path / "vmaild.conf"
    path.write_text(BASE + f"password_file = {secret}\n")
    path.chmod(0o644)  # no password in it: may be readable
    return config.load(path)


def test_the_shipped_layout_says_nothing(tmp_path: Path) -> None:
    # install.sh: root:vmail 0640, vmail being [mailbox] gid
    cfg = inline(tmp_path, 0o640, "[mailbox]\ngid = 4242\n")
    if os.geteuid() == 0:
        os.chown(cfg.path, 0, 4242)  # else the file's group is ours: accepted as well
    assert exposure(cfg) is None
    assert exposure(with_file(tmp_path, 0o600)) is None


def test_world_readable_inline_password(tmp_path: Path) -> None:
    cfg = inline(tmp_path, 0o644)
    line = exposure(cfg)
    assert line is not None
    assert line.startswith(f"{cfg.path}: holds the database password ([database] password)")
    assert "readable by every local user (mode 0644)" in line and "chmod 0640" in line


def test_world_readable_password_file(tmp_path: Path) -> None:
    line = exposure(with_file(tmp_path, 0o604))
    assert line is not None and "db.secret: holds the database password" in line
    assert "[database] password_file" in line


def test_no_password_nothing_to_say(tmp_path: Path) -> None:
    path = tmp_path / "vmaild.conf"
    path.write_text(BASE)
    path.chmod(0o644)
    assert exposure(config.load(path)) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change owners")
def test_another_group_or_owner(tmp_path: Path) -> None:
    cfg = inline(tmp_path, 0o640)
    os.chown(cfg.path, -1, NOBODY)  # a group that is neither root's, ours nor [mailbox] gid
    line = exposure(cfg)
    assert line is not None and "readable by group" in line
    os.chown(cfg.path, NOBODY, 0)
    line = exposure(cfg)
    assert line is not None and "owned by" in line and "readable by group" not in line
    os.chown(cfg.path, 0, NOBODY)
    os.chmod(cfg.path, 0o600)  # the group cannot read it
    assert exposure(cfg) is None


def test_check_warns_on_stderr_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = inline(tmp_path, 0o644)
    assert cli.main(["check", "--no-db", "-c", cfg.path]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("vmaild: warning: ")
    assert "readable by every local user" in err and "ok" in out


def test_serve_warns_in_one_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = inline(tmp_path, 0o644)
    monkeypatch.setattr("vmaild.daemon.serve", lambda cfg: _done())
    caplog.set_level(logging.WARNING, "vmaild")
    cli.run_loop(cfg)
    assert len(caplog.records) == 1
    assert "readable by every local user" in caplog.records[0].getMessage()


async def _done() -> int:
    return 0
