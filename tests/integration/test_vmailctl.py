"""vmailctl against a private MariaDB: schema init and migration of the seed's exact SQL,
every command's happy path and refusals, JSON output, Maildirs, triggers, import-postfix.

vmailctl runs as a subprocess (.venv/bin/vmailctl) so exit codes and output are real.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from passlib.hash import des_crypt, sha512_crypt

from harness.mariadb.server import MariaDB
from harness.stack import seed
from vmaild import config as vconfig

pytestmark = pytest.mark.integration

VMAILCTL = str(Path(sys.executable).parent / "vmailctl")
DB_USER = "vmail_admin"
DB_PASSWORD = "vmail-admin-pw"
UID = GID = 5000
SEED_TABLES = ("domains", "users", "forwardings", "transport")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Ctl:
    """One database with a vmaild.conf for it, and a way to run vmailctl on it."""

    mariadb: MariaDB
    dbname: str
    conf: Path
    base: Path

    def __call__(self, *args: str, stdin: str | None = None) -> Result:
        env = {k: v for k, v in os.environ.items() if k != "VMAILD_CONFIG"}
        proc = subprocess.run(
            [VMAILCTL, "-c", str(self.conf), *args],
            input=stdin or "",
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, stdin: str | None = None) -> Result:
        r = self(*args, stdin=stdin)
        assert r.code == 0, f"vmailctl {' '.join(args)}: {r.code}\n{r.out}\n{r.err}"
        return r

    def refused(self, *args: str, match: str, stdin: str | None = None) -> Result:
        r = self(*args, stdin=stdin)
        assert r.code == 1, f"vmailctl {' '.join(args)}: {r.code}\n{r.out}\n{r.err}"
        assert r.err.startswith("vmailctl: refused: "), r.err
        assert match in r.err, r.err
        assert r.err.count("\n") == 1, r.err
        return r

    def query(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        return self.mariadb.query(sql, args, database=self.dbname)

    def version(self) -> int:
        return int(self.query("SELECT version FROM vmaild_changes WHERE id = 1")[0][0])

    def add_user(self, address: str, password: str = "s3cret-pw", *extra: str) -> Result:
        return self.ok("user", "add", address, "--password-stdin", *extra, stdin=password + "\n")


def write_config(
    path: Path,
    mariadb: MariaDB,
    dbname: str,
    base: Path,
    *,
    user: str = DB_USER,
    password: str = DB_PASSWORD,
    extra: str = "",
) -> Path:
    path.write_text(
        f"[database]\nhosts = 127.0.0.1:{mariadb.port}\nuser = {user}\n"
        f"password = {password}\ndbname = {dbname}\nconnect_timeout = 2\n\n"
        f"[mailbox]\nbase = {base}\nuid = {UID}\ngid = {GID}\n\n"
        f"[map domains]\nquery = {seed.SEED_QUERIES['domains']}\n"
        f"[map mailboxes]\nquery = {seed.cf_logical_value(seed.SEED_QUERIES['mailboxes'])}\n"
        f"[map forwardings]\nquery = {seed.SEED_QUERIES['forwardings']}\ncatchall = yes\n"
        f"[map email2email]\nquery = {seed.SEED_QUERIES['email2email']}\n" + extra
    )
    return path


@pytest.fixture
def make_ctl(mariadb: MariaDB, service_tmp: Path) -> Iterator[Callable[..., Ctl]]:
    made: list[str] = []

    def make(*, seeded: bool = False, rows: bool = True, extra: str = "") -> Ctl:
        dbname = f"ctl_{uuid.uuid4().hex[:10]}"
        made.append(dbname)
        if seeded:
            seed.load_seed(mariadb, dbname, DB_USER, DB_PASSWORD, rows=rows)
        else:
            mariadb.create_database(dbname, DB_USER, DB_PASSWORD)
        base = service_tmp / dbname / "vmail"
        conf = write_config(service_tmp / f"{dbname}.conf", mariadb, dbname, base, extra=extra)
        return Ctl(mariadb, dbname, conf, base)

    yield make
    for name in made:
        mariadb.drop_database(name)


@pytest.fixture
def ctl(make_ctl: Callable[..., Ctl]) -> Ctl:
    """A freshly initialised database."""
    c = make_ctl()
    c.ok("db", "init")
    return c


@pytest.fixture
def migrated(make_ctl: Callable[..., Ctl]) -> Ctl:
    """The seed's database (exact SQL, ENCRYPT() passwords), migrated."""
    c = make_ctl(seeded=True)
    c.ok("db", "migrate")
    return c


def dump(c: Ctl) -> dict[str, Any]:
    """Everything migration could change: definitions, triggers and rows."""
    tables = [r[0] for r in c.query("SHOW TABLES")]
    result: dict[str, Any] = {"tables": tables}
    for t in tables:
        result[f"create {t}"] = c.query(f"SHOW CREATE TABLE `{t}`")[0][1]
        result[f"rows {t}"] = c.query(f"SELECT * FROM `{t}` ORDER BY 1")
    result["triggers"] = c.query(
        "SELECT trigger_name, event_manipulation, event_object_table, action_statement, "
        "created FROM information_schema.triggers WHERE trigger_schema = %s "
        "ORDER BY trigger_name",
        (c.dbname,),
    )
    return result


