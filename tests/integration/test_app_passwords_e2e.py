"""App passwords and per-protocol switches end to end: Courier IMAP and POP3 (through
authdaemond, vmaild-authpipe and vmaild) and SMTP AUTH on the submission port (Postfix's
Dovecot SASL client to vmaild's ``[sasl]``), administered with the real ``vmailctl``, and
the login history that ``vmailctl user show`` prints afterwards.

The failure delay is off (``[auth] fail_delay = 0``): the test tries wrong credentials in a
row on purpose, which the authpipe door would otherwise refuse as too early (README
"Brute-force defence").
"""

from __future__ import annotations

import imaplib
import json
import poplib
import smtplib
from collections.abc import Iterator

import pytest

from harness.common.wait import wait_until
from harness.stack.mailstack import MailStack
from tests.integration.conftest import CourierSession

USER, PASSWORD = "apps@example.test", "the-main-password"


@pytest.fixture(scope="module")
def stack(courier: CourierSession) -> Iterator[MailStack]:
    extra = {"auth": {"fail_delay": "0", "history_interval": "1"}}
    with MailStack(extra_vmaild=extra) as s:
        s.add_user(USER, PASSWORD)
        yield s


def imap_ok(stack: MailStack, password: str) -> bool:
    try:
        with stack.imap(USER, password):
            return True
    except imaplib.IMAP4.error:
        return False


def pop3_ok(stack: MailStack, password: str) -> bool:
    try:
        with stack.pop3(USER, password):
            return True
    except poplib.error_proto:
        return False


def smtp_ok(stack: MailStack, password: str) -> bool:
    try:
        with stack.smtp_session(login=(USER, password), submission=True):
            return True
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e  # a wrong password, never a temporary failure
        return False


def add_app_password(stack: MailStack, name: str, services: str) -> str:
    out = stack.vmailctl(
        "--json", "app-password", "add", USER, "--name", name, "--service", services
    ).stdout
    secret = json.loads(out)["secret"]
    assert isinstance(secret, str)
    return secret


def test_app_passwords_per_service_and_switches(stack: MailStack) -> None:
    mail = add_app_password(stack, "phone-mail", "imap,pop3")
    send = add_app_password(stack, "phone-send", "smtp")
    # Main password everywhere; each app password only for its services.
    assert imap_ok(stack, PASSWORD) and pop3_ok(stack, PASSWORD) and smtp_ok(stack, PASSWORD)
    assert imap_ok(stack, mail) and pop3_ok(stack, mail) and not smtp_ok(stack, mail)
    assert smtp_ok(stack, send) and not imap_ok(stack, send) and not pop3_ok(stack, send)

    # IMAP for app passwords only, POP3 off, SMTP unchanged.
    stack.vmailctl("user", "set", USER, "--imap", "app", "--pop3", "off")
    assert not imap_ok(stack, PASSWORD) and imap_ok(stack, mail)
    assert not pop3_ok(stack, PASSWORD) and not pop3_ok(stack, mail)
    assert smtp_ok(stack, PASSWORD)

    # A revoked app password stops at once: nothing of it is cached.
    stack.vmailctl("app-password", "revoke", USER, "phone-mail")
    assert not imap_ok(stack, mail)
    stack.vmailctl("user", "set", USER, "--imap", "on", "--pop3", "on")
    assert imap_ok(stack, PASSWORD)

    listing = json.loads(stack.vmailctl("--json", "app-password", "list", USER).stdout)
    assert [a["name"] for a in listing] == ["phone-send"]
    assert listing[0]["last_used_at"]  # written after its login, at most once a minute
    assert send not in json.dumps(listing)

    # The login history: the last login per service, the SMTP one with the client's
    # address (Postfix passes it; authdaemond does not), written within history_interval.
    def history() -> dict[str, object] | None:
        shown = json.loads(stack.vmailctl("--json", "user", "show", USER).stdout)
        last = shown.get("last_login") or {}
        return last if {"imap", "pop3", "smtp"} <= set(last) else None

    last = wait_until(history, 15, "the login history of every service")
    assert "127.0.0.1" in json.dumps(last["smtp"])
