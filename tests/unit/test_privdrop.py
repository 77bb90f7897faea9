"""vmaild-authpipe started as root becomes the owner of vmaild's auth socket before it serves.

The real relay runs in a subprocess as root (as authdaemond runs it) against a fake vmaild
whose socket belongs to an unprivileged uid; what it became is read from /proc/PID/status.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.common.wait import wait_until
from tests.unit.fakes_relay import (
    ACCOUNT,
    FakeVmaild,
    auth_bytes,
    finish,
    read_reply,
    send,
)
from vmaild import authpipe_main, privdrop

OWNER = 65534  # nobody:nogroup on Debian, the unprivileged owner of the fake vmaild's socket
PRE = b"PRE . imap joe@example.test\n"

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, dropping root)")


@pytest.fixture
def rundir() -> Iterator[Path]:
    """Like /run/vmaild: 0750, owned by vmaild's account; under /tmp so that account can
    reach it (pytest's tmp_path is root's own)."""
    path = Path(tempfile.mkdtemp(prefix="vmaild-privdrop-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def own(path: Path, uid: int = OWNER, gid: int = OWNER, mode: int = 0o750) -> None:
    os.chown(path, uid, gid)
    os.chmod(path, mode)


@pytest.fixture
def conf(tmp_path: Path, rundir: Path) -> Path:
    """The configuration, readable by root only: the relay reads it before the drop."""
    path = tmp_path / "vmaild.conf"
    path.write_text(f"[auth]\nlisten = unix:{rundir / 'auth.sock'}\nrelay_timeout = 2\n")
    os.chmod(path, 0o600)
    return path


def start(conf: Path, *prefix: str, code: str | None = None) -> subprocess.Popen[bytes]:
    """The relay as authdaemond starts it (root, no arguments, pipes), or ``code`` instead."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "VMAILD_CONFIG": str(conf)}
    argv = [*prefix, sys.executable] + (["-c", code] if code else ["-m", "vmaild.authpipe_main"])
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
    )


