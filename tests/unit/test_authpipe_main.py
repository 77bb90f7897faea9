"""vmaild-authpipe driven like authdaemond drives it: through pipes, against a fake vmaild.

Each test runs the real program (``python -m vmaild.authpipe_main``) with its stdin and
stdout as pipes, and a unix-socket server in a thread standing in for ``vmaild serve``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.common.wait import wait_until
from tests.unit.fakes_relay import (
    ACCOUNT,
    FakeVmaild,
    auth_bytes,
    finish,
    read_reply,
    send,
)
from vmaild import authpipe_main
from vmaild.codec import authpipe as codec


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "auth.sock")


@pytest.fixture
def conf(tmp_path: Path, sock_path: str) -> Path:
    path = tmp_path / "vmaild.conf"
    path.write_text(
        "[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n\n"
        f"[auth]\nlisten = unix:{sock_path}\nrelay_timeout = 1.5\n"
    )
    return path


@pytest.fixture
def fake(sock_path: str) -> Iterator[FakeVmaild]:
    server = FakeVmaild(sock_path, [])
    yield server
    server.close()


def start_relay(conf: Path) -> subprocess.Popen[bytes]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "VMAILD_CONFIG": str(conf)}
    return subprocess.Popen(
        [sys.executable, "-m", "vmaild.authpipe_main"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def catches(pid: int, signum: int) -> bool:
    """True once process ``pid`` has a handler for ``signum`` (SigCgt in /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


# -- relaying ------------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [0, 1], ids=["whole", "one-byte-pieces"])
def test_requests_are_relayed_byte_exact(conf: Path, fake: FakeVmaild, piece: int) -> None:
    request = auth_bytes("joe@example.test", "pass word\twith tab")
    fake.answers = [ACCOUNT, b"FAIL\n", ACCOUNT]
    proc = start_relay(conf)
    send(proc, request, piece)
    assert read_reply(proc) == ACCOUNT
    send(proc, b"PRE . imap user with spaces@example.test\n", piece)
    assert read_reply(proc) == b"FAIL\n"
    # authdata without a final LF: exactly <len> bytes, never up to a newline (4.3).
    body = b"imap\nlogin\njoe@example.test\ns3cret"
    send(proc, b"AUTH %d\n" % len(body) + body, piece)
    assert read_reply(proc) == ACCOUNT
    proc.stdin.close()  # type: ignore[union-attr]
    assert finish(proc) == (0, b"")
    assert fake.requests == [
        request,
        b"PRE . imap user with spaces@example.test\n",
        b"AUTH %d\n" % len(body) + body,
    ]


def test_one_connection_serves_every_request(conf: Path, fake: FakeVmaild) -> None:
    fake.answers = [ACCOUNT, b"FAIL\n", b"OK\n", ACCOUNT]
    proc = start_relay(conf)
    for request, reader in (
        (auth_bytes("joe@example.test", "s3cret"), None),
        (auth_bytes("joe@example.test", "wrong"), None),
        (b"PASSWD imap\tjoe@example.test\ts3cret\tnew\n", codec.ReplyReader(single_line=True)),
        (b"PRE . imap joe@example.test\n", None),
    ):
        send(proc, request)
        assert read_reply(proc, reader) is not None
    proc.stdin.close()  # type: ignore[union-attr]
    assert finish(proc) == (0, b"")
    assert len(fake.requests) == 4
    assert fake.connections == 1  # RELAY 1, then all four on it


def test_a_connection_vmaild_closed_meanwhile_is_replaced(conf: Path, fake: FakeVmaild) -> None:
    # vmaild answers, then goes away (a restart) while the relay waits for authdaemond:
    # the next request must go to a new connection, not fail on the dead one.
    fake.answers = [(ACCOUNT, "close"), ACCOUNT]
    proc = start_relay(conf)
    send(proc, b"PRE . imap joe@example.test\n")
    assert read_reply(proc) == ACCOUNT
    assert fake.closed.acquire(timeout=5)  # vmaild's end is closed before the next request
    send(proc, b"PRE . imap joe@example.test\n")
    assert read_reply(proc) == ACCOUNT
    proc.stdin.close()  # type: ignore[union-attr]
    assert finish(proc) == (0, b"")
    assert fake.connections == 2


def test_a_kept_connection_closed_under_a_request_is_retried_once(
    conf: Path, fake: FakeVmaild
) -> None:
    # vmaild stopping closes its connections as the request goes out: sent again on a new
    # connection (under systemd it waits in the socket unit's backlog for the next vmaild).
    fake.answers = [ACCOUNT, None, ACCOUNT, None, None]
    proc = start_relay(conf)
    pre = b"PRE . imap joe@example.test\n"
    send(proc, pre)
    assert read_reply(proc) == ACCOUNT
    send(proc, pre)
    assert read_reply(proc) == ACCOUNT
    assert fake.connections == 2 and fake.requests == [pre, pre, pre]
    # Only once: a new connection that closes too is a failure, as it always was.
    send(proc, pre)
    assert read_reply(proc) is None
    assert finish(proc) == (authpipe_main.EX_TEMPFAIL, b"")
    assert fake.connections == 3 and len(fake.requests) == 5


def test_passwd_is_never_sent_twice(conf: Path, fake: FakeVmaild) -> None:
    # vmaild may have changed the password before closing: a second try would fail on the
    # old password and report a change that happened as failed.
    fake.answers = [ACCOUNT, None, b"OK\n"]
    proc = start_relay(conf)
    send(proc, b"PRE . imap joe@example.test\n")
    assert read_reply(proc) == ACCOUNT
    send(proc, b"PASSWD imap\tjoe@example.test\told\tnew\n")
    assert read_reply(proc, codec.ReplyReader(single_line=True)) is None
    assert finish(proc) == (authpipe_main.EX_TEMPFAIL, b"")
    assert fake.connections == 1 and len(fake.requests) == 2


def test_an_older_vmaild_gets_one_connection_per_request(conf: Path, sock_path: str) -> None:
    fake = FakeVmaild(sock_path, [ACCOUNT, b"FAIL\n"], legacy=True)
    try:
        proc = start_relay(conf)
        send(proc, b"PRE . imap joe@example.test\n")
        assert read_reply(proc) == ACCOUNT  # not the FAIL that refused RELAY 1
        send(proc, auth_bytes("joe@example.test", "wrong"))
        assert read_reply(proc) == b"FAIL\n"
        proc.stdin.close()  # type: ignore[union-attr]
        assert finish(proc) == (0, b"")
    finally:
        fake.close()
    assert fake.connections == 3  # the refused RELAY 1, then one per request
    assert fake.requests == [
        b"PRE . imap joe@example.test\n",
        auth_bytes("joe@example.test", "wrong"),
    ]


def test_reply_arriving_in_pieces_is_written_once(conf: Path, fake: FakeVmaild) -> None:
    fake.answers, fake.pieces = [ACCOUNT], 7
    proc = start_relay(conf)
    send(proc, b"PRE . imap joe@example.test\n")
    assert proc.stdout is not None
    # The fake pauses between pieces, so a relay that forwarded each piece
    # would make this first read return only the first one.
    assert os.read(proc.stdout.fileno(), 65536) == ACCOUNT  # one write, whole
    proc.stdin.close()  # type: ignore[union-attr]
    assert finish(proc) == (0, b"")


def test_passwd_and_a_long_enumerate(conf: Path, fake: FakeVmaild) -> None:
    listing = (
        b"".join(b"user%d@example.test\t5000\t5000\t/home/vmail\n" % i for i in range(3000))
        + b".\n"
    )
    assert len(listing) > 100_000
    fake.answers, fake.pieces = [b"OK\n", listing], 13
    proc = start_relay(conf)
    send(proc, b"PASSWD webmail\tjoe@example.test\told\tnew\n")
    assert read_reply(proc, codec.ReplyReader(single_line=True)) == b"OK\n"
    send(proc, b"ENUMERATE\n")
    assert read_reply(proc, codec.ReplyReader(1 << 24)) == listing
    proc.stdin.close()  # type: ignore[union-attr]
    assert finish(proc) == (0, b"")


def test_a_nonsense_request_gets_fail_without_asking_vmaild(conf: Path, fake: FakeVmaild) -> None:
    proc = start_relay(conf)
    send(proc, b"HELLO\n")
    assert read_reply(proc) == b"FAIL\n"
    proc.stdin.close()  # type: ignore[union-attr]
    assert finish(proc) == (0, b"")
    assert fake.requests == []


# -- ending --------------------------------------------------------------------------------


@pytest.mark.parametrize("pending", [b"", b"AUTH 40\nimap\nlog"], ids=["idle", "mid-request"])
def test_stdin_eof_exits_zero_at_once(conf: Path, fake: FakeVmaild, pending: bytes) -> None:
    proc = start_relay(conf)
    send(proc, pending)
    t0 = time.monotonic()
    proc.stdin.close()  # type: ignore[union-attr]
    assert finish(proc) == (0, b"")
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "waiting-for-vmaild"])
def test_sigterm_exits_zero_at_once(conf: Path, fake: FakeVmaild, busy: bool) -> None:
    fake.answers = ["hang"]
    proc = start_relay(conf)
    wait_until(lambda: catches(proc.pid, signal.SIGTERM), 10, "the relay's SIGTERM handler")
    if busy:
        send(proc, b"PRE . imap joe@example.test\n")
        wait_until(lambda: fake.requests, 10, "the request to reach the fake vmaild")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == (0, b"")
    assert time.monotonic() - t0 < 1


