"""servers/sockets.py through start_listener: unix sockets appear with their final mode
whatever the umask, in directories nobody else can write to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.fakes import CONFIG
from vmaild import config, daemon, safedirs
from vmaild.servers.base import start_listener
from vmaild.values import Listen

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def listen_at(path: Path, mode: int = 0o660) -> None:
    """Open a listener on ``path``, check one connection is accepted, close it."""

    async def main() -> None:
        server = await start_listener(Listen(path=str(path)), asyncio.Protocol, mode)
        try:
            _, writer = await asyncio.open_unix_connection(str(path))
            writer.close()
        finally:
            server.close()

    asyncio.run(main())


def connectable(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def test_socket_never_visible_with_another_mode_under_umask_000(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whenever the listener changes a mode, the final path is either absent or already
    final: nobody can connect in a window between bind and chmod."""
    target = tmp_path / "run" / "control.sock"
    seen: list[tuple[int, bool]] = []
    real_chmod = os.chmod

    def spy(path: Any, mode: int, *args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(target)
            seen.append((stat.S_IMODE(st.st_mode), connectable(str(target))))
        real_chmod(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", spy)
    with umask(0):
        listen_at(target)
    assert [s for s in seen if s[0] != 0o660] == []
    st = os.lstat(target)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_uid == os.geteuid()


def test_missing_directory_created_0750_under_umask_000(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "run"
    with umask(0):
        listen_at(directory / "auth.sock")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o755
    # The private bind directory is gone.
    assert sorted(p.name for p in directory.iterdir()) == ["auth.sock"]


@pytest.mark.parametrize(("mode", "word"), [(0o777, "world-writable"), (0o770, "group-writable")])
def test_writable_directory_refused_in_one_line(tmp_path: Path, mode: int, word: str) -> None:
    directory = tmp_path / "run"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(OSError) as info:
        listen_at(directory / "auth.sock")
    message = str(info.value)
    assert "\n" not in message
    assert f"unsafe socket directory {directory}: {word}" in message
    assert not (directory / "auth.sock").exists()


def test_writable_parent_refused(tmp_path: Path) -> None:
    """Whoever can write to a parent can swap the socket directory for their own."""
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    directory = tmp_path / "open" / "run"
    directory.mkdir(mode=0o750)
    with pytest.raises(safedirs.UnsafeDirectory, match=f"{tmp_path / 'open'}: world-writable"):
        listen_at(directory / "auth.sock")


def test_sticky_world_writable_directory_accepted(tmp_path: Path) -> None:
    """Like /tmp: nobody can remove or rename what another user made there."""
    directory = tmp_path / "sticky"
    directory.mkdir()
    directory.chmod(0o1777)
    listen_at(directory / "s.sock")


@needs_root
def test_directory_of_another_user_refused(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o750)
    os.chown(directory, 65534, 65534)
    with pytest.raises(safedirs.UnsafeDirectory, match="owned by uid 65534"):
        listen_at(directory / "auth.sock")


@needs_root
def test_setgid_directory_gives_its_group(tmp_path: Path) -> None:
    """The shipped /var/spool/postfix/vmaild is 2750 vmail:postfix: the socket gets group
    postfix without any privilege to chown."""
    directory = tmp_path / "spool"
    directory.mkdir()
    os.chown(directory, 0, 54321)
    directory.chmod(0o2750)
    listen_at(directory / "policy")
    st = os.lstat(directory / "policy")
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (54321, 0o660)


def test_stale_socket_replaced_live_one_and_files_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # bound, never listening: a crash's leftover
    listen_at(path)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink()
    live.bind(str(path))
    live.listen()
    try:
        with pytest.raises(OSError, match="in use by another process"):
            listen_at(path)
    finally:
        live.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="exists and is not a socket"):
        listen_at(path)


def test_serve_refuses_an_unsafe_directory_in_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`vmaild serve` stops (exit 1) before READY with one line naming the directory."""
    directory = tmp_path / "run"
    directory.mkdir()
    directory.chmod(0o777)
    cfg = config.parse(CONFIG + f"\n[control]\nlisten = unix:{directory / 'control.sock'}\n")
    with caplog.at_level(logging.ERROR, logger="vmaild"):
        assert asyncio.run(asyncio.wait_for(daemon.serve(cfg), 10)) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"cannot listen: unsafe socket directory {directory}: world-writable (mode 0777) "
        "without the sticky bit"
    ]
    assert list(directory.iterdir()) == []
