"""Logins end to end: a private MariaDB loaded with the seed's exact SQL (ENCRYPT() passwords)
and migrated with ``vmailctl db migrate``, the real ``vmaild serve``, and Courier's real
authdaemond running vmaild-authpipe as /etc/courier/authProg, with imapd and pop3d on it.

Clients are Courier's own ``authtest``/``authenumerate``, imaplib and poplib, and raw requests
on authdaemond's socket (PASSWD, which no command-line tool sends). The module has its own
MariaDB because one test stops it. Hashes are made with 5,000 rounds to keep the run short.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.common.maildir import drop_message
from harness.common.ports import free_port
from harness.common.tempdir import shared_tempdir
from harness.common.wait import wait_until
from harness.courier.paths import AUTHDAEMON_SOCKET
from harness.courier.server import Courier
from harness.mariadb.server import MariaDB
from harness.stack.seed import SEED_USERS, SeedDatabase, load_seed
from harness.vmaild.server import Vmaild, config_text, seed_ports
from tests.integration.conftest import CourierSession, require
from vmaild import passwords

BIN = Path(sys.executable).parent
AUTHPIPE = BIN / "vmaild-authpipe"
ROUNDS = 5000


@dataclass
class Stack:
    """Everything one module's tests log in through."""

    db: MariaDB
    seed: SeedDatabase
    vmaild: Vmaild
    courier: Courier
    base: Path
    auth_socket: Path
    ports: dict[str, int]
    metrics_port: int
    users: dict[str, str] = field(default_factory=dict)

    def sql(self, statement: str, args: object = None) -> list[tuple[object, ...]]:
        return self.db.query(statement, args, database=self.seed.dbname)

    def stored(self, address: str) -> str:
        return str(self.sql("SELECT password FROM users WHERE email = %s", (address,))[0][0])

    def add_user(self, password: str, stored: str | None = None, **columns: object) -> str:
        """A new account (unique address) with a sha512_crypt hash unless ``stored``."""
        address = f"u{uuid.uuid4().hex[:10]}@example.test"
        stored = stored or passwords.hash_password(password, "sha512_crypt", ROUNDS)
        names = ["email", "password", *columns]
        marks = ", ".join(["%s"] * len(names))
        self.sql(
            f"INSERT INTO users ({', '.join(names)}) VALUES ({marks})",
            (address, stored, *columns.values()),
        )
        self.users[address] = password
        return address

    def maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.base / domain / local


@contextlib.contextmanager
def auth_stack(
    courier: CourierSession, extra_auth: str = "", rounds: int = ROUNDS
) -> Iterator[Stack]:
    """MariaDB + migrated seed + vmaild (auth, tcp: maps, metrics) + Courier on it;
    ``rounds``: vmaild's password_rounds (new hashes, and the dummy hash of failures)."""
    require(
        MariaDB.missing_requirements() + Courier.missing_requirements("authpipe"),
        "MariaDB and Courier",
    )
    tmp = shared_tempdir("vmaild-auth-")
    db = MariaDB()
    vmaild = None
    try:
        db.start()
        seed = load_seed(db)
        base, sock = tmp / "vmail", tmp / "run" / "auth.sock"
        ports, metrics_port = seed_ports(), free_port()
        conf = config_text(
            db_port=db.port,
            dbname=seed.dbname,
            user=seed.user,
            password=seed.password,
            ports=ports,
            metrics_port=metrics_port,
            extra=(
                f"[auth]\nlisten = unix:{sock}\npassword_rounds = {rounds}\n{extra_auth}\n"
                f"[mailbox]\nbase = {base}\n"
            ),
        )
        vmaild = Vmaild(conf, tmp / "vmaild")
        vmaild.migrate()
        vmaild.start()
        c = courier(AUTHPIPE, auth_env={"VMAILD_CONFIG": str(vmaild.config_path)})
        yield Stack(db, seed, vmaild, c, base, sock, ports, metrics_port, dict(SEED_USERS))
    finally:
        if vmaild is not None:
            vmaild.stop()
        db.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(courier: CourierSession) -> Iterator[Stack]:
    with auth_stack(courier) as s:
        yield s


