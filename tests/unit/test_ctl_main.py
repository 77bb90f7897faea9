"""vmailctl's command line without a database: usage errors, exit codes, messages."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest

from vmaild.ctl import main as ctl_main
from vmaild.ctl.errors import EXIT_REFUSED, EXIT_TEMPFAIL, EXIT_USAGE


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = ctl_main.main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


def usage_exit(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        ctl_main.main(list(argv))
    assert info.value.code == EXIT_USAGE
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["db"],
        ["db", "drop"],
        ["domain", "add"],
        ["domain", "add", "a.example", "b.example"],
        ["user", "add"],
        ["user", "add", "a@example.com", "--password", "secret"],  # never on argv
        ["user", "add", "a@example.com", "--quota", "lots"],
        ["user", "add", "a@example.com", "--quota-messages", "-3"],
        ["user", "quota", "a@example.com"],
        ["user", "quota", "a@example.com", "1X"],
        ["user", "password", "a@example.com", "hunter2"],
        ["alias", "add", "a@example.com"],
        ["transport", "add", "example.com"],
        ["sender", "grant", "a@example.com"],
        ["import-postfix"],
        ["lookup", "domains"],
        ["--json"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    err = usage_exit(capsys, *argv)
    assert err.startswith("usage: vmailctl")
    assert "Traceback" not in err


def test_quota_usage_error_explains_the_format(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_exit(capsys, "user", "add", "a@example.com", "--quota", "lots")
    assert "not a size: 'lots'" in err


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        ctl_main.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in (
        "db",
        "domain",
        "user",
        "maildir",
        "alias",
        "transport",
        "sender",
        "import-postfix",
        "lookup",
    ):
        assert command in text


def test_global_options_before_or_after_the_command() -> None:
    parser = ctl_main.build_parser()
    a = parser.parse_args(["-c", "/x.conf", "--json", "domain", "list"])
    b = parser.parse_args(["domain", "list", "--json", "-c", "/x.conf"])
    c = parser.parse_args(["--json", "domain", "list"])
    for ns in (a, b):
        assert ns.config == "/x.conf" and ns.json is True
    assert c.json is True and not hasattr(c, "config")
    assert not hasattr(parser.parse_args(["domain", "list"]), "json")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["domain", "add", "not a.domain"], "bad label"),
        (["domain", "add", "localhost"], "two labels"),
        (["user", "add", "nobody"], "is not an address"),
        (["user", "show", "a@@example.com"], "is not an address"),
        (["alias", "add", "a@example.com", "b@example.com,bad"], "is not an address"),
        (["alias", "add", "a@example.com", "a@example.com"], "cannot forward to itself"),
        (["sender", "grant", "a@example.com", "a@example.com"], "no grant needed"),
        (["transport", "add", "example.com", "smtp: x"], "spaces"),
        (["domain", "remove", "example.com", "--purge"], "needs --force"),
    ],
)
def test_bad_input_is_refused_before_touching_the_database(
    argv: list[str], message: str, tmp_path: Path
) -> None:
    # The configuration does not even exist: validation comes first.
    code, out, err = run("-c", str(tmp_path / "absent.conf"), *argv)
    assert code == EXIT_REFUSED
    assert out == ""
    assert err.startswith("vmailctl: refused: ") and message in err
    assert err.count("\n") == 1


def test_missing_configuration_is_one_line(tmp_path: Path) -> None:
    code, out, err = run("-c", str(tmp_path / "absent.conf"), "domain", "list")
    assert code == EXIT_REFUSED
    assert (
        err == f"vmailctl: configuration: {tmp_path / 'absent.conf'}: cannot read: "
        "No such file or directory\n"
    )


def test_configuration_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VMAILD_CONFIG", str(tmp_path / "env.conf"))
    code, _, err = run("domain", "list")
    assert code == EXIT_REFUSED and "env.conf" in err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "argv",
    [
        ["db", "status"],
        ["domain", "list"],
        ["domain", "add", "example.com"],
        ["lookup", "domains", "example.com", "--direct"],
    ],
)
def test_database_down_is_a_temporary_failure(tmp_path: Path, argv: list[str]) -> None:
    conf = tmp_path / "vmaild.conf"
    conf.write_text(
        f"[database]\nhosts = 127.0.0.1:{closed_port()}\nuser = u\npassword = p\n"
        f"dbname = d\nconnect_timeout = 1\n"
        f"[map domains]\nquery = SELECT domain FROM domains WHERE domain='%s'\n"
    )
    code, out, err = run("-c", str(conf), *argv)
    assert code == EXIT_TEMPFAIL, err
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err


def test_lookup_of_an_unknown_map_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "vmaild.conf"
    conf.write_text(
        "[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n"
        "[map domains]\nquery = SELECT domain FROM domains WHERE domain='%s'\n"
    )
    code, _, err = run("-c", str(conf), "lookup", "nosuchmap", "x")
    assert code == EXIT_REFUSED and "no [map nosuchmap]" in err and "domains" in err


def test_lookup_with_the_daemon_down_is_a_temporary_failure(tmp_path: Path) -> None:
    conf = tmp_path / "vmaild.conf"
    conf.write_text(
        "[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n"
        f"[socketmap]\nlisten = 127.0.0.1:{closed_port()}\n"
        "[map domains]\nquery = SELECT domain FROM domains WHERE domain='%s'\n"
    )
    code, out, err = run("-c", str(conf), "lookup", "domains", "example.com")
    assert code == EXIT_TEMPFAIL and out == ""
    assert "vmaild did not answer" in err and "--direct" in err


# -- reading passwords -----------------------------------------------------------------------


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_password_from_the_first_line_of_stdin() -> None:
    from vmaild.ctl.prompt import read_password

    assert read_password(io.StringIO("pw one\r\nsecond\n"), True, "a@x.org") == "pw one"
    assert read_password(io.StringIO("last-no-newline"), True, "a@x.org") == "last-no-newline"


@pytest.mark.parametrize(
    ("stdin", "message"),
    [("", "no password"), ("\n", "no password"), ("a\x01b\n", "control characters")],
)
def test_bad_stdin_passwords(stdin: str, message: str) -> None:
    from vmaild.ctl.errors import Refused
    from vmaild.ctl.prompt import read_password

    with pytest.raises(Refused, match=message):
        read_password(io.StringIO(stdin), True, "a@x.org")


def test_password_prompt_asks_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmaild.ctl import prompt
    from vmaild.ctl.errors import Refused

    answers = iter(["secret", "secret", "secret", "typo", ""])
    prompts: list[str] = []

    def fake_getpass(text: str) -> str:
        prompts.append(text)
        return next(answers)

    monkeypatch.setattr(prompt.getpass, "getpass", fake_getpass)
    assert prompt.read_password(FakeTty(), False, "a@x.org") == "secret"
    assert prompts == ["New password for a@x.org: ", "Again: "]
    with pytest.raises(Refused, match="differ"):
        prompt.read_password(FakeTty(), False, "a@x.org")
    with pytest.raises(Refused, match="empty password"):
        prompt.read_password(FakeTty(), False, "a@x.org")
    with pytest.raises(Refused, match="use --password-stdin"):
        prompt.read_password(io.StringIO("x\n"), False, "a@x.org")


def test_hashing_uses_the_configured_scheme() -> None:
    from passlib.hash import bcrypt, sha512_crypt

    from vmaild.ctl.errors import Refused
    from vmaild.ctl.prompt import hashed

    assert sha512_crypt.verify("pw", hashed("pw", "sha512_crypt"))
    assert bcrypt.verify("pw", hashed("pw", "bcrypt"))
    with pytest.raises(Refused, match="cannot hash"):
        hashed("pw", "rot13")
