"""SMTP AUTH through a private Postfix with ``smtpd_sasl_type = dovecot`` asking a real vmaild
on its ``[sasl]`` socket (PROTOCOLS.md section 6): smtpd -> vmaild, one hop. The SASL
settings are the shipped postfix/main.cf.vmaild's; the socket is where the shipped
configuration puts it, ``vmaild/auth`` in Postfix's queue directory.

Port 25 here offers AUTH without TLS too (``smtpd_tls_auth_only = no``, a loopback test),
so that both of Postfix's ``secured`` states are seen; the submission port requires
STARTTLS first, as shipped. No Courier: nothing in this path needs it.
"""

from __future__ import annotations

import base64
import re
import shutil
import smtplib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from harness.common.ports import free_port
from harness.common.tempdir import shared_tempdir
from harness.common.tls import Certificate, make_certificate
from harness.common.wait import wait_until
from harness.mariadb.server import MariaDB
from harness.postfix.config import vmaild_socket_dir
from harness.postfix.server import Postfix
from harness.stack import shipped
from harness.stack.seed import SEED_USERS, SeedDatabase, load_seed
from harness.vmaild.server import Vmaild, config_text
from tests.integration.conftest import require
from vmaild import passwords

ROUNDS = 5000
HOSTNAME = "mail.example.test"


@dataclass
class Stack:
    db: MariaDB
    seed: SeedDatabase
    vmaild: Vmaild
    postfix: Postfix
    cert: Certificate
    submission_port: int
    metrics_port: int
    users: dict[str, str] = field(default_factory=dict)

    def add_user(self, password: str) -> str:
        address = f"u{uuid.uuid4().hex[:10]}@example.test"
        stored = passwords.hash_password(password, "sha512_crypt", ROUNDS)
        self.db.query(
            "INSERT INTO users (email, password) VALUES (%s, %s)",
            (address, stored),
            database=self.seed.dbname,
        )
        self.users[address] = password
        return address

    def metrics(self) -> str:
        return self.vmaild.metrics_text(self.metrics_port)


def sasl_settings() -> dict[str, str]:
    """The SMTP AUTH settings of the shipped main.cf.vmaild."""
    settings = shipped.main_cf_settings(shipped.MAIN_CF)
    return {k: v for k, v in settings.items() if k.startswith("smtpd_sasl_")}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require(MariaDB.missing_requirements() + Postfix.missing_requirements(), "MariaDB, Postfix")
    tmp = shared_tempdir("vmaild-sasl-")
    db = MariaDB()
    vmaild: Vmaild | None = None
    postfix: Postfix | None = None
    try:
        db.start()
        seed = load_seed(db)
        cert = make_certificate(tmp / "tls", HOSTNAME)
        submission_port, metrics_port = free_port(), free_port()
        postfix = Postfix(
            {
                **sasl_settings(),
                "smtpd_tls_chain_files": f"{cert.key}, {cert.cert}",
                "smtpd_tls_security_level": "may",
                "smtpd_tls_auth_only": "no",
            },
            [
                f"127.0.0.1:{submission_port} inet n - n - - smtpd",
                "  -o syslog_name=postfix/submission",
                "  -o smtpd_tls_security_level=encrypt",
                "  -o smtpd_tls_auth_only=yes",
                "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject",
            ],
            basedir=tmp / "postfix",
            myhostname=HOSTNAME,
        )
        # As shipped: /var/spool/postfix/vmaild, 2750 with group postfix (vmaild.tmpfiles),
        # here in the private instance's queue directory.
        socket_dir = vmaild_socket_dir(postfix.queue_dir)
        (tmp / "vmail").mkdir()
        conf = config_text(
            db_port=db.port,
            dbname=seed.dbname,
            user=seed.user,
            password=seed.password,
            metrics_port=metrics_port,
            extra=(
                f"[auth]\npassword_rounds = {ROUNDS}\n\n"
                f"[sasl]\nlisten = unix:{socket_dir / 'auth'}\n\n"
                f"[mailbox]\nbase = {tmp / 'vmail'}\n"
            ),
        )
        vmaild = Vmaild(conf, tmp / "vmaild")
        vmaild.migrate()
        vmaild.start()
        postfix.start()
        yield Stack(db, seed, vmaild, postfix, cert, submission_port, metrics_port)
    finally:
        if postfix is not None:
            postfix.cleanup()
        if vmaild is not None:
            vmaild.stop()
        db.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def session(stack: Stack, *, submission: bool = False) -> smtplib.SMTP:
    port = stack.submission_port if submission else stack.postfix.smtp_port
    s = smtplib.SMTP(stack.postfix.host, port, timeout=60)
    s.ehlo()
    if submission:
        assert "auth" not in s.esmtp_features  # AUTH only after STARTTLS
        context = stack.cert.client_context()
        context.check_hostname = False  # 127.0.0.1; the certificate names HOSTNAME
        s.starttls(context=context)
        s.ehlo()
    return s