@pytest.mark.parametrize(
    "answer",
    [None, b"UID=5000\nGID=5000\n", b"FAIL\nextra", "hang"],
    ids=["closed", "partial", "trailing-bytes", "timeout"],
)
def test_no_complete_reply_exits_without_writing(
    conf: Path, fake: FakeVmaild, answer: bytes | str | None
) -> None:
    fake.answers = [answer]
    proc = start_relay(conf)
    send(proc, auth_bytes("joe@example.test", "s3cret"))
    assert read_reply(proc) is None  # EOF on stdout: not one byte written
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert finish(proc) == (authpipe_main.EX_TEMPFAIL, b"")
    assert b"vmaild-authpipe:" in err and b"s3cret" not in err  # never a password


def test_daemon_down_exits_without_writing(conf: Path) -> None:
    proc = start_relay(conf)  # nothing listens on the socket path
    t0 = time.monotonic()
    send(proc, auth_bytes("joe@example.test", "s3cret"))
    assert read_reply(proc) is None
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert finish(proc) == (authpipe_main.EX_TEMPFAIL, b"")
    assert time.monotonic() - t0 < 2
    assert b"vmaild-authpipe:" in err and b"s3cret" not in err


def test_broken_config_exits_without_writing(tmp_path: Path) -> None:
    conf = tmp_path / "vmaild.conf"
    conf.write_text("[database]\nhosts = h\n")  # no [auth] listen
    proc = start_relay(conf)
    send(proc, b"PRE . imap joe@example.test\n")
    assert read_reply(proc) is None
    assert finish(proc) == (authpipe_main.EX_TEMPFAIL, b"")


