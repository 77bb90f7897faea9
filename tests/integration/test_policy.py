"""The policy service end to end: private MariaDB (schema from ``vmailctl db init``), the real
``vmaild serve``, and a private Postfix configured with the shipped postfix/main.cf.policy.

Authenticated sessions use Postfix's XCLIENT command (``XCLIENT LOGIN=user``) from a host in
``smtpd_authorized_xclient_hosts``: smtpd then treats the session as SASL-authenticated and
sends ``sasl_username`` to the policy service exactly as after SMTP AUTH, without depending on
Cyrus SASL and authdaemond. Requests sent straight to the policy port are what Postfix 3.7
sends (captured from a real smtpd).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.common.maildir import drop_message, make_maildir
from harness.common.ports import free_port
from harness.common.tempdir import shared_tempdir
from harness.common.wait import wait_until
from harness.mariadb.server import MariaDB
from harness.postfix.server import Postfix
from harness.vmaild.server import Vmaild, config_text, seed_ports
from tests.integration.conftest import require

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "postfix" / "main.cf.policy"
DBNAME, DBUSER, DBPASSWORD = "vmaild_policy", "vmaild_policy", "policy-pw-1"
LIMITS = "ratelimit_messages = 3\nratelimit_recipients = 5\nratelimit_window = 3600\n"

DOMAINS = {"example.test": 1, "off.test": 0, "example.org": 1}
# email -> (active, quota_bytes, quota_messages)
USERS = {
    "alice@example.test": (1, 0, 0),
    "bob@example.test": (0, 0, 0),  # disabled mailbox
    "carol@off.test": (1, 0, 0),  # mailbox in a disabled domain
    "full@example.test": (1, 10_000, 0),  # maildirsize says 10000 bytes used
    "half@example.test": (1, 10_000, 0),  # maildirsize says 5000 bytes used
    "counted@example.test": (1, 1_000, 0),  # no maildirsize: 3 x 400 bytes counted
    "dave@example.test": (1, 0, 0),  # senders for the limit tests
    "erin@example.test": (1, 0, 0),
    "boss@example.org": (1, 0, 0),
}
FORWARDINGS = {"info@example.test": "alice@example.test, bob@example.test"}
GRANTS = [("alice@example.test", "boss@example.org"), ("alice@example.test", "@shared.test")]


def snippet_settings(port: int) -> dict[str, str]:
    """postfix/main.cf.policy as main.cf settings, pointed at ``port``: logical lines
    (a line starting with whitespace continues the previous one, postconf(5)). The shipped
    unix socket is replaced by TCP here, so the inet form stays tested (the e2e tests run
    the shipped unix form)."""
    settings: dict[str, str] = {}
    name = None
    for line in SNIPPET.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and name is not None:
            settings[name] += " " + line.strip()
            continue
        name, _, value = line.partition("=")
        name = name.strip()
        settings[name] = value.strip()
    return {
        k: v.replace("unix:vmaild/policy", f"inet:127.0.0.1:{port}") for k, v in settings.items()
    }


@dataclass
class Stack:
    mariadb: MariaDB
    vmaild: Vmaild
    postfix: Postfix
    policy_port: int
    metrics_port: int
    base: Path
    conf_args: dict[str, object]


def vmaild_config(
    mariadb: MariaDB,
    policy_port: int,
    base: Path,
    *,
    extra: str = "",
    ports: dict[str, int] | None = None,
    metrics_port: int | None = None,
) -> str:
    return config_text(
        db_port=mariadb.port,
        dbname=DBNAME,
        user=DBUSER,
        password=DBPASSWORD,
        ports=ports,
        metrics_port=metrics_port,
        extra=f"[mailbox]\nbase = {base}\n\n[policy]\nlisten = 127.0.0.1:{policy_port}\n"
        + LIMITS
        + extra,
    )


def load_data(mariadb: MariaDB, base: Path) -> None:
    sql = [f"INSERT INTO domains (domain, active) VALUES ('{d}', {a})" for d, a in DOMAINS.items()]
    sql += [
        f"INSERT INTO users (email, password, active, quota_bytes, quota_messages) "
        f"VALUES ('{e}', 'x', {a}, {qb}, {qm})"
        for e, (a, qb, qm) in USERS.items()
    ]
    sql += [
        f"INSERT INTO forwardings (source, destination) VALUES ('{s}', '{d}')"
        for s, d in FORWARDINGS.items()
    ]
    sql += [f"INSERT INTO sender_grants (login, sender) VALUES ('{lo}', '{s}')" for lo, s in GRANTS]
    for statement in sql:
        mariadb.query(statement, database=DBNAME)
    for email in USERS:
        local, domain = email.split("@")
        make_maildir(base / domain / local)
    (base / "example.test" / "full" / "maildirsize").write_text("10000S\n  6000 3\n  4000 2\n")
    (base / "example.test" / "half" / "maildirsize").write_text("10000S\n  5000 3\n")
    for _ in range(3):
        drop_message(base / "example.test" / "counted", b"x" * 400)


@pytest.fixture(scope="module")
def stack(mariadb: MariaDB) -> Iterator[Stack]:
    require(Postfix.missing_requirements(), "Postfix")
    base = shared_tempdir("vmaild-policy-")
    mariadb.drop_database(DBNAME)
    mariadb.create_database(DBNAME, DBUSER, DBPASSWORD)
    policy_port, metrics_port, ports = free_port(), free_port(), seed_ports()
    config = vmaild_config(mariadb, policy_port, base, ports=ports, metrics_port=metrics_port)
    # The schema is the colleague's `vmailctl db init`, run against the same config file.
    conf_file = base / "vmaild.conf"
    conf_file.write_text(config)
    init = subprocess.run(
        [sys.executable, "-m", "vmaild.ctl.main", "-c", str(conf_file), "db", "init"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    load_data(mariadb, base)
    vmaild = Vmaild(config).start()
    main_cf = {
        "virtual_alias_domains": "",
        "virtual_mailbox_domains": f"tcp:127.0.0.1:{ports['domains']}",
        "virtual_mailbox_maps": f"tcp:127.0.0.1:{ports['mailboxes']}",
        "virtual_alias_maps": f"tcp:127.0.0.1:{ports['forwardings']}, "
        f"tcp:127.0.0.1:{ports['email2email']}",
        # Accepting is what is tested; delivery would only need maildrop and Courier.
        "virtual_transport": "discard:",
        # XCLIENT LOGIN= stands in for SMTP AUTH (see the module docstring).
        "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
        **snippet_settings(policy_port),
    }
    postfix = Postfix(main_cf)
    try:
        postfix.start()
        yield Stack(mariadb, vmaild, postfix, policy_port, metrics_port, base, {})
    finally:
        postfix.cleanup()
        vmaild.stop()
        if not mariadb.running:
            mariadb.start()
        mariadb.drop_database(DBNAME)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def fresh_counters(stack: Stack) -> None:
    if stack.mariadb.running:
        stack.mariadb.query("DELETE FROM send_counters", database=DBNAME)


@contextlib.contextmanager
def smtp(stack: Stack, login: str | None = None) -> Iterator[smtplib.SMTP]:
    with smtplib.SMTP("127.0.0.1", stack.postfix.smtp_port, timeout=30) as client:
        client.ehlo("client.example.net")
        if login is not None:
            code, text = client.docmd("XCLIENT", f"LOGIN={login}")
            assert code == 220, (code, text)
            client.ehlo("client.example.net")
        yield client


def rejected(reply: tuple[int, str], code: int, dsn: str, text: str) -> bool:
    """Postfix words a policy reject as ``<dsn> <address>: Recipient address rejected: text``
    (or ``Sender address rejected``): check the code, the DSN code and our text."""
    got_code, got_text = reply
    return got_code == code and got_text.startswith(dsn + " ") and got_text.endswith(": " + text)


def rcpt_reply(
    stack: Stack, sender: str, recipient: str, *, login: str | None = None, size: int = 0
) -> tuple[int, str]:
    with smtp(stack, login) as client:
        code, text = client.mail(sender, [f"SIZE={size}"] if size else [])
        assert code == 250, (code, text)
        code, text = client.rcpt(recipient)
        return code, text.decode()


def send(
    stack: Stack, sender: str, recipients: list[str], *, login: str | None = None
) -> tuple[list[int], int]:
    """One transaction: each RCPT's code, then DATA's (0 if no recipient was accepted)."""
    with smtp(stack, login) as client:
        assert client.mail(sender)[0] == 250
        codes = [client.rcpt(r)[0] for r in recipients]
        if 250 not in codes:
            return codes, 0
        return codes, client.data(b"Subject: policy test\r\n\r\nhello\r\n")[0]


# -- Postfix configuration ---------------------------------------------------------------------


def test_snippet_is_clean_in_postconf(stack: Stack) -> None:
    conf = ["postconf", "-c", str(stack.postfix.config_dir)]
    result = subprocess.run([*conf, "-n"], capture_output=True, text=True, check=True)
    assert "warning" not in result.stderr and "unused parameter" not in result.stderr, result.stderr
    port = stack.policy_port
    assert (
        f"check_policy_service {{ inet:127.0.0.1:{port}, timeout=5s, default_action=DUNNO }}"
        in result.stdout
    )
    for name in (
        "smtpd_relay_restrictions",
        "smtpd_recipient_restrictions",
        "smtpd_end_of_data_restrictions",
    ):
        assert re.search(rf"^{name} = ", result.stdout, re.M), name


# -- recipient state (unauthenticated SMTP from 127.0.0.1) -------------------------------------


def test_normal_mail_passes(stack: Stack) -> None:
    assert send(stack, "someone@remote.example", ["alice@example.test"]) == ([250], 250)
    assert send(stack, "", ["alice+tag@example.test", "info@example.test"]) == ([250, 250], 250)


@pytest.mark.parametrize("recipient", ["bob@example.test", "BOB+x@Example.Test", "carol@off.test"])
def test_disabled_mailbox_is_rejected(stack: Stack, recipient: str) -> None:
    code, text = rcpt_reply(stack, "someone@remote.example", recipient)
    assert rejected((code, text), 550, "5.2.1", "Mailbox disabled"), text


def test_unknown_recipient_is_left_to_postfix(stack: Stack) -> None:
    code, text = rcpt_reply(stack, "someone@remote.example", "nobody@example.test")
    assert code == 550 and text.startswith("5.1.1 ") and "unknown" in text.lower(), text


def test_over_quota_mailbox_is_deferred(stack: Stack) -> None:
    full = ("someone@remote.example", "full@example.test")
    assert rejected(rcpt_reply(stack, *full), 452, "4.2.2", "Mailbox full")
    half = ("someone@remote.example", "half@example.test")
    assert rcpt_reply(stack, *half)[0] == 250
    assert rcpt_reply(stack, *half, size=4000)[0] == 250
    assert rejected(rcpt_reply(stack, *half, size=6000), 452, "4.2.2", "Mailbox full")
    # No maildirsize: the Maildir is counted (3 x 400 bytes > 1000).
    assert rejected(
        rcpt_reply(stack, "someone@remote.example", "counted@example.test"),
        452,
        "4.2.2",
        "Mailbox full",
    )


# -- sender ownership (XCLIENT LOGIN=) -----------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    [
        "alice@example.test",
        "Alice+lists@example.test",
        "info@example.test",
        "boss@example.org",
        "anyone@shared.test",
        "",
    ],
)
def test_owned_senders_pass(stack: Stack, sender: str) -> None:
    assert send(stack, sender, ["alice@example.test"], login="alice@example.test") == ([250], 250)


@pytest.mark.parametrize(
    "sender", ["bob@example.test", "dave@example.test", "someone@remote.example"]
)
def test_foreign_sender_is_rejected(stack: Stack, sender: str) -> None:
    code, text = rcpt_reply(stack, sender, "alice@example.test", login="alice@example.test")
    assert rejected((code, text), 553, "5.7.1", "Sender address not owned by alice@example.test"), (
        text
    )


def test_unauthenticated_sender_is_not_judged(stack: Stack) -> None:
    assert rcpt_reply(stack, "bob@example.test", "alice@example.test")[0] == 250


# -- sending limits ------------------------------------------------------------------------------


def counters(stack: Stack, login: str) -> tuple[int, int]:
    rows = stack.mariadb.query(
        "SELECT COALESCE(SUM(messages), 0), COALESCE(SUM(recipients), 0) "
        "FROM send_counters WHERE login = %s",
        (login,),
        database=DBNAME,
    )
    return int(rows[0][0]), int(rows[0][1])


def test_message_limit(stack: Stack) -> None:
    dave = "dave@example.test"
    for _ in range(3):
        assert send(stack, dave, ["alice@example.test"], login=dave) == ([250], 250)
    assert counters(stack, dave) == (3, 3)
    assert rejected(
        rcpt_reply(stack, dave, "alice@example.test", login=dave),
        450,
        "4.7.1",
        "Sending limit exceeded",
    )
    assert counters(stack, dave) == (3, 3)  # refused mail is not counted


def test_recipient_limit(stack: Stack) -> None:
    dave = "dave@example.test"
    to = [f"alice+{i}@example.test" for i in range(7)]
    codes, data = send(stack, dave, to, login=dave)
    assert codes == [250] * 5 + [450] * 2 and data == 250
    assert counters(stack, dave) == (1, 5)
    assert send(stack, dave, ["alice@example.test"], login=dave) == ([450], 0)


# -- the policy port directly --------------------------------------------------------------------


def postfix_request(**attrs: str) -> bytes:
    """A request in Postfix 3.7's order and format (captured from a real smtpd)."""
    values = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": "127.0.0.1",
        "client_name": "localhost",
        "client_port": "51138",
        "reverse_client_name": "localhost",
        "server_address": "127.0.0.1",
        "server_port": "587",
        "helo_name": "client.example.net",
        "sender": "",
        "recipient": "",
        "recipient_count": "0",
        "queue_id": "",
        "instance": "691c.6b0611ae.88758.0",
        "size": "0",
        "etrn_domain": "",
        "stress": "",
        "sasl_method": "",
        "sasl_username": "",
        "sasl_sender": "",
        "ccert_subject": "",
        "ccert_issuer": "",
        "ccert_fingerprint": "",
        "ccert_pubkey_fingerprint": "",
        "encryption_protocol": "",
        "encryption_cipher": "",
        "encryption_keysize": "0",
        "policy_context": "",
    }
    values.update(attrs)
    return "".join(f"{k}={v}\n" for k, v in values.items()).encode() + b"\n"