def authdaemond_request(data: bytes, timeout: float = 30) -> bytes:
    """One request on authdaemond's socket, read to EOF (authdaemond closes after a reply)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(AUTHDAEMON_SOCKET))
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def imap_login(stack: Stack, user: str, password: str) -> imaplib.IMAP4:
    m = imaplib.IMAP4(stack.courier.host, stack.courier.imap_port, timeout=30)
    m.login(user, password)
    return m


MESSAGE = "From: a@example.test\nTo: {to}\nSubject: hello {tag}\n\nbody {tag}\n"


# -- authtest ------------------------------------------------------------------------------


def test_authtest_good_and_bad_password(stack: Stack) -> None:
    user = stack.add_user("good-pw-1")
    rc, out, err = stack.courier.authtest(user, "good-pw-1")
    assert rc == 0, err
    assert f"Authenticated: {user}  (uid 5000, gid 5000)" in out
    assert f"Home Directory: {stack.base}" in out and "Maildir: example.test/" in out
    assert "Encrypted Password: (none)" in out  # the hash is never handed out
    rc, out, err = stack.courier.authtest(user, "bad-pw-1")
    assert rc != 0 and "Authentication FAILED: Operation not permitted" in err
    # A lookup (PRE, what maildrop -d does) and an unknown account.
    assert stack.courier.authtest(user)[0] == 0
    assert stack.courier.authtest("nobody@example.test", "x")[0] != 0


def test_seed_encrypt_user_logs_in_and_ends_with_a_modern_hash(stack: Stack) -> None:
    user, password = "alice@example.test", SEED_USERS["alice@example.test"]
    before = stack.stored(user)
    assert passwords.identify(before) == "des_crypt"  # what MariaDB's ENCRYPT() stored
    assert stack.courier.authtest(user, password)[0] == 0
    wait_until(lambda: stack.stored(user).startswith("$6$"), 10, "the rehash to be stored")
    after = stack.stored(user)
    assert passwords.identify(after) == "sha512_crypt" and passwords.verify(password, after)
    assert stack.courier.authtest(user, password)[0] == 0
    # DES read only 8 characters ("alice-pw"); the new hash reads them all.
    assert stack.courier.authtest(user, password[:8] + "X")[0] != 0
    metrics = stack.vmaild.metrics_text(stack.metrics_port)
    assert "vmaild_login_rehashes_total 1.0" in metrics


def test_authenumerate_lists_active_accounts(stack: Stack) -> None:
    off = stack.add_user("x", active=0)
    r = subprocess.run(["authenumerate"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    names = {line.split("\t")[0] for line in r.stdout.splitlines()}
    assert set(SEED_USERS) <= names and off not in names
    assert f"sales@raecoo.com\t5000\t5000\t{stack.base}\traecoo.com/sales/" in r.stdout


# -- IMAP and POP3 -------------------------------------------------------------------------


def test_imap_and_pop3_read_a_message(stack: Stack) -> None:
    user = stack.add_user("imap-pw-1", name="Imap User")
    assert not stack.maildir(user).exists()
    # First login: vmaild creates the Maildir, so imapd can chdir into it (no "hello mail").
    m = imap_login(stack, user, "imap-pw-1")
    assert m.select("INBOX") == ("OK", [b"0"])
    m.logout()
    assert (stack.maildir(user) / "cur").is_dir()
    assert stack.maildir(user).stat().st_uid == 5000
    drop_message(stack.maildir(user), MESSAGE.format(to=user, tag="imap"))
    m = imap_login(stack, user, "imap-pw-1")
    assert m.select("INBOX")[1] == [b"1"]
    typ, data = m.fetch("1", "(BODY[TEXT])")
    assert typ == "OK" and b"body imap" in data[0][1]  # type: ignore[index]
    m.logout()
    p = poplib.POP3(stack.courier.host, stack.courier.pop3_port, timeout=30)
    p.user(user)
    assert p.pass_("imap-pw-1").startswith(b"+OK")
    assert p.stat()[0] == 1
    assert b"body imap" in b"\n".join(p.retr(1)[1])
    p.quit()
    with pytest.raises(imaplib.IMAP4.error, match="Login failed"):
        imap_login(stack, user, "wrong")
    p = poplib.POP3(stack.courier.host, stack.courier.pop3_port, timeout=30)
    p.user(user)
    with pytest.raises(poplib.error_proto, match="Login failed"):
        p.pass_("wrong")
    p.close()
    metrics = stack.vmaild.metrics_text(stack.metrics_port)
    assert 'vmaild_logins_total{result="ok",service="imap"}' in metrics
    assert 'vmaild_logins_total{result="fail",service="pop3"}' in metrics


def test_disabled_account_is_refused_at_once(stack: Stack) -> None:
    user = stack.add_user("off-pw-1")
    imap_login(stack, user, "off-pw-1").logout()  # verified and cached
    stack.sql("UPDATE users SET active = 0 WHERE email = %s", (user,))
    with pytest.raises(imaplib.IMAP4.error, match="Login failed"):
        imap_login(stack, user, "off-pw-1")
    assert stack.courier.authtest(user)[0] != 0


# -- password changes ----------------------------------------------------------------------


def test_password_change_through_passwd(stack: Stack) -> None:
    user = stack.add_user("before-pw")
    imap_login(stack, user, "before-pw").logout()
    # authdaemond's own PASSWD request (PROTOCOLS.md 4.3), which it hands to authpipe.
    reply = authdaemond_request(f"PASSWD webmail\t{user}\tbefore-pw\tafter-pw\n".encode())
    assert reply == b"OK\n"
    assert passwords.verify("after-pw", stack.stored(user))
    changed = stack.sql("SELECT password_changed_at FROM users WHERE email = %s", (user,))
    assert changed[0][0] is not None
    with pytest.raises(imaplib.IMAP4.error, match="Login failed"):
        imap_login(stack, user, "before-pw")
    imap_login(stack, user, "after-pw").logout()
    wrong = authdaemond_request(f"PASSWD webmail\t{user}\tbefore-pw\tthird-pw\n".encode())
    assert wrong == b"FAIL\n"
    assert passwords.verify("after-pw", stack.stored(user))


def test_password_change_in_the_database(stack: Stack) -> None:
    user = stack.add_user("sql-old-pw")
    imap_login(stack, user, "sql-old-pw").logout()
    imap_login(stack, user, "sql-old-pw").logout()  # now from the verified-login cache
    new_hash = passwords.hash_password("sql-new-pw", "bcrypt", 4)
    stack.sql("UPDATE users SET password = %s WHERE email = %s", (new_hash, user))
    # At once: no TTL to wait out.
    with pytest.raises(imaplib.IMAP4.error, match="Login failed"):
        imap_login(stack, user, "sql-old-pw")
    imap_login(stack, user, "sql-new-pw").logout()
    assert stack.courier.authtest(user, "sql-old-pw")[0] != 0


# -- the database goes away ----------------------------------------------------------------


def test_database_down(stack: Stack) -> None:
    cached = stack.add_user("cached-pw")
    uncached = stack.add_user("uncached-pw")
    imap_login(stack, cached, "cached-pw").logout()
    stack.db.stop()
    try:
        # Verified before: still logs in, IMAP and POP3.
        imap_login(stack, cached, "cached-pw").logout()
        p = poplib.POP3(stack.courier.host, stack.courier.pop3_port, timeout=30)
        p.user(cached)
        assert p.pass_("cached-pw").startswith(b"+OK")
        p.quit()
        # Never verified: a temporary failure, not "wrong password". Courier's imaplogin
        # says "Temporary problem" (and hangs up); a FAIL would say "Login failed.".
        with pytest.raises((imaplib.IMAP4.error, imaplib.IMAP4.abort)) as e:
            imap_login(stack, uncached, "uncached-pw")
        assert "Temporary problem" in str(e.value) and "Login failed" not in str(e.value)
        p = poplib.POP3(stack.courier.host, stack.courier.pop3_port, timeout=30)
        p.user(uncached)
        with pytest.raises(poplib.error_proto, match="Temporary problem"):
            p.pass_("uncached-pw")
        p.close()
        rc, _, err = stack.courier.authtest(uncached, "uncached-pw")
        assert rc != 0 and "Input/output error" in err
        # A wrong password for the cached account cannot be judged either.
        rc, _, err = stack.courier.authtest(cached, "wrong-pw")
        assert rc != 0 and "Input/output error" in err
    finally:
        stack.db.start()
    # Back: the uncached login works without restarting anything.
    wait_until(
        lambda: stack.courier.authtest(uncached, "uncached-pw")[0] == 0,
        15,
        "logins to work again after the database restart",
    )
    metrics = stack.vmaild.metrics_text(stack.metrics_port)
    assert 'vmaild_logins_total{result="tempfail",service="imap"}' in metrics


def auth_connections(stack: Stack) -> float:
    """vmaild's open connections on the [auth] socket, from its metrics."""
    for line in stack.vmaild.metrics_text(stack.metrics_port).splitlines():
        if line.startswith('vmaild_connections{listener="auth"}'):
            return float(line.split()[-1])
    return 0.0


