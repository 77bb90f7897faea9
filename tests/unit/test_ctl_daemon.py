"""vmailctl's clients for a running vmaild (control flush, socketmap) and Maildir
removal guards, against fake servers and temp directories."""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmaild.config import parse
from vmaild.ctl import daemon, maildirs
from vmaild.ctl.context import Context
from vmaild.sections import MailboxConfig
from vmaild.values import Listen

Handler = Callable[[socket.socket], None]


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[Callable[[Handler], Listen]]:
    threads: list[threading.Thread] = []
    servers: list[socket.socket] = []

    def start(handler: Handler) -> Listen:
        path = str(tmp_path / f"s{len(servers)}.sock")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(1)
        servers.append(srv)

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                handler(conn)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        threads.append(t)
        return Listen(path=path)

    yield start
    for t in threads:
        t.join(5)
    for s in servers:
        s.close()


def recv_until(conn: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = conn.recv(100)
        if not chunk:
            break
        data += chunk
    return data


def test_flush_sends_one_line_and_reads_ok(unix_server: Callable[[Handler], Listen]) -> None:
    seen: list[bytes] = []

    def handler(conn: socket.socket) -> None:
        seen.append(recv_until(conn, b"\n"))
        conn.sendall(b"ok flushed 12 entries\n")

    assert daemon.flush(unix_server(handler)) == "ok flushed 12 entries"
    assert seen == [b"flush\n"]


def test_flush_with_an_odd_answer_is_unreachable(unix_server: Callable[[Handler], Listen]) -> None:
    listen = unix_server(lambda conn: (recv_until(conn, b"\n"), conn.sendall(b"error no\n")))
    with pytest.raises(daemon.DaemonUnreachable, match="unexpected answer 'error no'"):
        daemon.flush(listen)


def test_flush_to_a_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(daemon.DaemonUnreachable, match="No such file"):
        daemon.flush(Listen(path=str(tmp_path / "absent.sock")))


def ctx_with_control(tmp_path: Path, listen: Listen | None) -> tuple[Context, io.StringIO]:
    text = "[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n"
    if listen is not None:
        text += f"[control]\nlisten = {listen}\n"
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    err = io.StringIO()
    ctx = Context(str(conf), False, out=io.StringIO(), err=err)
    return ctx, err


def test_changed_warns_once_when_the_daemon_is_away(tmp_path: Path) -> None:
    ctx, err = ctx_with_control(tmp_path, Listen(path=str(tmp_path / "gone.sock")))
    ctx.changed()
    lines = err.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("vmailctl: warning: could not notify vmaild")
    assert "within 1s" in lines[0]


def test_changed_is_silent_without_a_control_socket(tmp_path: Path) -> None:
    ctx, err = ctx_with_control(tmp_path, None)
    ctx.changed()
    assert err.getvalue() == ""


def test_changed_pokes_the_daemon(tmp_path: Path, unix_server: Callable[[Handler], Listen]) -> None:
    seen: list[bytes] = []

    def handler(conn: socket.socket) -> None:
        seen.append(recv_until(conn, b"\n"))
        conn.sendall(b"ok\n")

    ctx, err = ctx_with_control(tmp_path, unix_server(handler))
    ctx.changed()
    assert seen == [b"flush\n"] and err.getvalue() == ""


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"20:OK alice@example.com,", ("OK", "alice@example.com")),
        (b"9:NOTFOUND ,", ("NOTFOUND", "")),
        (b"18:TEMP database down,", ("TEMP", "database down")),
        (b"8:OK a b c,", ("OK", "a b c")),
    ],
)
def test_socketmap_query(
    unix_server: Callable[[Handler], Listen], reply: bytes, expected: tuple[str, str]
) -> None:
    requests: list[bytes] = []

    def handler(conn: socket.socket) -> None:
        requests.append(recv_until(conn, b","))
        for i in range(0, len(reply), 3):  # in pieces
            conn.sendall(reply[i : i + 3])

    assert daemon.socketmap_query(unix_server(handler), "aliases", "Üser@example.com") == expected
    assert requests == [b"25:aliases \xc3\x9cser@example.com,"]