def schema_only(c: Ctl) -> dict[str, str]:
    return {t: c.query(f"SHOW CREATE TABLE `{t}`")[0][1] for (t,) in c.query("SHOW TABLES")}


# -- db init / migrate / status ----------------------------------------------------------------


def test_init_on_an_empty_database(make_ctl: Callable[..., Ctl]) -> None:
    c = make_ctl()
    assert c.ok("--json", "db", "status").json()["version"] == "empty"
    assert c.ok("db", "status").out.splitlines()[0].split() == ["schema", "empty"]
    c.refused("db", "migrate", match="database is empty: use 'vmailctl db init'")
    c.refused("domain", "list", match="database schema is empty: run 'vmailctl db init'")
    r = c.ok("db", "init")
    assert r.out == "schema created: empty -> 3\n"
    status = c.ok("--json", "db", "status").json()
    assert status["version"] == "3" and status["advice"] == "up to date"
    assert status["triggers"] == "15 of 15"
    assert set(status["tables"]) == {
        "domains",
        "users",
        "forwardings",
        "transport",
        "sender_grants",
        "send_counters",
        "login_failures",
        "app_passwords",
        "login_history",
        "vmaild_changes",
        "vmaild_change_log",
        "vmaild_heartbeat",
        "vmaild_schema",
    }
    assert status["change_log"].startswith("0 rows, newest id -")
    assert c.query("SELECT version FROM vmaild_schema") == [(3,)]
    assert c.query("SELECT id, version FROM vmaild_changes") == [(1, 0)]
    assert c.ok("db", "init").out == "schema already at version 3; nothing to do\n"
    assert c.ok("db", "migrate").out == "schema already at version 3; nothing to do\n"


def test_tables_are_utf8mb4_innodb_with_the_designed_columns(ctl: Ctl) -> None:
    rows = ctl.query(
        "SELECT table_name, engine, table_collation FROM information_schema.tables "
        "WHERE table_schema = %s",
        (ctl.dbname,),
    )
    for name, engine, collation in rows:
        assert engine == "InnoDB", name
        assert collation.startswith("utf8mb4_") and collation.endswith("_ci"), name
    cols = dict(
        ctl.query(
            "SELECT CONCAT(table_name, '.', column_name), column_type "
            "FROM information_schema.columns WHERE table_schema = %s",
            (ctl.dbname,),
        )
    )
    for col in (
        "domains.domain",
        "users.email",
        "users.password",
        "forwardings.source",
        "transport.domain",
        "sender_grants.login",
        "sender_grants.sender",
    ):
        assert cols[col] == "varchar(255)", col
    assert cols["users.quota_bytes"] == "bigint(20) unsigned"
    assert cols["forwardings.destination"] == "text"
    assert cols["vmaild_changes.changed_at"] == "timestamp(6)"


def test_migrate_the_seed_keeps_every_row_and_hash(make_ctl: Callable[..., Ctl]) -> None:
    c = make_ctl(seeded=True)
    hashes_before = dict(c.query("SELECT email, HEX(password) FROM users"))
    rows_before = {t: c.query(f"SELECT * FROM {t} ORDER BY 1") for t in SEED_TABLES}
    assert len(hashes_before) == len(seed.SEED_USERS)
    assert c.ok("db", "status").out.splitlines()[0].split() == ["schema", "seed", "(1)"]
    c.refused("db", "init", match="use 'vmailctl db migrate'")
    c.refused("user", "list", match="database schema is seed (1): run 'vmailctl db migrate'")

    r = c.ok("db", "migrate")
    assert r.out == "schema migrated: seed (1) -> 3\n"
    assert c.ok("--json", "db", "status").json()["version"] == "3"

    assert dict(c.query("SELECT email, HEX(password) FROM users")) == hashes_before
    for email, password in seed.SEED_USERS.items():
        stored = c.query("SELECT password FROM users WHERE email = %s", (email,))[0][0]
        assert des_crypt.verify(password, stored), email
    assert des_crypt.verify(
        "password", c.query("SELECT password FROM users WHERE email = 'sales@raecoo.com'")[0][0]
    )
    # The seed's columns hold the same values; new columns have their defaults.
    assert c.query("SELECT domain FROM domains ORDER BY 1") == [
        (r[0],) for r in rows_before["domains"]
    ]
    assert c.query("SELECT email, password FROM users ORDER BY 1") == rows_before["users"]
    assert (
        c.query("SELECT source, destination FROM forwardings ORDER BY 1")
        == rows_before["forwardings"]
    )
    assert c.query("SELECT DISTINCT active, quota_bytes, maildir FROM users") == [(1, 0, None)]
    widths = dict(
        c.query(
            "SELECT CONCAT(table_name, '.', column_name), character_maximum_length "
            "FROM information_schema.columns WHERE table_schema = %s "
            "AND data_type = 'varchar'",
            (c.dbname,),
        )
    )
    assert widths["users.password"] == 255 and widths["users.email"] == 255
    assert widths["forwardings.source"] == 255 and widths["domains.domain"] == 255
    assert widths["transport.domain"] == 255


def test_migrate_twice_changes_nothing(migrated: Ctl) -> None:
    before = dump(migrated)
    r = migrated.ok("db", "migrate")
    assert r.out == "schema already at version 3; nothing to do\n"
    assert dump(migrated) == before


