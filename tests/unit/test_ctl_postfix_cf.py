"""Reading Postfix mysql: .cf files and ``vmailctl import-postfix`` (no database)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from vmaild import config as vconfig
from vmaild import expansions
from vmaild.ctl import postfix_cf
from vmaild.ctl.main import main

# The tutorial's four files, byte for byte apart from hosts (shared/seed/, section 3).
SEED_CF = {
    "mysql-virtual_domains.cf": """\
user = mail_admin
password = mail_admin_password
dbname = mail_system
query = SELECT domain AS virtual FROM domains WHERE domain='%s'
hosts = 127.0.0.1
""",
    "mysql-virtual_mailboxes.cf": """\
user = mail_admin
password = mail_admin_password
dbname = mail_system
query = SELECT CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/')
        FROM users WHERE email='%s'
hosts = 127.0.0.1
""",
    "mysql-virtual_forwardings.cf": """\
user = mail_admin
password = mail_admin_password
dbname = mail_system
query = SELECT destination FROM forwardings WHERE source='%s'
hosts = 127.0.0.1
""",
    "mysql-virtual_email2email.cf": """\
user = mail_admin
password = mail_admin_password
dbname = mail_system
query = SELECT email FROM users WHERE email='%s'
hosts = 127.0.0.1
""",
}
MAILBOX_QUERY = (
    "SELECT CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),"
    "'/') FROM users WHERE email='%s'"
)


@pytest.fixture
def seed_files(tmp_path: Path) -> list[str]:
    paths = []
    for name, text in SEED_CF.items():
        p = tmp_path / name
        p.write_text(text)
        paths.append(str(p))
    return paths


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# -- parsing ---------------------------------------------------------------------------------


def test_multi_line_query_is_joined_like_postfix() -> None:
    settings = postfix_cf.parse_text(SEED_CF["mysql-virtual_mailboxes.cf"])
    assert settings["query"] == MAILBOX_QUERY
    assert settings == {
        "user": "mail_admin",
        "password": "mail_admin_password",
        "dbname": "mail_system",
        "query": MAILBOX_QUERY,
        "hosts": "127.0.0.1",
    }


def test_comments_blank_lines_and_overrides() -> None:
    text = (
        "# a comment\n\n   # an indented comment\nhosts = a\n"
        "query = SELECT x\n\tFROM t\n  WHERE k='%s'\nhosts=b c\nuser =\n"
    )
    settings = postfix_cf.parse_text(text)
    assert settings["query"] == "SELECT x FROM t WHERE k='%s'"
    assert settings["hosts"] == "b c"
    assert settings["user"] == ""


@pytest.mark.parametrize(
    "text", ["  leading = continuation\n", "no equals sign\n", "bad name = x\n", "= value\n"]
)
def test_syntax_errors_name_the_line(text: str) -> None:
    with pytest.raises(postfix_cf.CfError, match=r"<string>:1:"):
        postfix_cf.parse_text(text)


def test_legacy_settings_build_a_query(tmp_path: Path) -> None:
    p = tmp_path / "old.cf"
    p.write_text(
        "hosts = db\nuser = u\ndbname = d\ntable = users\nselect_field = email\n"
        "where_field = email\nadditional_conditions = and active = '1'\n"
    )
    table = postfix_cf.load(str(p))
    assert table.query == "SELECT email FROM users WHERE email='%s' and active = '1'"
    assert any("legacy" in w for w in table.warnings)


def test_unsupported_and_unknown_settings_warn(tmp_path: Path) -> None:
    p = tmp_path / "x.cf"
    p.write_text(
        "hosts = db\nuser = u\ndbname = d\nquery = SELECT 1 WHERE a='%s'\n"
        "result_format = %s\ndomain = example.com\nfrobnicate = 1\n"
    )
    warnings = postfix_cf.load(str(p)).warnings
    assert any("domain is not supported" in w for w in warnings)
    assert any("unknown setting frobnicate" in w for w in warnings)
    assert not any("result_format" in w for w in warnings)  # '%s' is the default


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("hosts = h\nuser = u\ndbname = d\n", "no query"),
        ("user = u\ndbname = d\nquery = SELECT 1 WHERE a='%s'\n", "no hosts"),
    ],
)
def test_incomplete_files_refused(tmp_path: Path, text: str, problem: str) -> None:
    p = tmp_path / "x.cf"
    p.write_text(text)
    with pytest.raises(postfix_cf.CfError, match=problem):
        postfix_cf.load(str(p))


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/etc/postfix/mysql-virtual_domains.cf", "domains"),
        ("mysql-virtual_email2email.cf", "email2email"),
        ("mysql-virtual-forwardings.cf", "forwardings"),
        ("mysql_relay.cf", "relay"),
        ("virtual alias.cf", "virtual_alias"),
        ("plain", "plain"),
    ],
)
def test_map_names(path: str, name: str) -> None:
    assert postfix_cf.map_name(path) == name


# -- import-postfix --------------------------------------------------------------------------


def test_import_seed_files_gives_a_config_vmaild_accepts(seed_files: list[str]) -> None:
    code, out, err = run("import-postfix", *seed_files)
    assert code == 0, err
    assert err == ""
    cfg = vconfig.parse(out, "imported.conf")
    assert cfg.database.user == "mail_admin"
    assert cfg.database.password == "mail_admin_password"
    assert cfg.database.dbname == "mail_system"
    assert [str(h) for h in cfg.database.hosts] == ["127.0.0.1:3306"]
    assert list(cfg.maps) == ["domains", "mailboxes", "forwardings", "email2email"]
    assert [cfg.maps[n].tcp.port for n in cfg.maps] == [10021, 10022, 10023, 10024]
    assert cfg.maps["mailboxes"].query == MAILBOX_QUERY
    assert cfg.maps["forwardings"].catchall is True
    assert not any(cfg.maps[n].catchall for n in ("domains", "mailboxes", "email2email"))
    for m in cfg.maps.values():
        expansions.compile_query(m.query)
    # The Postfix lines come after the config, as comments.
    assert "#   virtual_alias_domains =" in out
    assert "#   virtual_mailbox_domains = tcp:127.0.0.1:10021" in out
    # email2email is answered through the forwardings map's chain (Postfix's order).
    assert "#   virtual_alias_maps = tcp:127.0.0.1:10023\n" in out
    assert cfg.maps["forwardings"].chain == ("email2email",)
    assert "#   virtual_mailbox_maps = tcp:127.0.0.1:10022" in out


def test_alias_maps_keep_the_seed_order_whatever_the_file_order(seed_files: list[str]) -> None:
    ordered = sorted(seed_files)  # what a shell glob gives: email2email before forwardings
    code, out, _ = run("import-postfix", "--postfix-only", *ordered)
    assert code == 0
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    assert lines == [
        "virtual_alias_domains =",
        "virtual_mailbox_domains = tcp:127.0.0.1:10021",
        "virtual_alias_maps = tcp:127.0.0.1:10023",
        "virtual_mailbox_maps = tcp:127.0.0.1:10024",
    ]


def test_import_socketmap(seed_files: list[str]) -> None:
    code, out, _ = run("import-postfix", "--socketmap", *seed_files)
    assert code == 0
    cfg = vconfig.parse(out)
    assert str(cfg.socketmap.listen) == "127.0.0.1:10020"
    assert all(m.tcp is None for m in cfg.maps.values())
    assert "#   virtual_alias_maps = socketmap:inet:127.0.0.1:10020:forwardings\n" in out


def test_import_json(seed_files: list[str]) -> None:
    code, out, _ = run("--json", "import-postfix", *seed_files)
    assert code == 0
    doc = json.loads(out)
    vconfig.parse(doc["config"])
    assert [m["name"] for m in doc["maps"]] == [
        "domains",
        "mailboxes",
        "forwardings",
        "email2email",
    ]
    assert "virtual_alias_domains =" in doc["main_cf"]
    assert any("virtual(8)" in n for n in doc["notes"])


def test_files_that_disagree_on_the_database_are_refused(
    seed_files: list[str], tmp_path: Path
) -> None:
    other = tmp_path / "mysql-virtual_other.cf"
    other.write_text(SEED_CF["mysql-virtual_domains.cf"].replace("mail_system", "elsewhere"))
    code, out, err = run("import-postfix", *seed_files, str(other))
    assert code == 1
    assert out == ""
    assert err.startswith("vmailctl: refused: ") and "dbname differs" in err
    assert err.count("\n") == 1


def test_password_disagreement_does_not_print_passwords(
    seed_files: list[str], tmp_path: Path
) -> None:
    other = tmp_path / "mysql-virtual_other.cf"
    other.write_text(SEED_CF["mysql-virtual_domains.cf"].replace("mail_admin_password", "zzz"))
    code, _, err = run("import-postfix", seed_files[0], str(other))
    assert code == 1 and "password differs" in err
    assert "zzz" not in err and "mail_admin_password" not in err


def test_hosts_written_differently_still_agree(tmp_path: Path) -> None:
    paths = []
    for i, hosts in enumerate(["db1 db2", "db1,db2", " db1  db2"]):
        p = tmp_path / f"mysql-virtual_m{i}.cf"
        p.write_text(
            f"hosts = {hosts}\nuser = u\npassword = p\ndbname = d\n"
            f"query = SELECT x FROM t WHERE k='%s'\n"
        )
        paths.append(str(p))
    code, out, err = run("import-postfix", *paths)
    assert code == 0, err
    assert [str(h) for h in vconfig.parse(out).database.hosts] == ["db1:3306", "db2:3306"]


def test_missing_file_and_bad_query_are_refused(tmp_path: Path, seed_files: list[str]) -> None:
    code, _, err = run("import-postfix", str(tmp_path / "absent.cf"))
    assert code == 1 and "cannot read" in err
    bad = tmp_path / "mysql-virtual_bad.cf"
    bad.write_text("hosts = h\nuser = u\ndbname = d\nquery = SELECT 1 FROM t WHERE a='%x'\n")
    code, _, err = run("import-postfix", str(bad))
    assert code == 1 and "query" in err


def test_duplicate_map_names_are_refused(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for d in (a, b):
        (d / "mysql-virtual_domains.cf").write_text(SEED_CF["mysql-virtual_domains.cf"])
    code, _, err = run(
        "import-postfix", str(a / "mysql-virtual_domains.cf"), str(b / "mysql-virtual_domains.cf")
    )
    assert code == 1 and "[map domains]" in err


def test_import_needs_no_configuration(
    seed_files: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VMAILD_CONFIG", str(tmp_path / "does-not-exist.conf"))
    code, _, err = run("import-postfix", *seed_files)
    assert code == 0, err
