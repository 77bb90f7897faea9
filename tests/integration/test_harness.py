"""Smoke tests of harness/: each real service comes up, answers, and goes away.

They double as executable documentation of how to use the harness.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.common.maildir import drop_message, make_maildir
from harness.common.ports import port_accepts
from harness.common.procs import pids_with_cwd_under
from harness.mariadb.server import MariaDB
from harness.postfix.server import Postfix
from harness.stack.seed import (
    SEED_FORWARDINGS,
    SEED_QUERIES,
    SEED_USERS,
    SeedDatabase,
    authmysqlrc_text,
    expected_answers,
    seed_main_cf,
)

from .conftest import CourierSession

pytestmark = pytest.mark.integration

INLINE_VIRTUAL = {
    "virtual_mailbox_domains": "inline:{ example.test=ok }",
    "virtual_mailbox_maps": "inline:{ joe@example.test=example.test/joe/ }",
    "virtual_uid_maps": "static:5000",
    "virtual_gid_maps": "static:5000",
}


# --------------------------------------------------------------------- MariaDB
def test_mariadb_answers_and_creates_utf8mb4_databases(mariadb: MariaDB) -> None:
    assert mariadb.query("SELECT 1 + 1") == [(2,)]
    mariadb.create_database("harness_smoke", "smoke_user", "smoke-pw")
    try:
        conn = mariadb.connect("smoke_user", "smoke-pw", "harness_smoke")
        with conn.cursor() as cur:
            cur.execute("SELECT @@character_set_database, CURRENT_USER()")
            assert cur.fetchone() == ("utf8mb4", "smoke_user@127.0.0.1")
        conn.close()
    finally:
        mariadb.drop_database("harness_smoke")


def test_mariadb_restarts_on_same_port_and_datadir() -> None:
    with MariaDB() as db:
        port = db.port
        db.execute_script(
            "CREATE DATABASE keep; CREATE TABLE keep.t (v int); INSERT INTO keep.t VALUES (7);"
        )
        db.stop()
        assert not port_accepts(db.host, port)
        db.start()
        assert db.port == port
        assert db.query("SELECT v FROM keep.t") == [(7,)]
        db.kill()  # crash; InnoDB recovers on the next start
        db.start()
        assert db.query("SELECT v FROM keep.t") == [(7,)]
    assert not db.basedir.exists()


# ------------------------------------------------------------------------ seed
def test_seed_rows_use_encrypt(seed_db: SeedDatabase) -> None:
    rows = seed_db.mariadb.query(
        "SELECT email, password FROM users ORDER BY email", database=seed_db.dbname
    )
    assert [r[0] for r in rows] == sorted(SEED_USERS)
    for email, stored in rows:
        # ENCRYPT() = DES crypt: 2 salt characters + 11, checkable in SQL.
        assert len(stored) == 13
        check = seed_db.mariadb.query("SELECT ENCRYPT(%s, %s)", (SEED_USERS[email], stored))
        assert check[0][0].decode() == stored


def test_seed_cf_files_answer_through_postmap(
    seed_db: SeedDatabase,
    seed_cf: dict[str, Path],
    postfix_factory: Callable[..., Postfix],
    service_tmp: Path,
) -> None:
    text = seed_cf["mailboxes"].read_text()
    # Written exactly like the tutorial: continued on an indented line.
    assert f"query = {SEED_QUERIES['mailboxes']}\n" in text
    assert "'/')\n        FROM users WHERE email='%s'\n" in text
    assert f"hosts = 127.0.0.1:{seed_db.mariadb.port}\n" in text

    pf = postfix_factory(seed_main_cf(seed_cf, service_tmp / "vmail"))
    for name, answers in expected_answers().items():
        rc, found, err = pf.postmap_bulk(
            [*answers, "nobody@example.test"], f"mysql:{seed_cf[name]}"
        )
        assert (rc, err) == (0, "")
        assert found == answers
        if name != "email2email":  # the only map the tutorial does not proxy
            key, value = next(iter(answers.items()))
            rc, out, err = pf.postmap_q(key, f"proxy:mysql:{seed_cf[name]}")
            assert (rc, out.strip(), err) == (0, value, "")
    rc, out, err = pf.postmap_q("nobody@example.test", f"mysql:{seed_cf['mailboxes']}")
    assert (rc, out, err) == (1, "", "")

    # The tutorial's wiring in smtpd: users, aliases and the catch-all domain.
    with pf.smtp() as smtp:
        smtp.ehlo()
        smtp.mail("sender@elsewhere.test")
        assert smtp.rcpt("alice@example.test")[0] == 250
        assert smtp.rcpt("team@example.test")[0] == 250
        assert smtp.rcpt("anyone@example.org")[0] == 250  # '@example.org' forwarding
        assert smtp.rcpt("nobody@example.test")[0] == 550
    assert "@example.org" in SEED_FORWARDINGS


# --------------------------------------------------------------------- Postfix
def test_postfix_accepts_inline_virtual_mailbox_and_rejects_unknown(
    postfix_factory: Callable[..., Postfix], service_tmp: Path
) -> None:
    settings = {**INLINE_VIRTUAL, "virtual_mailbox_base": str(service_tmp / "vmail")}
    first = postfix_factory(settings)
    second = postfix_factory(settings)  # a second instance coexists
    assert first.smtp_port != second.smtp_port
    assert first.postconf_value("queue_directory") == str(first.queue_dir)

    for pf in (first, second):
        with pf.smtp() as smtp:
            smtp.ehlo()
            smtp.mail("sender@elsewhere.test")
            assert smtp.rcpt("joe@example.test")[0] == 250
            code, text = smtp.rcpt("nobody@example.test")
            assert code == 550 and b"User unknown in virtual mailbox table" in text

    mark = first.log_mark()
    assert first.send("sender@elsewhere.test", "joe@example.test") == {}
    queued = first.wait_for_log(r"([0-9A-F]{6,}): message-id=", since=mark).group(1)
    # No Maildir exists, so virtual(8) defers: the message stays queued.
    first.wait_for_log(rf"{queued}: to=<joe@example\.test>.*status=deferred", since=mark)
    assert queued in first.queue_ids()
    first.delete_queue()
    first.wait_for_empty_queue()

    with pytest.raises(smtplib.SMTPRecipientsRefused):
        second.send("sender@elsewhere.test", "nobody@example.test")

    queue_dir = first.queue_dir
    first.cleanup()
    assert not pids_with_cwd_under(queue_dir) and not queue_dir.exists()
    assert not port_accepts("127.0.0.1", first.smtp_port)


def test_postfix_reload_applies_postconf(
    postfix_factory: Callable[..., Postfix], service_tmp: Path
) -> None:
    pf = postfix_factory({**INLINE_VIRTUAL, "virtual_mailbox_base": str(service_tmp)})
    pf.postconf({"virtual_mailbox_maps": "inline:{ ann@example.test=example.test/ann/ }"})
    with pf.smtp() as smtp:
        smtp.ehlo()
        smtp.mail("sender@elsewhere.test")
        assert smtp.rcpt("ann@example.test")[0] == 250
        assert smtp.rcpt("joe@example.test")[0] == 550


# --------------------------------------------------------------------- Courier
AUTHPROG = r"""#!/bin/sh
# Throwaway authpipe program: one account ($TEST_ACCOUNT / $TEST_PASSWORD) for
# every service; the wrapper installed as /etc/courier/authProg exports these.
account() {
    printf 'UID=5000\nGID=5000\nHOME=%s\nADDRESS=%s\nMAILDIR=%s/Maildir\n.\n' \
        "$TEST_HOME" "$TEST_ACCOUNT" "$TEST_HOME"
}
nl='
'
while IFS= read -r line; do
    case "$line" in
    "PRE . "*)                      # PRE . <service> <user>
        rest=${line#PRE . }
        if [ "${rest#* }" = "$TEST_ACCOUNT" ]; then account; else echo FAIL; fi ;;
    "AUTH "*)                       # AUTH <len>\n<service>\n<type>\n<user>\n<pass>\n
        data=$(dd bs=1 count="${line#AUTH }" 2>/dev/null)
        IFS=$nl; set -- $data; IFS=' '
        if [ "$2" = login ] && [ "$3" = "$TEST_ACCOUNT" ] && [ "$4" = "$TEST_PASSWORD" ]; then
            account
        else
            echo FAIL
        fi ;;
    ENUMERATE) printf '.\n' ;;
    *) echo FAIL ;;
    esac
