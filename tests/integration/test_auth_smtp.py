"""SMTP AUTH through a private Postfix with Cyrus SASL ``pwcheck_method: authdaemond``, using
the shipped postfix/sasl/smtpd.conf verbatim: smtpd -> libsasl -> authdaemond's socket ->
vmaild-authpipe -> vmaild (PROTOCOLS.md section 5)."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.postfix.server import Postfix
from tests.integration.conftest import CourierSession, require
from tests.integration.test_auth import Stack, auth_stack

SASL_CONF = Path(__file__).resolve().parents[2] / "postfix" / "sasl" / "smtpd.conf"
# The settings postfix/sasl/smtpd.conf asks for in main.cf (TLS aside: loopback test).
SASL_MAIN_CF = {
    "smtpd_sasl_auth_enable": "yes",
    "smtpd_sasl_type": "cyrus",
    "smtpd_sasl_path": "smtpd",
}


@pytest.fixture(scope="module")
def stack(courier: CourierSession) -> Iterator[Stack]:
    with auth_stack(courier) as s:
        yield s


@pytest.fixture(scope="module")
def postfix(stack: Stack) -> Iterator[Postfix]:
    require(Postfix.missing_requirements(), "Postfix")
    instance = Postfix(SASL_MAIN_CF)
    try:
        # Debian's libsasl2 reads $config_directory/sasl/smtpd.conf.
        instance.write_config_file("sasl/smtpd.conf", SASL_CONF.read_text())
        instance.start()
        yield instance
    finally:
        instance.cleanup()


def smtp_auth(postfix: Postfix, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
    with smtplib.SMTP(postfix.host, postfix.smtp_port, timeout=60) as s:
        s.ehlo()
        assert mechanism in s.esmtp_features.get("auth", "").split()
        s.user, s.password = user, password
        authobject = s.auth_plain if mechanism == "PLAIN" else s.auth_login
        try:
            return s.auth(mechanism, authobject, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code, e.smtp_error
        except smtplib.SMTPResponseException as e:
            return e.smtp_code, e.smtp_error


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtp_auth(stack: Stack, postfix: Postfix, mechanism: str) -> None:
    user = stack.add_user("smtp-pw-1")
    code, text = smtp_auth(postfix, mechanism, user, "smtp-pw-1")
    assert code == 235, text
    code, text = smtp_auth(postfix, mechanism, user, "wrong-pw")
    assert code == 535 and text.startswith(b"5.7.8"), text
    # The seed's ENCRYPT() users too (LOGIN: a fresh one per mechanism, they get rehashed).
    seed_user = "bob@example.test" if mechanism == "PLAIN" else "postmaster@example.org"
    assert smtp_auth(postfix, mechanism, seed_user, stack.users[seed_user])[0] == 235
    metrics = stack.vmaild.metrics_text(stack.metrics_port)
    assert 'vmaild_logins_total{result="ok",service="smtp"}' in metrics


def test_smtp_auth_with_the_database_down_is_temporary(stack: Stack, postfix: Postfix) -> None:
    cached = stack.add_user("smtp-cached")
    uncached = stack.add_user("smtp-uncached")
    assert smtp_auth(postfix, "PLAIN", cached, "smtp-cached")[0] == 235
    stack.db.stop()
    try:
        assert smtp_auth(postfix, "PLAIN", cached, "smtp-cached")[0] == 235
        code, text = smtp_auth(postfix, "PLAIN", uncached, "smtp-uncached")
        assert code == 454 and text.startswith(b"4.7.0"), text  # never 535
    finally:
        stack.db.start()
