"""vmaild.ctl.app_passwords without a database: the arguments and their refusals."""

from __future__ import annotations

import pytest

from tests.unit.test_ctl_main import run, usage_exit
from vmaild.ctl import app_passwords as ap
from vmaild.ctl.errors import EXIT_REFUSED, Refused


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("imap,pop3,smtp", ["imap", "pop3", "smtp"]),
        ("smtp", ["smtp"]),
        ("SMTP, imap", ["imap", "smtp"]),
        ("all", ["imap", "pop3", "smtp"]),
        ("imap,imap", ["imap"]),
    ],
)
def test_services(raw: str, expected: list[str]) -> None:
    assert ap.parse_services(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"), [("imap,ftp", "unknown service 'ftp'"), (",", "at least")]
)
def test_bad_services(raw: str, message: str) -> None:
    with pytest.raises(Refused, match=message):
        ap.parse_services(raw)


def test_networks_are_normalised() -> None:
    assert ap.parse_networks(["192.0.2.9/24", "2001:DB8::/32,10.0.0.1"]) == [
        "192.0.2.0/24",
        "2001:db8::/32",
        "10.0.0.1/32",
    ]
    assert ap.parse_networks(["10.0.0.0/8", "10.0.0.0/8"]) == ["10.0.0.0/8"]
    assert ap.parse_networks([]) == []


@pytest.mark.parametrize("bad", ["192.0.2.0/40", "mail.example.net", ""])
def test_bad_networks(bad: str) -> None:
    with pytest.raises(Refused, match="network"):
        ap.parse_networks([bad])


def test_too_many_networks() -> None:
    with pytest.raises(Refused, match="too many networks"):
        ap.parse_networks([f"10.{i // 256}.{i % 256}.0/24" for i in range(100)])


@pytest.mark.parametrize(
    ("raw", "sql", "param"),
    [
        ("30d", "NOW() + INTERVAL %s SECOND", 30 * 86400),
        ("12h", "NOW() + INTERVAL %s SECOND", 12 * 3600),
        ("2w", "NOW() + INTERVAL %s SECOND", 14 * 86400),
        ("2030-01-31", "TIMESTAMP(%s) + INTERVAL 1 DAY", "2030-01-31"),
    ],
)
def test_expiry(raw: str, sql: str, param: object) -> None:
    assert ap.parse_expiry(raw) == (sql, param)


@pytest.mark.parametrize("bad", ["0d", "tomorrow", "30", "-3d", "2030-1-31", "30m"])
def test_bad_expiry(bad: str) -> None:
    with pytest.raises(Refused):
        ap.parse_expiry(bad)


@pytest.mark.parametrize(
    ("raw", "message"),
    [(" ", "needs a --name"), ("x" * 65, "longer than 64"), ("a\tb", "control characters")],
)
def test_bad_names(raw: str, message: str) -> None:
    with pytest.raises(Refused, match=message):
        ap.parse_name(raw)


def test_services_of_reads_both_forms() -> None:
    assert ap.services_of("smtp,imap") == ["imap", "smtp"]
    assert ap.services_of({"pop3"}) == ["pop3"]
    assert ap.services_of(None) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["app-password"],
        ["app-password", "add", "a@example.com"],  # --name is required
        ["app-password", "revoke", "a@example.com"],
        ["app-password", "list"],
        ["user", "set", "a@example.com", "--imap", "maybe"],
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert usage_exit(capsys, *argv).startswith("usage: vmailctl")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "phone", "--network", "10.0.0.0/33"], "bad --network"),
        (["--name", "phone", "--service", "ftp"], "unknown service"),
        (["--name", "phone", "--expires", "soon"], "bad --expires"),
        (["--name", ""], "needs a --name"),
    ],
)
def test_add_refuses_bad_arguments_before_the_database(argv: list[str], message: str) -> None:
    code, out, err = run("app-password", "add", "a@example.com", *argv)
    assert code == EXIT_REFUSED and out == ""
    assert err.startswith("vmailctl: refused: ") and message in err


def test_user_set_needs_a_switch() -> None:
    code, _, err = run("user", "set", "a@example.com")
    assert code == EXIT_REFUSED and "nothing to set" in err