@pytest.mark.parametrize("reply", [b"", b"5:OK x", b"x:OK,", b"3:OK x;", b"9999999999:"])
def test_socketmap_bad_replies(unix_server: Callable[[Handler], Listen], reply: bytes) -> None:
    def handler(conn: socket.socket) -> None:
        recv_until(conn, b",")
        conn.sendall(reply)

    with pytest.raises(daemon.DaemonUnreachable):
        daemon.socketmap_query(unix_server(handler), "m", "k")


def test_lookup_through_a_fake_daemon(
    tmp_path: Path, unix_server: Callable[[Handler], Listen]
) -> None:
    from vmaild.ctl.main import main

    def handler(conn: socket.socket) -> None:
        recv_until(conn, b",")
        conn.sendall(b"10:OK a@b.com,")

    listen = unix_server(handler)
    conf = tmp_path / "c.conf"
    conf.write_text(
        f"[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n[socketmap]\n"
        f"listen = {listen}\n[map aliases]\nquery = SELECT d FROM f WHERE s='%s'\n"
    )
    parse(conf.read_text())
    out, err = io.StringIO(), io.StringIO()
    assert main(["-c", str(conf), "lookup", "aliases", "x@b.com"], stdout=out, stderr=err) == 0
    assert out.getvalue() == "a@b.com\n"


# -- Maildir removal guards ------------------------------------------------------------------


def mailbox(base: Path) -> MailboxConfig:
    return MailboxConfig(base=str(base), uid=os.getuid() or 5000, gid=os.getgid() or 5000)


def test_path_for_seed_layout_and_overrides(tmp_path: Path) -> None:
    mb = mailbox(tmp_path)
    assert maildirs.path_for(mb, "sales@raecoo.com") == tmp_path / "raecoo.com" / "sales"
    assert maildirs.path_for(mb, "a@x.org", "custom/a") == tmp_path / "custom" / "a"
    assert maildirs.path_for(mb, "a@x.org", "/srv/mail/a") == Path("/srv/mail/a")


def test_create_and_purge(tmp_path: Path) -> None:
    mb = mailbox(tmp_path / "vmail")
    path = maildirs.path_for(mb, "a@example.com")
    assert maildirs.create(mb, path) is True
    assert maildirs.create(mb, path) is False
    assert sorted(p.name for p in path.iterdir()) == ["cur", "new", "tmp"]
    (path / "new" / "1.msg").write_text("hello")
    assert maildirs.purge(mb, path) is True
    assert not path.exists()
    assert maildirs.purge(mb, path) is False
    assert maildirs.remove_if_empty(mb, path.parent) is True
    assert (tmp_path / "vmail").is_dir()


def test_purge_refuses_paths_outside_the_base(tmp_path: Path) -> None:
    base = tmp_path / "vmail"
    outside = tmp_path / "precious"
    for d in (base, outside / "cur"):
        d.mkdir(parents=True)
    mb = mailbox(base)
    for tricky in (
        maildirs.path_for(mb, "x@example.com", "../precious"),
        maildirs.path_for(mb, "x@example.com", str(outside)),
        base,
        base / ".",
    ):
        with pytest.raises(maildirs.Incomplete):
            maildirs.purge(mb, tricky)
    assert (outside / "cur").is_dir()


def test_purge_refuses_symlinks_and_non_maildirs(tmp_path: Path) -> None:
    base = tmp_path / "vmail"
    (base / "example.com" / "other" / "cur").mkdir(parents=True)
    (base / "example.com" / "notes").mkdir()
    (base / "example.com" / "notes" / "keep.txt").write_text("x")
    (base / "example.com" / "link").symlink_to(base / "example.com" / "other")
    mb = mailbox(base)
    with pytest.raises(maildirs.Incomplete, match="symbolic link"):
        maildirs.purge(mb, base / "example.com" / "link")
    with pytest.raises(maildirs.Incomplete, match="does not look like a Maildir"):
        maildirs.purge(mb, base / "example.com" / "notes")
    with pytest.raises(maildirs.Incomplete, match="does not look like a Maildir"):
        maildirs.purge(mb, base / "example.com")  # a domain directory
    assert (base / "example.com" / "other" / "cur").is_dir()
    assert not maildirs.remove_if_empty(mb, base / "example.com")
    assert not maildirs.remove_if_empty(mb, base)