done
"""

ACCOUNT, PASSWORD = "joe@example.test", "s3cret pass"


@pytest.fixture
def throwaway_authprog(service_tmp: Path) -> dict[str, object]:
    prog = service_tmp / "authprog.sh"
    prog.write_text(AUTHPROG)
    prog.chmod(0o755)
    home = service_tmp / "home" / "joe"
    maildir = make_maildir(home / "Maildir")
    drop_message(
        maildir,
        textwrap.dedent("""\
        From: sender@elsewhere.test
        To: joe@example.test
        Subject: hello from the harness

        body text
        """),
    )
    env = {"TEST_HOME": str(home), "TEST_ACCOUNT": ACCOUNT, "TEST_PASSWORD": PASSWORD}
    return {"prog": prog, "env": env}


def test_courier_authpipe_imap_and_pop3(
    courier: CourierSession, throwaway_authprog: dict[str, object]
) -> None:
    c = courier(throwaway_authprog["prog"], auth_env=throwaway_authprog["env"])
    assert "exec " in Path("/etc/courier/authProg").read_text()

    rc, out, _ = c.authtest(ACCOUNT, PASSWORD)
    assert rc == 0 and f"Authenticated: {ACCOUNT}" in out
    assert c.authtest(ACCOUNT, "wrong")[0] != 0
    assert c.authtest(ACCOUNT, PASSWORD, service="pop3")[0] == 0
    assert c.authtest(ACCOUNT)[0] == 0  # PRE lookup, as maildrop -d does it

    imap = imaplib.IMAP4(c.host, c.imap_port)
    try:
        assert imap.login(ACCOUNT, PASSWORD)[0] == "OK"
        assert imap.select("INBOX") == ("OK", [b"1"])
        _, data = imap.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
        assert b"hello from the harness" in data[0][1]
    finally:
        imap.logout()
    # (A wrong password is only checked through authtest: imapd and pop3d
    # answer a failed login after a fixed 5 s delay.)

    pop = poplib.POP3(c.host, c.pop3_port)
    try:
        pop.user(ACCOUNT)
        assert pop.pass_(PASSWORD).startswith(b"+OK")
        assert pop.stat()[0] == 1
        assert b"body text" in pop.retr(1)[1]
    finally:
        pop.quit()


def test_courier_authmysql_baseline(
    courier: CourierSession, seed_db: SeedDatabase, service_tmp: Path
) -> None:
    make_maildir(service_tmp / "raecoo.com" / "sales")
    c = courier(authmysqlrc=authmysqlrc_text(seed_db.mariadb, home=service_tmp))
    rc, out, _ = c.authtest("sales@raecoo.com", SEED_USERS["sales@raecoo.com"])
    assert rc == 0 and "Maildir: raecoo.com/sales/" in out
    assert c.authtest("sales@raecoo.com", "wrong")[0] != 0
    imap = imaplib.IMAP4(c.host, c.imap_port)
    assert imap.login("sales@raecoo.com", SEED_USERS["sales@raecoo.com"])[0] == "OK"
    imap.logout()


def test_courier_restores_global_files(
    courier: CourierSession, throwaway_authprog: dict[str, object]
) -> None:
    courier.close()
    before = {
        p: _snapshot(p)
        for p in ("/etc/courier/authdaemonrc", "/etc/courier/authProg", "/etc/courier/authmysqlrc")
    }
    c = courier(throwaway_authprog["prog"], auth_env=throwaway_authprog["env"], debug_login=1)
    assert 'authmodulelist="authpipe"' in Path("/etc/courier/authdaemonrc").read_text()
    courier.close()
    assert {p: _snapshot(p) for p in before} == before
    assert not c.socket.exists()
    assert not port_accepts(c.host, c.imap_port)


def _snapshot(path: str) -> tuple[object, ...] | None:
    """Content, mode and owner of a file (None if absent)."""
    if not os.path.lexists(path):
        return None
    st = os.lstat(path)
    return (Path(path).read_bytes(), st.st_mode, st.st_uid, st.st_gid)