def login(s: smtplib.SMTP, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
    assert mechanism in s.esmtp_features.get("auth", "").split()
    s.user, s.password = user, password
    authobject = s.auth_plain if mechanism == "PLAIN" else s.auth_login
    try:
        return s.auth(mechanism, authobject, initial_response_ok=True)
    except smtplib.SMTPResponseException as e:
        return e.smtp_code, e.smtp_error


def smtp_auth(
    stack: Stack, mechanism: str, user: str, password: str, *, submission: bool = False
) -> tuple[int, bytes]:
    with session(stack, submission=submission) as s:
        return login(s, mechanism, user, password)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtp_auth(stack: Stack, mechanism: str) -> None:
    assert sasl_settings()["smtpd_sasl_type"] == "dovecot"
    user = stack.add_user("sasl-pw-1")
    code, text = smtp_auth(stack, mechanism, user, "sasl-pw-1")
    assert code == 235, text
    code, text = smtp_auth(stack, mechanism, user, "wrong-pw")
    assert (code, text) == (535, b"5.7.8 Error: authentication failed: authentication failure")
    # The seed's ENCRYPT() users too (a fresh one per mechanism: they get rehashed).
    seed_user = "bob@example.test" if mechanism == "PLAIN" else "postmaster@example.org"
    assert smtp_auth(stack, mechanism, seed_user, SEED_USERS[seed_user])[0] == 235
    metrics = stack.metrics()
    assert 'vmaild_logins_total{result="ok",service="smtp"}' in metrics
    assert f'vmaild_sasl_requests_total{{mechanism="{mechanism}",result="fail"}}' in metrics


def test_vmaild_sees_the_client_address_and_tls(stack: Stack) -> None:
    """Postfix sends rip= and secured (6.3): vmaild's log line for a failure names them
    (and never the password)."""
    user = stack.add_user("sasl-pw-2")
    before = len(stack.vmaild.log())
    assert smtp_auth(stack, "PLAIN", user, "not-it-1")[0] == 535
    assert smtp_auth(stack, "LOGIN", user, "not-it-2", submission=True)[0] == 535
    wait_until(lambda: "(TLS) failed" in stack.vmaild.log()[before:], 10, "the TLS log line")
    log = stack.vmaild.log()[before:]
    assert re.search(r"sasl: PLAIN login from 127\.0\.0\.1 failed", log), log
    assert re.search(r"sasl: LOGIN login from 127\.0\.0\.1 \(TLS\) failed", log), log
    assert "not-it" not in log


def test_submission_port_with_starttls(stack: Stack) -> None:
    user = stack.add_user("sasl-pw-3")
    mark = stack.postfix.log_mark()
    assert smtp_auth(stack, "PLAIN", user, "sasl-pw-3", submission=True)[0] == 235
    with session(stack, submission=True) as s:
        code, text = login(s, "LOGIN", user.upper(), "sasl-pw-3")
        assert code == 235, text
        # A transaction, so that smtpd logs who it is for (then dropped: no DATA).
        assert s.mail(user)[0] == 250 and s.rcpt("someone@example.net")[0] == 250
        s.rset()
    # user= is what Postfix takes as sasl_username (for the policy service and
    # smtpd_sender_login_maps): the account's address as the database has it, however
    # the client spelt the login.
    stack.postfix.wait_for_log(
        rf"(?m)sasl_method=LOGIN, sasl_username={re.escape(user)}$", since=mark
    )


def test_database_down_is_454_and_verified_logins_still_work(stack: Stack) -> None:
    cached = stack.add_user("sasl-cached")
    uncached = stack.add_user("sasl-uncached")
    assert smtp_auth(stack, "PLAIN", cached, "sasl-cached")[0] == 235
    stack.db.stop()
    try:
        assert smtp_auth(stack, "PLAIN", cached, "sasl-cached")[0] == 235
        assert smtp_auth(stack, "LOGIN", cached, "sasl-cached", submission=True)[0] == 235
        for mechanism in ("PLAIN", "LOGIN"):
            code, text = smtp_auth(stack, mechanism, uncached, "sasl-uncached")
            assert code == 454 and text.startswith(b"4.7.0 Temporary authentication"), text
        # A wrong password for a login that was verified is no verdict either: the
        # database is down and the stale row is not proof (never 535 on stale data).
        assert smtp_auth(stack, "PLAIN", uncached, "x")[0] == 454
        with session(stack) as s:
            assert login(s, "PLAIN", uncached, "sasl-uncached")[0] == 454
            stack.db.start()
            # The same SMTP session tries again: smtpd reconnects to vmaild (the 454 was
            # a closed connection) and the login goes through.
            assert login(s, "PLAIN", uncached, "sasl-uncached")[0] == 235
    finally:
        if not stack.db.running:
            stack.db.start()
    assert smtp_auth(stack, "PLAIN", uncached, "sasl-uncached", submission=True)[0] == 235
    assert 'vmaild_sasl_requests_total{mechanism="PLAIN",result="tempfail"}' in stack.metrics()
    assert "fatal" not in stack.postfix.log_text()


def test_malformed_client_data_gets_535_and_smtpd_carries_on(stack: Stack) -> None:
    """A PLAIN message without its NULs, and an authorization identity that is not the
    login: FAIL for that request (535), and the next login on the connection works."""
    user = stack.add_user("sasl-pw-4")
    with session(stack) as s:
        bad = base64.b64encode(b"no nuls here").decode()
        code, text = s.docmd("AUTH", f"PLAIN {bad}")
        assert code == 535 and b"malformed PLAIN message" in text, text
        other = base64.b64encode(f"boss@example.test\0{user}\0sasl-pw-4".encode()).decode()
        code, text = s.docmd("AUTH", f"PLAIN {other}")
        assert code == 535 and b"authorization identity" in text, text
        assert login(s, "PLAIN", user, "sasl-pw-4")[0] == 235
    assert "fatal" not in stack.postfix.log_text()
