"""A configuration that does not fit the database, against the real MariaDB and vmaild.

The seed's tables, unmigrated, with the default ``[auth] query`` (it reads ``u.maildir``):
one clear log line with the fix, ``vmaild_config_schema_errors`` 1, logins answered with a
temporary failure, the database host still up; after ``vmailctl db migrate`` and SIGHUP the
gauge is 0 and logins work. ``vmaild check`` says the same with its exit code. And a real
outage is not mistaken for a misfit.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.common.ports import free_port
from harness.common.wait import wait_until
from harness.mariadb.server import MariaDB
from harness.stack.seed import SeedDatabase, load_seed
from harness.vmaild.server import Vmaild, config_text

BIN = Path(sys.executable).parent
AUTH_QUERY = 'vmaild_config_schema_errors{key="query",section="auth"}'
SEED_AUTH = (
    "query = SELECT email AS address, password FROM users WHERE email='%s'\n"
    "enumerate_query = SELECT email AS address FROM users\n"
    "passwd_query = UPDATE users SET password = %(new)s WHERE email = %(address)s "
    "AND password = %(old)s\nrehash = no\n"
)


def conf(db: SeedDatabase, tmp: Path, metrics_port: int, auth: str = "") -> str:
    return config_text(
        db_port=db.mariadb.port,
        dbname=db.dbname,
        user=db.user,
        password=db.password,
        metrics_port=metrics_port,
        extra=f"[auth]\nlisten = unix:{tmp}/auth.sock\n{auth}\n[mailbox]\nbase = {tmp}/vmail\n",
    )


def ask(tmp: Path, request: bytes) -> bytes:
    """One request on vmaild's auth socket, read to EOF: b"" is a temporary failure."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(tmp / "auth.sock"))
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def pre(user: str) -> bytes:
    return f"PRE . imap {user}\n".encode()


def login(user: str, password: str) -> bytes:
    body = f"imap\nlogin\n{user}\n{password}\n".encode()
    return b"AUTH %d\n" % len(body) + body


def vmaild_check(path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "vmaild"), "check", "-c", str(path), *options],
        capture_output=True,
        text=True,
        timeout=60,
    )


def metric(v: Vmaild, port: int, series: str) -> str | None:
    """The value of one series as text ("1.0"), or None when it is not exported."""
    m = re.search(rf"^{re.escape(series)} (\S+)$", v.metrics_text(port), re.MULTILINE)
    return m.group(1) if m else None


def test_default_auth_query_on_the_seed_tables(seed_db: SeedDatabase, tmp_path: Path) -> None:
    mp = free_port()
    v = Vmaild(conf(seed_db, tmp_path, mp), tmp_path / "vmaild")
    r = vmaild_check(v.config_path)
    assert r.returncode == 1, r
    lines = r.stderr.splitlines()
    expected = (
        f"vmaild: {v.config_path}: [auth] query does not fit the database: unknown "
        "column 'u.maildir' (error 1054); fix: run 'vmailctl db migrate', or set [auth] "
        "query = SELECT email AS address, password FROM users WHERE email='%s'"
    )
    assert expected in lines
    # The other defaults that need the migration say so too; the seed's own maps fit.
    assert any(
        "[auth] passwd_query does not fit" in line and "password_changed_at" in line
        for line in lines
    )
    assert not any("[map " in line for line in lines)
    assert vmaild_check(v.config_path, "--no-db").returncode == 0

    with v:
        wait_until(
            lambda: metric(v, mp, AUTH_QUERY) == "1.0", timeout=15, what="the misfit in the gauge"
        )
        assert (
            metric(v, mp, 'vmaild_config_schema_errors{key="query",section="map mailboxes"}')
            == "0.0"
        )
        for _ in range(3):  # a temporary failure (no reply), never "no such user"
            assert ask(tmp_path, pre("sales@raecoo.com")) == b""
            assert ask(tmp_path, login("sales@raecoo.com", "password")) == b""
        log = v.log()
        assert log.count("[auth] query does not fit the database") == 1
        assert expected.removeprefix("vmaild: ") in log
        assert "database unavailable" not in log
        host = f'vmaild_db_up{{host="127.0.0.1:{seed_db.mariadb.port}"}}'
        assert metric(v, mp, host) == "1.0"

        v.migrate()
        r = vmaild_check(v.config_path)
        assert r.returncode == 0 and "queries fit the database" in r.stdout, r
        v.reload()
        wait_until(
            lambda: metric(v, mp, AUTH_QUERY) == "0.0",
            timeout=15,
            what="the gauge back at 0 after the migration and a reload",
        )
        assert ask(tmp_path, pre("sales@raecoo.com")).startswith(b"UID=")
        assert ask(tmp_path, login("sales@raecoo.com", "password")).endswith(b"\n.\n")
        assert v.log().count("[auth] query does not fit the database") == 1


@pytest.fixture
def own_mariadb() -> Iterator[MariaDB]:
    """A MariaDB of this test's own, so stopping it disturbs no other test."""
    with MariaDB() as m:
        yield m


def test_an_outage_is_not_a_misfit(own_mariadb: MariaDB, tmp_path: Path) -> None:
    db = load_seed(own_mariadb)
    mp = free_port()
    v = Vmaild(conf(db, tmp_path, mp, SEED_AUTH), tmp_path / "vmaild")
    assert vmaild_check(v.config_path).returncode == 0
    own_mariadb.stop()
    # Start-up does not wait for the database (a booting host must not crash-loop).
    with v:
        assert ask(tmp_path, pre("sales@raecoo.com")) == b""
        r = vmaild_check(v.config_path)
        assert r.returncode == 0 and "database not checked" in r.stderr, r
        assert "queries not checked against the database" in r.stdout
        assert vmaild_check(v.config_path, "--db").returncode == 75
        assert metric(v, mp, AUTH_QUERY) is None  # not known yet, so not exported

        own_mariadb.start()  # the probes run once it answers
        wait_until(
            lambda: metric(v, mp, AUTH_QUERY) == "0.0",
            timeout=45,
            what="the probes once the database answers",
        )
        assert "the configuration fits the database" in v.log()
        assert ask(tmp_path, pre("sales@raecoo.com")).startswith(b"UID=")

        own_mariadb.stop()
        assert ask(tmp_path, pre("alice@example.test")) == b""
        log = v.log()
        assert "database unavailable" in log
        assert "does not fit" not in log
        assert metric(v, mp, AUTH_QUERY) == "0.0"
        assert metric(v, mp, f'vmaild_db_up{{host="127.0.0.1:{own_mariadb.port}"}}') == "0.0"