def ask(port: int, *requests: bytes) -> list[bytes]:
    """Send the requests on one connection, one at a time, as Postfix does."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for request in requests:
            s.sendall(request)
            data = b""
            while not data.endswith(b"\n\n"):
                chunk = s.recv(4096)
                if not chunk:
                    replies.append(data + b"<EOF>")
                    return replies
                data += chunk
            replies.append(data)
    return replies


def test_policy_port_speaks_postfix(stack: Stack) -> None:
    auth = {"sasl_method": "plain", "sasl_username": "alice@example.test"}
    replies = ask(
        stack.policy_port,
        postfix_request(sender="alice@example.test", recipient="bob@example.test", **auth),
        postfix_request(
            sender="bob@example.test", recipient="x@remote.example", instance="b", **auth
        ),
        postfix_request(request="something_else"),
        postfix_request(
            sender="alice@example.test", recipient="alice@example.test", instance="c", **auth
        ),
        b"no equals sign\n\n",
    )
    assert replies == [
        b"action=550 5.2.1 Mailbox disabled\n\n",
        b"action=553 5.7.1 Sender address not owned by alice@example.test\n\n",
        b"action=DUNNO\n\n",
        b"action=DUNNO\n\n",
        b"<EOF>",
    ]


def test_two_instances_share_the_counters(stack: Stack) -> None:
    erin = "erin@example.test"
    port_b = free_port()
    other = Vmaild(vmaild_config(stack.mariadb, port_b, stack.base)).start()
    try:

        def rcpt(port: int, instance: str) -> bytes:
            return ask(
                port,
                postfix_request(
                    sender=erin,
                    recipient="alice@example.test",
                    sasl_method="plain",
                    sasl_username=erin,
                    instance=instance,
                ),
            )[0]

        # Two messages through Postfix and instance A, one straight to instance B.
        for _ in range(2):
            assert send(stack, erin, ["alice@example.test"], login=erin) == ([250], 250)
        eom = postfix_request(
            protocol_state="END-OF-MESSAGE",
            sender=erin,
            recipient_count="1",
            sasl_method="plain",
            sasl_username=erin,
            instance="b1",
        )
        assert ask(port_b, eom) == [b"action=DUNNO\n\n"]
        assert counters(stack, erin) == (3, 3)
        # Both now see three messages: the limit.
        assert rcpt(port_b, "b2") == b"action=450 4.7.1 Sending limit exceeded\n\n"
        assert rcpt(stack.policy_port, "a2") == b"action=450 4.7.1 Sending limit exceeded\n\n"
        assert rcpt_reply(stack, erin, "alice@example.test", login=erin)[0] == 450
    finally:
        other.stop()


def test_reload_swaps_the_service_under_a_persistent_connection(stack: Stack) -> None:
    """SIGHUP: Postfix's long-lived policy connection stays open and gets the new settings;
    a broken [policy] section is refused and the running one keeps answering."""
    port = free_port()
    config = vmaild_config(stack.mariadb, port, stack.base)
    other = Vmaild(config).start()
    disabled = postfix_request(sender="someone@remote.example", recipient="bob@example.test")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:

            def one() -> bytes:
                s.sendall(disabled)
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = s.recv(4096)
                    assert chunk, "connection closed"
                    data += chunk
                return data

            assert one() == b"action=550 5.2.1 Mailbox disabled\n\n"
            other.config_path.write_text(config + "disabled_action = 550 5.2.1 Gone fishing\n")
            other.reload()
            assert one() == b"action=550 5.2.1 Gone fishing\n\n"
            other.config_path.write_text(config + "disabled_action = 550\n")  # a silent permit
            other.reload()
            assert one() == b"action=550 5.2.1 Gone fishing\n\n"
        assert "[policy] disabled_action" in other.log()
    finally:
        other.stop()


def test_metrics_count_decisions_by_check_and_verb(stack: Stack) -> None:
    rcpt_reply(stack, "someone@remote.example", "bob@example.test")
    text = stack.vmaild.metrics_text(stack.metrics_port)
    assert re.search(
        r'vmaild_policy_decisions_total\{action="550",check="recipient"\} [1-9]', text
    ), text
    assert "vmaild_policy_request_seconds_count" in text
    labels = set(re.findall(r'vmaild_policy_decisions_total\{action="([^"]*)"', text))
    assert labels <= {"DUNNO", "450", "452", "550", "553", "DEFER_IF_PERMIT", "NOREPLY"}, labels


# -- the database hangs, then goes away (last: they stop the shared MariaDB) ---------------------


def test_hung_database_answers_within_the_time_bound(stack: Stack) -> None:
    """A frozen MariaDB (SIGSTOP): connections hang instead of failing. The reply still
    comes within [policy] request_timeout, from the check's fail action; with ``close``
    the connection is closed without a reply (Postfix then retries and uses default_action)."""
    port = free_port()
    other = Vmaild(
        vmaild_config(
            stack.mariadb,
            port,
            stack.base,
            extra=("request_timeout = 0.5\nrecipient_fail_action = close\n"),
        )
    ).start()
    auth = {"sasl_method": "plain", "sasl_username": "alice@example.test"}
    foreign = postfix_request(sender="bob@example.test", recipient="x@remote.example", **auth)
    disabled = postfix_request(sender="someone@remote.example", recipient="bob@example.test")
    try:
        assert ask(port, foreign) == [
            b"action=553 5.7.1 Sender address not owned by alice@example.test\n\n"
        ]  # warm: pool connected
        stack.mariadb.pause()
        t0 = time.monotonic()
        # A new transaction: the first one's answer is remembered for its own instance.
        foreign = foreign.replace(b"instance=691c.6b0611ae.88758.0", b"instance=new")
        assert ask(port, foreign) == [
            b"action=DEFER_IF_PERMIT Sender address check temporarily unavailable\n\n"
        ]
        t1 = time.monotonic()
        assert ask(port, disabled) == [b"<EOF>"]
        t2 = time.monotonic()
        assert t1 - t0 < 2.0 and t2 - t1 < 2.0, (t1 - t0, t2 - t1)
    finally:
        stack.mariadb.resume()
        other.stop()
    assert "check took longer than 0.5s" in other.log()


# -- the database goes away (last: it stops the shared MariaDB and starts it again) ---------------


def test_database_down_never_rejects(stack: Stack) -> None:
    # Warm vmaild's map cache for alice, so that Postfix's own lookups still answer during
    # the outage (stale_ttl) and the policy's fail actions are what decides.
    assert send(stack, "someone@remote.example", ["alice@example.test"]) == ([250], 250)
    stack.mariadb.stop()  # returns once mariadbd has exited
    try:
        cases = [
            ("someone@remote.example", "alice@example.test", None),  # would pass
            ("someone@remote.example", "bob@example.test", None),  # would be 550 disabled
            ("someone@remote.example", "full@example.test", None),  # would be 452 full
            ("bob@example.test", "alice@example.test", "alice@example.test"),  # would be 553
            ("dave@example.test", "alice@example.test", "dave@example.test"),
        ]
        seen = []
        for sender, recipient, login in cases:
            with smtp(stack, login) as client:
                assert client.mail(sender)[0] == 250
                code, text = client.rcpt(recipient)
                if code == 250:
                    # DEFER_IF_PERMIT (the sender check's fail action) shows up here.
                    code, text = client.data(b"Subject: outage\r\n\r\nhello\r\n")
                seen.append((sender, recipient, login, code, text))
        print("\n".join(map(str, seen)))
        for sender, recipient, login, code, text in seen:
            assert code == 250 or 400 <= code < 500, (sender, recipient, login, code, text)
        # recipient_fail_action = DUNNO: passed; sender_fail_action = DEFER_IF_PERMIT: 450.
        assert seen[0][3] == 250
        assert seen[3][3:] == (
            450,
            b"4.7.1 <alice@example.test>: Recipient address rejected: "
            b"Sender address check temporarily unavailable",
        )
        assert "policy: sender check failed" in stack.vmaild.log()
    finally:
        stack.mariadb.start()

    # And back to normal once the database is.
    def rejected_again() -> tuple[int, str] | None:
        reply = rcpt_reply(stack, "someone@remote.example", "bob@example.test")
        return reply if reply[0] == 550 else None

    code, text = wait_until(rejected_again, 15, "bob's 550 once MariaDB is back", interval=0.2)
    assert rejected((code, text), 550, "5.2.1", "Mailbox disabled"), text