def test_relays_keep_their_connections_across_a_vmaild_restart(stack: Stack) -> None:
    """vmaild-authpipe keeps one connection to vmaild (RELAY 1): many logins, at most one
    connection per authdaemond worker. Restarting vmaild closes them; each relay notices
    before its next request and connects again, so not one login fails meanwhile."""
    user = stack.add_user("restart-pw")
    for _ in range(12):
        assert stack.courier.authtest(user, "restart-pw")[0] == 0
    assert 1 <= auth_connections(stack) <= stack.courier.daemons
    stack.vmaild.stop()
    stack.vmaild.start()
    for _ in range(12):
        rc, _, err = stack.courier.authtest(user, "restart-pw")
        assert rc == 0, err
    assert 1 <= auth_connections(stack) <= stack.courier.daemons


def test_relay_processes_stay_healthy(stack: Stack) -> None:
    """After all of the above, authdaemond's workers still answer quickly: no relay left
    hanging (a relay that ignored EOF would cost 2-12 s per restart, PROTOCOLS.md 4.2)."""
    user = stack.add_user("quick-pw")
    started = time.monotonic()
    for _ in range(10):
        assert stack.courier.authtest(user, "quick-pw")[0] == 0
    assert time.monotonic() - started < 15
    assert "spurious" not in stack.courier.log_text()