def test_a_migrated_seed_has_the_same_schema_as_a_fresh_init(migrated: Ctl, ctl: Ctl) -> None:
    assert schema_only(migrated) == schema_only(ctl)
    triggers = (
        "SELECT trigger_name, action_statement FROM information_schema.triggers "
        "WHERE trigger_schema = %s ORDER BY 1"
    )
    assert migrated.query(triggers, (migrated.dbname,)) == ctl.query(triggers, (ctl.dbname,))


def test_an_interrupted_migration_is_finished_by_running_it_again(
    make_ctl: Callable[..., Ctl],
) -> None:
    c = make_ctl(seeded=True)
    # Half a migration: one table widened, one new table, no version row.
    c.query("ALTER TABLE users MODIFY password varchar(255) NOT NULL")
    c.query(
        "CREATE TABLE sender_grants (login varchar(255) NOT NULL, "
        "sender varchar(255) NOT NULL, PRIMARY KEY (login, sender))"
    )
    assert c.ok("--json", "db", "status").json()["version"] == "seed (1)"
    c.ok("db", "migrate")
    fresh = make_ctl()
    fresh.ok("db", "init")
    assert schema_only(c) == schema_only(fresh)


def test_migrate_an_old_myisam_latin1_seed(make_ctl: Callable[..., Ctl]) -> None:
    """The tutorial on an old MySQL: MyISAM tables in latin1. Rows (a non-ASCII one
    included) and hashes survive the move to InnoDB/utf8mb4."""
    c = make_ctl()
    old_schema = seed.SEED_SCHEMA.replace(");", ") ENGINE=MyISAM DEFAULT CHARSET=latin1;")
    c.mariadb.execute_script(
        old_schema + seed.seed_rows() + "INSERT INTO forwardings VALUES ('müller@raecoo.com', "
        "'sales@raecoo.com');\n",
        c.dbname,
    )
    assert {
        r[0]
        for r in c.query(
            "SELECT engine FROM information_schema.tables WHERE table_schema = %s", (c.dbname,)
        )
    } == {"MyISAM"}
    hashes = dict(c.query("SELECT email, HEX(password) FROM users"))
    c.ok("db", "migrate")
    assert dict(c.query("SELECT email, HEX(password) FROM users")) == hashes
    assert c.query("SELECT destination FROM forwardings WHERE source = 'müller@raecoo.com'") == [
        ("sales@raecoo.com",)
    ]
    assert {
        r[0]
        for r in c.query(
            "SELECT engine FROM information_schema.tables WHERE table_schema = %s", (c.dbname,)
        )
    } == {"InnoDB"}
    fresh = make_ctl()
    fresh.ok("db", "init")
    assert schema_only(c) == schema_only(fresh)


def test_migrate_refuses_a_foreign_schema(make_ctl: Callable[..., Ctl]) -> None:
    c = make_ctl()
    c.query("CREATE TABLE something (id int)")
    assert c.ok("--json", "db", "status").json()["version"] == "unknown"
    c.refused("db", "migrate", match="cannot migrate schema unknown")
    c.refused("db", "init", match="database is not empty")
    assert [r[0] for r in c.query("SHOW TABLES")] == ["something"]


def test_the_seed_queries_answer_the_same_after_migration(migrated: Ctl) -> None:
    for map_name, answers in seed.expected_answers().items():
        for key, value in answers.items():
            r = migrated.ok("lookup", map_name, key, "--direct")
            assert r.out == value + "\n", (map_name, key)
        r = migrated("lookup", map_name, "nobody@nowhere.test", "--direct")
        assert (r.code, r.out) == (1, "")


def test_triggers_work_for_a_user_without_super(ctl: Ctl) -> None:
    grants = " ".join(r[0] for r in ctl.mariadb.query(f"SHOW GRANTS FOR '{DB_USER}'@'127.0.0.1'"))
    assert "SUPER" not in grants and "ALL PRIVILEGES ON `" in grants
    assert ctl.mariadb.query("SELECT @@log_bin")[0][0] == 0
    count = ctl.query(
        "SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = %s", (ctl.dbname,)
    )[0][0]
    assert count == 15


def test_binary_logging_needs_trust_for_trigger_creators(service_tmp: Path) -> None:
    """With binlog on, a user without SUPER may not create triggers until the server
    trusts function creators; the refusal says so, and running init again finishes."""
    with MariaDB(extra_args=["--log-bin=binlog", "--server-id=1"]) as server:
        assert server.query("SELECT @@log_bin")[0][0] == 1
        server.create_database("mail_system", DB_USER, DB_PASSWORD)
        base = service_tmp / "binlog-vmail"
        c = Ctl(
            server,
            "mail_system",
            write_config(service_tmp / "binlog.conf", server, "mail_system", base),
            base,
        )
        c.refused("db", "init", match="set log_bin_trust_function_creators = 1")
        status = c.ok("--json", "db", "status").json()
        assert status["version"] == "incomplete" and "run 'vmailctl db migrate'" in status["advice"]
        c.refused("domain", "list", match="database schema is incomplete")
        server.query("SET GLOBAL log_bin_trust_function_creators = 1")
        assert c.ok("db", "init").out == "schema created: incomplete -> 3\n"
        assert c.ok("--json", "db", "status").json()["triggers"] == "15 of 15"