def status(pid: int) -> dict[str, list[str]]:
    """/proc/PID/status: each field's values, split on whitespace."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return {k: v.split() for k, _, v in (line.partition(":") for line in f)}


def identity(pid: int) -> tuple[list[str], list[str], list[str], str, int, int]:
    s = status(pid)
    return (
        s["Uid"],
        s["Gid"],
        s["Groups"],
        s["NoNewPrivs"][0],
        int(s["CapEff"][0], 16),
        int(s["CapPrm"][0], 16),
    )


DROPPED = ([str(OWNER)] * 4, [str(OWNER)] * 4, [], "1", 0, 0)


def stderr_of(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stderr is not None
    return proc.stderr.read().decode()


# -- the relay as authdaemond runs it --------------------------------------------------------


@as_root
def test_root_relay_runs_as_the_socket_owner(conf: Path, rundir: Path) -> None:
    own(rundir)
    fake = FakeVmaild(str(rundir / "auth.sock"), [ACCOUNT, (ACCOUNT, "close"), ACCOUNT])
    own(rundir / "auth.sock", mode=0o660)
    try:
        proc = start(conf)
        send(proc, PRE)
        assert read_reply(proc) == ACCOUNT
        assert identity(proc.pid) == DROPPED  # uid, gid (real, effective, saved, fs), no groups
        send(proc, auth_bytes("joe@example.test", "s3cret"))
        assert read_reply(proc) == ACCOUNT
        assert fake.closed.acquire(timeout=5)  # vmaild restarted: reconnects, as OWNER
        send(proc, PRE)
        assert read_reply(proc) == ACCOUNT
        proc.stdin.close()  # type: ignore[union-attr]
        assert finish(proc) == (0, b"")
    finally:
        fake.close()
    assert fake.connections == 2


@as_root
def test_nothing_is_opened_or_imported_after_the_drop(conf: Path, rundir: Path) -> None:
    """Everything the relay needs later is open or imported before the drop: the audit hook,
    installed right after it, sees no file opened and no module imported while it serves."""
    code = (
        "import atexit, os, sys\n"
        "from vmaild import authpipe_main, privdrop\n"
        "seen = []\n"
        "drop = privdrop.drop_privileges\n"
        "def watched(address):\n"
        "    result = drop(address)\n"
        "    sys.addaudithook(lambda e, a: seen.append((e, str(a[0])))"
        " if e in ('open', 'import') else None)\n"
        "    return result\n"
        "privdrop.drop_privileges = watched\n"
        "atexit.register(lambda: os.write(2, ('after the drop: %r' % seen).encode()))\n"
        "sys.exit(authpipe_main.main())\n"
    )
    own(rundir)
    fake = FakeVmaild(str(rundir / "auth.sock"), [ACCOUNT, b"FAIL\n"])
    own(rundir / "auth.sock", mode=0o660)
    try:
        proc = start(conf, code=code)
        send(proc, PRE)
        assert read_reply(proc) == ACCOUNT
        send(proc, auth_bytes("joe@example.test", "wrong"))
        assert read_reply(proc) == b"FAIL\n"
        assert identity(proc.pid) == DROPPED
        proc.stdin.close()  # type: ignore[union-attr]
        err = stderr_of(proc)
        assert finish(proc) == (0, b"")
    finally:
        fake.close()
    assert err.endswith("after the drop: []"), err


@as_root
def test_a_root_owned_socket_changes_nothing(conf: Path, rundir: Path) -> None:
    """vmaild running as root (the plain harness): the relay stays root, as before."""
    fake = FakeVmaild(str(rundir / "auth.sock"), [ACCOUNT])
    try:
        proc = start(conf)
        send(proc, PRE)
        assert read_reply(proc) == ACCOUNT
        uid, gid, _groups, nnp, _eff, _prm = identity(proc.pid)
        assert (uid, gid, nnp) == (["0"] * 4, ["0"] * 4, "0")
        proc.stdin.close()  # type: ignore[union-attr]
        assert finish(proc) == (0, b"")
    finally:
        fake.close()


@as_root
def test_a_relay_not_run_as_root_keeps_its_user(rundir: Path) -> None:
    """Started as OWNER (switched before main(): this Python may be out of OWNER's reach),
    against a socket of OWNER's: it serves as OWNER, and the drop code never ran."""
    own(rundir, 0, 0, 0o755)
    conf = rundir / "vmaild.conf"
    conf.write_text(f"[auth]\nlisten = unix:{rundir / 'auth.sock'}\n")
    os.chmod(conf, 0o644)
    fake = FakeVmaild(str(rundir / "auth.sock"), [ACCOUNT])
    own(rundir / "auth.sock", mode=0o660)
    try:
        proc = start(
            conf,
            code=(
                "import configparser, os, sys\n"
                "from vmaild import authpipe_main, config\n"
                f"os.setgroups([]); os.setgid({OWNER}); os.setuid({OWNER})\n"
                "sys.exit(authpipe_main.main())\n"
            ),
        )
        send(proc, PRE)
        assert read_reply(proc) == ACCOUNT, stderr_of(proc)
        uid, gid, groups, nnp, _eff, _prm = identity(proc.pid)
        assert (uid, gid, groups, nnp) == ([str(OWNER)] * 4, [str(OWNER)] * 4, [], "0")
        proc.stdin.close()  # type: ignore[union-attr]
        assert finish(proc) == (0, b"")
    finally:
        fake.close()


@as_root
def test_vmaild_restarting_drops_to_the_directory_owner(conf: Path, rundir: Path) -> None:
    """No socket yet: the relay becomes the directory's owner, and that request is a
    temporary failure (no answer at all), as with vmaild down."""
    own(rundir)
    proc = start(conf)
    wait_until(
        lambda: identity(proc.pid) == DROPPED, 10, "the relay to switch to the directory's owner"
    )
    send(proc, PRE)
    assert read_reply(proc) is None
    assert finish(proc) == (authpipe_main.EX_TEMPFAIL, b"")


@as_root
def test_no_socket_and_no_directory_is_a_temporary_failure(tmp_path: Path) -> None:
    conf = tmp_path / "vmaild.conf"
    conf.write_text(f"[auth]\nlisten = unix:{tmp_path / 'gone' / 'auth.sock'}\n")
    proc = start(conf)
    send(proc, PRE)
    assert read_reply(proc) is None
    err = stderr_of(proc)
    assert finish(proc) == (authpipe_main.EX_TEMPFAIL, b"")
    assert "not serving as root" in err and f"{tmp_path / 'gone'}" in err, err


@as_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_a_refused_drop_is_a_temporary_failure_never_root(conf: Path, rundir: Path) -> None:
    """Root without CAP_SETUID/CAP_SETGID (a confined authdaemond): the drop fails, and the
    relay exits without writing instead of serving as root."""
    own(rundir)
    fake = FakeVmaild(str(rundir / "auth.sock"), [ACCOUNT])
    own(rundir / "auth.sock", mode=0o660)
    try:
        proc = start(conf, "setpriv", "--inh-caps=-all", "--bounding-set=-setuid,-setgid")
        send(proc, PRE)
        assert read_reply(proc) is None
        err = stderr_of(proc)
        assert finish(proc) == (authpipe_main.EX_TEMPFAIL, b"")
    finally:
        fake.close()
    assert "not serving as root: cannot switch to uid 65534" in err, err
    assert fake.connections == 0


# -- whom to run as -----------------------------------------------------------------------


@as_root
def test_target_is_the_socket_owner_with_its_primary_group(rundir: Path) -> None:
    path = rundir / "auth.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        own(path, OWNER, 0)  # the account's primary group counts, not the file's
        target = privdrop.target_for(str(path))
        assert (target.uid, target.gid) == (OWNER, OWNER)
        assert target.why == f"owner of {path}"
        own(path, 4242, 4343)  # a uid without a passwd entry: the file's group
        assert (privdrop.target_for(str(path)).uid, privdrop.target_for(str(path)).gid) == (
            4242,
            4343,
        )


@as_root
def test_target_without_a_socket_is_the_directory_owner(rundir: Path) -> None:
    own(rundir, 4242, 4343)
    target = privdrop.target_for(str(rundir / "auth.sock"))
    assert (target.uid, target.gid) == (4242, 4343) and str(rundir) in target.why
    (rundir / "auth.sock").write_text("not a socket")
    os.chown(rundir / "auth.sock", OWNER, OWNER)
    assert privdrop.target_for(str(rundir / "auth.sock")).uid == 4242


def test_target_without_a_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(privdrop.DropError, match="vmaild not running"):
        privdrop.target_for(str(tmp_path / "gone" / "auth.sock"))


def test_target_for_tcp_is_nobody() -> None:
    target = privdrop.target_for(("127.0.0.1", 9999))
    assert (target.uid, target.gid) == (OWNER, OWNER)


def test_not_root_changes_nothing(monkeypatch: pytest.MonkeyPatch, rundir: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(privdrop, "drop_to", lambda target: pytest.fail("drop attempted"))
    assert privdrop.drop_privileges(str(rundir / "auth.sock")) is None


def test_a_failing_step_is_a_drop_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setgroups", lambda groups: None)
    monkeypatch.setattr(os, "setgid", lambda gid: None)
    monkeypatch.setattr(os, "setuid", refuse)
    with pytest.raises(privdrop.DropError, match=r"uid 5000 gid 5000 \(test\): Operation not"):
        privdrop.drop_to(privdrop.Target(5000, 5000, "test"))


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_a_socket_in_a_directory_others_can_write_is_refused(rundir: Path, mode: int) -> None:
    """Anyone who can write to the directory could have replaced vmaild's socket with their
    own, and the relay would send them every password."""
    path = rundir / "auth.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        os.chmod(rundir, mode)
        with pytest.raises(privdrop.DropError, match=f"refusing to relay to {path}: unsafe"):
            privdrop.target_for(str(path))


@as_root
def test_a_socket_in_a_directory_of_a_third_user_is_refused(rundir: Path) -> None:
    path = rundir / "auth.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        own(path, OWNER, OWNER)
        own(rundir, 4242, 4242)
        with pytest.raises(privdrop.DropError, match="owned by uid 4242"):
            privdrop.target_for(str(path))