# -- cheap start-up ------------------------------------------------------------------------


def test_startup_imports_nothing_heavy(conf: Path) -> None:
    code = (
        "import sys; from vmaild import authpipe_main as m; m.read_settings(sys.argv[1]); "
        "print(' '.join(x for x in ('passlib', 'pymysql', 'prometheus_client', 'asyncio') "
        "if x in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(conf)], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""


def test_read_settings(tmp_path: Path, conf: Path, sock_path: str) -> None:
    assert authpipe_main.read_settings(str(conf)) == (sock_path, 1.5)
    tcp = tmp_path / "tcp.conf"
    tcp.write_text("[auth]\nlisten = 127.0.0.1:9999 ; comment\nrelay_timeout = 300\n")
    assert authpipe_main.read_settings(str(tcp)) == (("127.0.0.1", 9999), 29.0)
    bad = tmp_path / "bad.conf"
    bad.write_text("[auth]\nlisten = nowhere\n")
    with pytest.raises(ValueError, match=r"\[auth\] listen"):
        authpipe_main.read_settings(str(bad))


# -- encoding ------------------------------------------------------------------------------

_text = st.text(
    st.characters(min_codepoint=32, exclude_characters="\t\x7f", exclude_categories=("Cs",)),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() == s)


@given(
    service=_text.filter(lambda s: " " not in s), user=_text, password=_text, final_lf=st.booleans()
)
def test_encode_request_round_trips(service: str, user: str, password: str, final_lf: bool) -> None:
    auth = codec.Auth(service, "login", f"{user}\n{password}{chr(10) if final_lf else ''}".encode())
    pre = codec.Pre(".", service, user)
    passwd = codec.Passwd(service, user, password, password[::-1])
    for request in (auth, pre, passwd, codec.Enumerate()):
        encoded = authpipe_main.encode_request(request)
        assert codec.AuthpipeDecoder().feed(encoded) == [request]


def test_encode_request_matches_protocols_example() -> None:
    # PROTOCOLS.md 4.3: service imap, user joe@example.com, password s3cret.
    auth = codec.Auth("imap", "login", b"joe@example.com\ns3cret\n")
    assert authpipe_main.encode_request(auth) == b"AUTH 34\nimap\nlogin\njoe@example.com\ns3cret\n"