# -- the change counter --------------------------------------------------------------------------


def test_changes_bump_the_version_but_password_rehashes_do_not(ctl: Ctl) -> None:
    v = ctl.version()
    ctl.ok("domain", "add", "example.com")
    assert ctl.version() > v
    v = ctl.version()
    ctl.add_user("a@example.com")
    assert ctl.version() > v
    for args in (
        ["alias", "add", "b@example.com", "a@example.com"],
        ["transport", "add", "example.com", "smtp:[relay.example.net]"],
        ["sender", "grant", "a@example.com", "@example.com"],
        ["user", "quota", "a@example.com", "1G"],
        ["user", "disable", "a@example.com"],
        ["alias", "remove", "b@example.com"],
    ):
        v = ctl.version()
        ctl.ok(*args)
        assert ctl.version() > v, args

    # What the auth service does on login: rehash. No bump.
    v = ctl.version()
    ctl.query(
        "UPDATE users SET password = %s, password_changed_at = NOW() WHERE email = %s",
        (sha512_crypt.hash("new"), "a@example.com"),
    )
    assert ctl.version() == v
    # Any other column typed by hand does bump.
    ctl.query("UPDATE users SET name = 'Ann' WHERE email = 'a@example.com'")
    assert ctl.version() == v + 1
    ctl.query(
        "INSERT INTO forwardings (source, destination) VALUES ('x@example.com', 'a@example.com')"
    )
    ctl.query("DELETE FROM domains WHERE domain = 'nothing.example'")  # no row, no bump
    assert ctl.version() == v + 2
    # An admin's password change must evict cached logins: vmailctl bumps itself.
    ctl.ok("user", "password", "a@example.com", "--password-stdin", stdin="other-pw\n")
    assert ctl.version() == v + 3


# -- domains -------------------------------------------------------------------------------------


def test_domain_commands(ctl: Ctl) -> None:
    r = ctl.ok("domain", "add", "Example.COM", "--description", "Main domain")
    assert r.out == "added domain example.com\n"
    assert (
        ctl.ok("domain", "add", "bücher.example").out
        == "added domain xn--bcher-kva.example (bücher.example)\n"
    )
    ctl.refused("domain", "add", "example.com", match="domain example.com already exists")
    ctl.refused("domain", "add", "exa_mple.com", match="bad label")
    ctl.refused("domain", "show", "nothing.example", match="no domain nothing.example")

    listing = ctl.ok("--json", "domain", "list").json()
    assert [d["domain"] for d in listing] == ["example.com", "xn--bcher-kva.example"]
    assert listing[0]["description"] == "Main domain" and listing[0]["active"] is True
    assert listing[0]["users"] == 0
    text = ctl.ok("domain", "list").out.splitlines()
    assert text[0].split() == ["DOMAIN", "ACTIVE", "USERS", "ALIASES", "TRANSPORT", "DESCRIPTION"]
    assert text[1].split()[:4] == ["example.com", "yes", "0", "0"]

    shown = ctl.ok("--json", "domain", "show", "BÜCHER.example").json()
    assert shown["domain"] == "xn--bcher-kva.example" and shown["unicode"] == "bücher.example"

    assert ctl.ok("domain", "disable", "example.com").out == "disabled domain example.com\n"
    assert (
        ctl.ok("domain", "disable", "example.com").out
        == "domain example.com was already disabled\n"
    )
    assert ctl.query("SELECT active FROM domains WHERE domain = 'example.com'") == [(0,)]
    ctl.ok("domain", "enable", "example.com")

    assert ctl.ok("--json", "domain", "remove", "xn--bcher-kva.example").json()["result"] == "ok"
    ctl.refused("domain", "remove", "xn--bcher-kva.example", match="no domain")


def test_domain_remove_refuses_with_users_unless_forced(ctl: Ctl) -> None:
    ctl.ok("domain", "add", "example.com")
    ctl.ok("domain", "add", "other.example")
    for user in ("a@example.com", "b@example.com", "c@example.com"):
        ctl.add_user(user)
    ctl.add_user("keep@other.example")
    ctl.ok("alias", "add", "info@example.com", "a@example.com")
    ctl.ok("alias", "add", "@example.com", "b@example.com")
    ctl.ok("transport", "add", "example.com", "smtp:[relay.example.net]")
    ctl.ok("sender", "grant", "a@example.com", "@other.example")
    ctl.ok("sender", "grant", "keep@other.example", "@example.com")

    ctl.refused(
        "domain",
        "remove",
        "example.com",
        match="domain example.com has 3 users and 2 aliases (use --force)",
    )
    r = ctl.ok("domain", "remove", "example.com", "--force")
    assert "with 3 users (Maildirs kept)" in r.out
    assert ctl.query("SELECT COUNT(*) FROM users WHERE email LIKE '%@example.com'") == [(0,)]
    assert ctl.query("SELECT COUNT(*) FROM forwardings") == [(0,)]
    assert ctl.query("SELECT COUNT(*) FROM transport") == [(0,)]
    assert ctl.query("SELECT login, sender FROM sender_grants") == [
        ("keep@other.example", "@example.com")
    ]
    assert (ctl.base / "example.com" / "a" / "cur").is_dir()
    assert ctl.query("SELECT email FROM users") == [("keep@other.example",)]


def test_domain_remove_force_purge_deletes_maildirs(ctl: Ctl) -> None:
    ctl.ok("domain", "add", "example.com")
    ctl.add_user("a@example.com")
    (ctl.base / "example.com" / "a" / "new" / "1.mail").write_text("hi")
    r = ctl.ok("--json", "domain", "remove", "example.com", "--force", "--purge").json()
    assert r["users_removed"] == 1 and r["maildirs_removed"] == 1
    assert not (ctl.base / "example.com").exists()
    assert ctl.base.is_dir()


# -- users ---------------------------------------------------------------------------------------


def test_user_add_creates_the_maildir_with_owner_and_mode(ctl: Ctl) -> None:
    ctl.ok("domain", "add", "example.com")
    r = ctl.add_user(
        "Alice@Example.com",
        "first-pw",
        "--name",
        "Alice A",
        "--quota",
        "500M",
        "--quota-messages",
        "1000",
    )
    maildir = ctl.base / "example.com" / "alice"
    assert r.out == f"added user alice@example.com (Maildir {maildir})\n"
    for d in (ctl.base / "example.com", maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
        st = d.stat()
        assert (st.st_uid, st.st_gid) == (UID, GID), d
        assert stat.S_IMODE(st.st_mode) == 0o700, d
    row = ctl.query(
        "SELECT email, password, name, quota_bytes, quota_messages, active, maildir FROM users"
    )[0]
    assert row[0] == "alice@example.com" and row[2:] == ("Alice A", 500 * 1024**2, 1000, 1, None)
    assert row[1].startswith("$6$") and sha512_crypt.verify("first-pw", row[1])
    # The seed's mailbox query gives the same directory, relative to the base.
    assert (
        ctl.ok("lookup", "mailboxes", "alice@example.com", "--direct").out == "example.com/alice/\n"
    )


def test_user_add_refusals(ctl: Ctl) -> None:
    ctl.refused(
        "user",
        "add",
        "a@nowhere.example",
        "--password-stdin",
        stdin="pw\n",
        match="no domain nowhere.example (add it first",
    )
    ctl.ok("domain", "add", "example.com")
    ctl.add_user("a@example.com")
    ctl.refused(
        "user",
        "add",
        "A@EXAMPLE.COM",
        "--password-stdin",
        stdin="pw\n",
        match="user a@example.com already exists",
    )
    ctl.refused(
        "user",
        "add",
        "b@example.com",
        "--password-stdin",
        stdin="\n",
        match="no password on the first line",
    )
    ctl.refused("user", "add", "b@example.com", match="use --password-stdin")
    ctl.refused("user", "add", "b c@example.com", match="local part contains ' '")
    assert ctl.query("SELECT COUNT(*) FROM users") == [(1,)]
    assert not (ctl.base / "example.com" / "b").exists()


def test_user_list_show_and_changes(ctl: Ctl) -> None:
    ctl.ok("domain", "add", "example.com")
    ctl.ok("domain", "add", "other.example")
    ctl.add_user("a@example.com", "pw-a", "--name", "Ann", "--quota", "2G")
    ctl.add_user("b@other.example")
    ctl.ok("alias", "add", "team@example.com", "a@example.com,b@other.example")
    ctl.ok("sender", "grant", "a@example.com", "@other.example")

    everyone = ctl.ok("--json", "user", "list").json()
    assert [u["email"] for u in everyone] == ["a@example.com", "b@other.example"]
    assert "password" not in everyone[0] and everyone[0]["password_scheme"] == "sha512_crypt"
    assert [u["email"] for u in ctl.ok("--json", "user", "list", "other.example").json()] == [
        "b@other.example"
    ]
    table = ctl.ok("user", "list").out.splitlines()
    assert table[0].split() == ["ADDRESS", "ACTIVE", "QUOTA", "MESSAGES", "HASH", "NAME"]
    assert table[1].split() == ["a@example.com", "yes", "2G", "-", "sha512_crypt", "Ann"]

    shown = ctl.ok("--json", "user", "show", "A@example.com").json()
    assert shown["email"] == "a@example.com" and shown["quota_bytes"] == 2 * 1024**3
    assert shown["aliases"] == ["team@example.com"]
    assert shown["sender_grants"] == ["@other.example"]
    assert shown["maildir_exists"] is True
    assert shown["maildir_path"] == str(ctl.base / "example.com" / "a")
    assert shown["sent_last_hour"] == {"messages": 0, "recipients": 0}
    ctl.query(
        "INSERT INTO send_counters (login, bucket, messages, recipients) VALUES "
        "('a@example.com', FLOOR(UNIX_TIMESTAMP() / 60), 3, 7), "
        "('a@example.com', FLOOR(UNIX_TIMESTAMP() / 60) - 120, 50, 50)"
    )
    assert ctl.ok("--json", "user", "show", "a@example.com").json()["sent_last_hour"] == {
        "messages": 3,
        "recipients": 7,
    }
    assert (
        "sent last hour    3 messages, 7 recipients" in ctl.ok("user", "show", "a@example.com").out
    )

    r = ctl.ok("user", "quota", "a@example.com", "500M", "--messages", "10")
    assert r.out == "quota of a@example.com: 500M, 10 messages\n"
    assert ctl.query(
        "SELECT quota_bytes, quota_messages FROM users WHERE email = 'a@example.com'"
    ) == [(500 * 1024**2, 10)]
    ctl.ok("user", "quota", "a@example.com", "0")
    assert ctl.query(
        "SELECT quota_bytes, quota_messages FROM users WHERE email = 'a@example.com'"
    ) == [(0, 10)]

    assert ctl.ok("user", "disable", "a@example.com").out == "disabled user a@example.com\n"
    assert ctl.ok("--json", "user", "show", "a@example.com").json()["active"] is False
    ctl.ok("user", "enable", "a@example.com")
    assert ctl.query("SELECT active FROM users WHERE email = 'a@example.com'") == [(1,)]

    before = ctl.query("SELECT password FROM users WHERE email = 'a@example.com'")[0][0]
    ctl.ok("user", "password", "a@example.com", "--password-stdin", stdin="new-pw\nignored\n")
    after, changed = ctl.query(
        "SELECT password, password_changed_at FROM users WHERE email = 'a@example.com'"
    )[0]
    assert after != before and sha512_crypt.verify("new-pw", after) and changed is not None

    for args in (
        ["user", "show", "x@example.com"],
        ["user", "quota", "x@example.com", "1G"],
        ["user", "disable", "x@example.com"],
        ["user", "remove", "x@example.com"],
        ["maildir", "create", "x@example.com"],
    ):
        ctl.refused(*args, match="no user x@example.com")
    ctl.refused(
        "user",
        "password",
        "x@example.com",
        "--password-stdin",
        stdin="pw\n",
        match="no user x@example.com",
    )


def test_user_remove_keeps_or_purges_the_maildir(ctl: Ctl) -> None:
    ctl.ok("domain", "add", "example.com")
    ctl.add_user("a@example.com")
    ctl.add_user("b@example.com")
    ctl.ok("sender", "grant", "a@example.com", "@example.com")
    ctl.ok("alias", "add", "info@example.com", "a@example.com")
    r = ctl.ok("user", "remove", "a@example.com")
    assert "Maildir" in r.out and "kept" in r.out
    assert r.err == "vmailctl: warning: aliases still forward to a@example.com: info@example.com\n"
    assert (ctl.base / "example.com" / "a" / "cur").is_dir()
    assert ctl.query("SELECT COUNT(*) FROM sender_grants") == [(0,)]

    r = ctl.ok("--json", "user", "remove", "b@example.com", "--purge")
    assert r.json()["maildir_removed"] is True
    assert not (ctl.base / "example.com" / "b").exists()
    assert (ctl.base / "example.com" / "a").is_dir()


def test_purge_never_leaves_the_mailbox_base(ctl: Ctl) -> None:
    ctl.ok("domain", "add", "example.com")
    ctl.add_user("a@example.com")
    precious = ctl.base.parent / "precious"
    (precious / "cur").mkdir(parents=True)
    ctl.query("UPDATE users SET maildir = '../precious' WHERE email = 'a@example.com'")
    r = ctl("user", "remove", "a@example.com", "--purge")
    assert r.code == 1 and r.err.startswith("vmailctl: incomplete: kept ")
    assert "not inside the mailbox base" in r.err
    assert (precious / "cur").is_dir()
    assert ctl.query("SELECT COUNT(*) FROM users") == [(0,)]


def test_maildir_create_recreates_a_missing_maildir(migrated: Ctl) -> None:
    maildir = migrated.base / "raecoo.com" / "sales"
    assert not maildir.exists()  # the seed's gotcha: no Maildir until a first mail
    r = migrated.ok("maildir", "create", "sales@raecoo.com")
    assert r.out == f"created Maildir {maildir}\n"
    assert (maildir / "new").is_dir() and maildir.stat().st_uid == UID
    assert (
        migrated.ok("maildir", "create", "sales@raecoo.com").out
        == f"already complete: Maildir {maildir}\n"
    )


def test_seed_users_are_managed_after_migration(migrated: Ctl) -> None:
    users = migrated.ok("--json", "user", "list").json()
    assert {u["email"] for u in users} == set(seed.SEED_USERS)
    assert {u["password_scheme"] for u in users} == {"des_crypt"}
    migrated.ok("user", "password", "sales@raecoo.com", "--password-stdin", stdin="better-pw\n")
    stored = migrated.query("SELECT password FROM users WHERE email = 'sales@raecoo.com'")[0][0]
    assert sha512_crypt.verify("better-pw", stored)


# -- aliases, transports, sender grants ----------------------------------------------------------


def test_alias_commands(ctl: Ctl) -> None:
    ctl.ok("domain", "add", "example.com")
    ctl.add_user("a@example.com")
    r = ctl.ok("alias", "add", "Team@Example.com", "a@example.com, B@elsewhere.example")
    assert r.out == "added alias team@example.com -> a@example.com,b@elsewhere.example\n"
    assert (
        ctl.ok("alias", "add", "@example.com", "a@example.com").out
        == "added catch-all @example.com -> a@example.com\n"
    )
    ctl.refused("alias", "add", "team@example.com", "a@example.com", match="already exists")
    ctl.refused("alias", "add", "x@nowhere.example", "a@example.com", match="no domain")
    ctl.refused(
        "alias", "add", "x@example.com", "a@example.com,not-an-address", match="is not an address"
    )
    ctl.refused("alias", "show", "nobody@example.com", match="no alias nobody@example.com")
    ctl.refused("alias", "remove", "nobody@example.com", match="no alias")

    assert ctl.query("SELECT destination FROM forwardings WHERE source = 'team@example.com'") == [
        ("a@example.com,b@elsewhere.example",)
    ]
    listing = ctl.ok("--json", "alias", "list", "example.com").json()
    assert [a["source"] for a in listing] == ["@example.com", "team@example.com"]
    assert listing[1]["destinations"] == ["a@example.com", "b@elsewhere.example"]
    shown = ctl.ok("--json", "alias", "show", "@example.com").json()
    assert shown["catchall"] is True
    # The seed's forwardings query with vmaild's catch-all rule.
    assert (
        ctl.ok("lookup", "forwardings", "team@example.com", "--direct").out
        == "a@example.com,b@elsewhere.example\n"
    )
    assert ctl.ok("lookup", "forwardings", "other@example.com", "--direct").out == "a@example.com\n"
    ctl.ok("alias", "remove", "@example.com")
    assert ctl("lookup", "forwardings", "other@example.com", "--direct").code == 1


def test_transport_and_sender_commands(ctl: Ctl) -> None:
    ctl.ok("domain", "add", "example.com")
    ctl.add_user("a@example.com")
    ctl.ok("transport", "add", "example.com", "smtp:[relay.example.net]:25")
    ctl.refused("transport", "add", "example.com", "lmtp:unix:/x", match="already has")
    assert ctl.ok("--json", "transport", "list").json() == [
        {"domain": "example.com", "transport": "smtp:[relay.example.net]:25"}
    ]
    ctl.ok("transport", "remove", "example.com")
    ctl.refused("transport", "remove", "example.com", match="no transport for example.com")

    ctl.ok("sender", "grant", "a@example.com", "boss@example.com")
    ctl.ok("sender", "grant", "a@example.com", "@bücher.example")
    ctl.refused("sender", "grant", "a@example.com", "boss@example.com", match="already")
    ctl.refused("sender", "grant", "x@example.com", "boss@example.com", match="no user")
    assert ctl.ok("--json", "sender", "list", "a@example.com").json() == [
        {"login": "a@example.com", "sender": "@xn--bcher-kva.example"},
        {"login": "a@example.com", "sender": "boss@example.com"},
    ]
    ctl.ok("sender", "revoke", "a@example.com", "boss@example.com")
    ctl.refused("sender", "revoke", "a@example.com", "boss@example.com", match="has no grant")
    assert len(ctl.ok("--json", "sender", "list").json()) == 1


# -- notifying the daemon --------------------------------------------------------------------


def fake_control(path: Path) -> tuple[socket.socket, list[bytes]]:
    seen: list[bytes] = []
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                seen.append(conn.recv(100))
                conn.sendall(b"ok 3\n")

    threading.Thread(target=serve, daemon=True).start()
    return srv, seen


def test_changes_poke_the_control_socket(make_ctl: Callable[..., Ctl], service_tmp: Path) -> None:
    path = service_tmp / "control.sock"
    c = make_ctl(extra=f"[control]\nlisten = unix:{path}\n")
    r = c.ok("db", "init")
    assert r.err.startswith("vmailctl: warning: could not notify vmaild (unix:")
    assert "it will see the change within 1s" in r.err
    srv, seen = fake_control(path)
    try:
        c.ok("domain", "add", "example.com")
        c.ok("domain", "list")  # no change, no poke
        assert c.ok("user", "add", "a@example.com", "--password-stdin", stdin="pw\n").err == ""
        # The change log's keys (no binary log on this server: no GTID, "-").
        assert seen == [b"changed - example.com\n", b"changed - a@example.com\n"]
    finally:
        srv.close()


# -- import-postfix ------------------------------------------------------------------------------


def test_import_the_seed_cf_files(migrated: Ctl, service_tmp: Path) -> None:
    cf = seed.write_mysql_cf(
        service_tmp / "cf", migrated.mariadb, migrated.dbname, DB_USER, DB_PASSWORD
    )
    files = [str(cf[name]) for name in ("domains", "mailboxes", "forwardings", "email2email")]
    r = migrated.ok("import-postfix", *files)
    imported = service_tmp / "imported.conf"
    imported.write_text(r.out)
    cfg = vconfig.load(imported)
    assert list(cfg.maps) == ["domains", "mailboxes", "forwardings", "email2email"]
    assert cfg.maps["forwardings"].catchall
    assert cfg.maps["forwardings"].chain == ("email2email",)
    # Alias maps keep their "not found" answers through an outage; the mailbox map not.
    assert [name for name, m in cfg.maps.items() if m.stale_negative] == [
        "forwardings",
        "email2email",
    ]
    assert "#   virtual_alias_maps = tcp:127.0.0.1:10023\n" in r.out

    # The imported configuration answers like the mysql: files it came from.
    other = Ctl(migrated.mariadb, migrated.dbname, imported, migrated.base)
    for map_name, answers in seed.expected_answers().items():
        for key in [*answers, "nobody@raecoo.com"]:
            mine = other("lookup", map_name, key, "--direct")
            theirs = subprocess.run(
                ["postmap", "-q", key, f"mysql:{cf[map_name]}"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if map_name == "forwardings" and theirs.returncode == 1:
                # The forwardings map chains email2email, like Postfix's list.
                theirs = subprocess.run(
                    ["postmap", "-q", key, f"mysql:{cf['email2email']}"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
            if map_name == "forwardings" and key == "nobody@raecoo.com":
                continue  # not in the seed data's catch-all domain either way
            assert (mine.code, mine.out) == (theirs.returncode, theirs.stdout), (map_name, key)

    r = migrated.ok("--json", "import-postfix", "--socketmap", *files)
    assert vconfig.parse(r.json()["config"]).socketmap.listen is not None


# -- a running vmaild sees every change at once --------------------------------------------------


def postmap(key: str, table: str) -> tuple[int, str]:
    r = subprocess.run(["postmap", "-q", key, table], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout.strip()


def flushes(metrics_text: str) -> dict[str, float]:
    """vmaild_cache_flushes_total by reason."""
    found = {}
    for line in metrics_text.splitlines():
        if line.startswith('vmaild_cache_flushes_total{reason="'):
            labels, _, value = line.rpartition(" ")
            found[labels.split('"')[1]] = float(value)
    return found


def test_a_running_vmaild_sees_changes_at_once(migrated: Ctl, service_tmp: Path) -> None:
    """Long TTLs, so only invalidation can explain a changed answer: the control socket
    poke for vmailctl's changes, the change log poll for hand-typed SQL; neither flushes
    the whole cache (the change log's targeted drops)."""
    from harness.common.ports import free_port
    from harness.common.wait import wait_until
    from harness.vmaild.server import Vmaild, config_text, seed_ports

    ports = seed_ports()
    socketmap_port = free_port()
    metrics_port = free_port()
    control = service_tmp / "control.sock"
    text = config_text(
        db_port=migrated.mariadb.port,
        dbname=migrated.dbname,
        user=DB_USER,
        password=DB_PASSWORD,
        ports=ports,
        socketmap_port=socketmap_port,
        metrics_port=metrics_port,
        control_path=str(control),
        cache="ttl = 3600\nnegative_ttl = 3600\ncheck_interval = 1",
        extra=f"[mailbox]\nbase = {migrated.base}\nuid = {UID}\ngid = {GID}\n",
    )
    migrated.conf.write_text(text)
    email2email = f"tcp:127.0.0.1:{ports['email2email']}"
    forwardings = f"tcp:127.0.0.1:{ports['forwardings']}"
    with Vmaild(text, service_tmp / "vmaild") as v:
        assert postmap("new@raecoo.com", email2email) == (1, "")  # cached: not found
        assert postmap("sales@raecoo.com", email2email) == (0, "sales@raecoo.com")
        assert migrated("lookup", "email2email", "new@raecoo.com").code == 1

        r = migrated.add_user("new@raecoo.com")
        assert r.err == ""  # the poke was answered
        assert postmap("new@raecoo.com", email2email) == (0, "new@raecoo.com")
        assert (
            migrated.ok("lookup", "email2email", "new@raecoo.com").out == "new@raecoo.com\n"
        )  # through the socketmap

        migrated.ok("user", "remove", "sales@raecoo.com")
        assert postmap("sales@raecoo.com", email2email) == (1, "")

        migrated.ok("alias", "add", "@raecoo.com", "new@raecoo.com")
        after_vmailctl = flushes(v.metrics_text(metrics_port))
        assert postmap("anyone@raecoo.com", forwardings) == (0, "new@raecoo.com")
        # The change log: each command dropped what its keys affect, no whole flush.
        assert after_vmailctl.get("control", 0) == after_vmailctl.get("change", 0) == 0
        drops = v.metrics_text(metrics_port).count("vmaild_cache_drops_total{")
        assert drops >= 1

        # Hand-typed SQL, no poke: the triggers log the key the daemon polls for.
        migrated.query("DELETE FROM forwardings WHERE source = '@raecoo.com'")
        wait_until(
            lambda: postmap("anyone@raecoo.com", forwardings) == (1, ""),
            5,
            "the daemon to notice a hand-typed DELETE",
        )
        assert flushes(v.metrics_text(metrics_port)).get("change", 0) == 0


def test_user_passwords_are_hashed_as_auth_says(make_ctl: Callable[..., Ctl]) -> None:
    """vmailctl stores the hash vmaild would: [auth] password_scheme and password_rounds."""
    c = make_ctl(extra="[auth]\npassword_rounds = 6000\n")
    c.ok("db", "init")
    c.ok("domain", "add", "rounds.example")
    c.add_user("u@rounds.example", "pw-one")
    (stored,) = c.query("SELECT password FROM users WHERE email = 'u@rounds.example'")[0]
    assert stored.startswith("$6$rounds=6000$"), stored
    c.ok("user", "password", "u@rounds.example", "--password-stdin", stdin="pw-two\n")
    (stored,) = c.query("SELECT password FROM users WHERE email = 'u@rounds.example'")[0]
    assert stored.startswith("$6$rounds=6000$"), stored
