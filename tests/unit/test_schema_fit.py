"""schema_fit: which statements are probed and how, the one-line report, the gauge, and the
requests that hit a query the database cannot run (fakes; the real MariaDB is in
tests/integration/test_schema_fit.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pymysql
import pytest

from tests.unit import fakes
from tests.unit.fakes_auth import make_service as make_auth_service
from tests.unit.fakes_policy import FakePolicyDB, decide, request
from tests.unit.fakes_policy import make_service as make_policy_service
from vmaild import cli, config, schema_fit
from vmaild.codec import authpipe as codec
from vmaild.db import DatabaseError
from vmaild.failures import TemporaryFailure
from vmaild.metrics import Metrics
from vmaild.schema_fit import Misfit, SchemaFit

PATH = "/etc/vmaild/vmaild.conf"
DB = "[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n"
MAPS = (
    "[map mailboxes]\nquery = SELECT maildir FROM users WHERE email='%s'\n"
    "[map aliases]\nquery = SELECT destination FROM forwardings WHERE source='%s' "
    "AND x LIKE '5%%'\nchain = mailboxes\n"
)
SERVICES = "[auth]\nlisten = unix:/run/a.sock\n[policy]\nlisten = 127.0.0.1:10040\n"
MISSING_MAILDIR = (1054, "Unknown column 'u.maildir' in 'SELECT'")


def parse(text: str) -> config.Config:
    return config.parse(text, PATH)


def misfit(section: str, key: str, errno: int, message: str) -> Misfit:
    return Misfit(PATH, section, key, errno, message)


def gauge(metrics: Metrics, section: str, key: str) -> float | None:
    return metrics.registry.get_sample_value(
        "vmaild_config_schema_errors", {"section": section, "key": key}
    )


def misfit_error(
    errno: int = 1054,
    text: str = "Unknown column 'u.maildir' in 'SELECT'",
) -> DatabaseError:
    return DatabaseError(f"({errno}) {text}", errno, misfit=True)


OUTAGE = DatabaseError("no database host answered: 127.0.0.1:3306: (2003) Can't connect", 2003)


# -- which statements, and how ---------------------------------------------------------------


def test_every_configured_statement_is_probed() -> None:
    found = schema_fit.probes(parse(DB + MAPS + SERVICES))
    assert [(p.section, p.key) for p in found] == [
        ("map mailboxes", "query"),
        ("map aliases", "query"),
        ("auth", "query"),
        ("auth", "enumerate_query"),
        ("auth", "passwd_query"),
        ("auth", "rehash_query"),
        ("policy", "sender_query"),
        ("policy", "recipient_query"),
        ("policy", "ratelimit_query"),
        ("policy", "ratelimit_update"),
        ("policy", "ratelimit_lock"),
        ("policy", "ratelimit_prune"),
    ]
    by_key = {(p.section, p.key): p for p in found}
    aliases = by_key[("map aliases", "query")]
    # As the daemon sends it: the key bound, Postfix's %% a literal (pymysql doubles it).
    assert aliases.sql.endswith("source=%s AND x LIKE '5%%'")
    assert aliases.params == (schema_fit.DUMMY,) and aliases.read_only
    assert by_key[("auth", "enumerate_query")].params is None
    update = by_key[("auth", "passwd_query")]
    assert not update.read_only and set(update.params or ()) == {"address", "old", "new"}
    counters = by_key[("policy", "ratelimit_update")]
    assert not counters.read_only and counters.params == (schema_fit.DUMMY, 0, 0, 0)


def test_services_and_checks_that_are_off_are_not_probed() -> None:
    off = (
        "[auth]\nlisten = unix:/run/a.sock\nrehash = no\n[policy]\nlisten = 127.0.0.1:1\n"
        "sender_check = no\nrecipient_check = no\nquota_check = no\nratelimit_messages = 0\n"
        "ratelimit_recipients = 0\n"
    )
    keys = [(p.section, p.key) for p in schema_fit.probes(parse(DB + off))]
    assert keys == [("auth", "query"), ("auth", "enumerate_query"), ("auth", "passwd_query")]
    assert schema_fit.probes(parse(DB)) == []  # no maps, no services: nothing to ask


def test_statements_explain_cannot_take_are_left_alone() -> None:
    cfg = parse(
        DB + "[map proc]\nquery = CALL lookup('%s')\n"
        "[map sub]\nquery = (SELECT a FROM t WHERE k='%s')\n"
    )
    assert [p.section for p in schema_fit.probes(cfg)] == ["map sub"]


class ProbeConn:
    """A pymysql-like connection: EXPLAIN fails with ``errors[fragment]`` when the
    statement contains that fragment."""

    def __init__(self, errors: dict[str, Exception] | None = None):
        self.errors = errors or {}
        self.log: list[tuple[str, Any]] = []

    def cursor(self) -> ProbeConn:
        return self

    def __enter__(self) -> ProbeConn:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: Any = None) -> int:
        self.log.append((sql, params))
        if sql.startswith("EXPLAIN "):
            for fragment, error in self.errors.items():
                if fragment in sql:
                    raise error
        return 1

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [(1, "SIMPLE")]


def test_probes_explain_inside_a_transaction_that_is_rolled_back() -> None:
    cfg = parse(DB + SERVICES)
    conn = ProbeConn(
        {
            "u.maildir": pymysql.err.OperationalError(*MISSING_MAILDIR),
            "sender_grants": pymysql.err.ProgrammingError(
                1146, "Table 'd.sender_grants' doesn't exist"
            ),
        }
    )
    found = schema_fit.run_probes(conn, schema_fit.probes(cfg), PATH)
    assert [(m.section, m.key, m.errno) for m in found] == [
        ("auth", "query", 1054),
        ("auth", "enumerate_query", 1054),
        ("policy", "sender_query", 1146),
        ("policy", "recipient_query", 1054),
    ]
    assert found[0].message == MISSING_MAILDIR[1]
    statements = [sql for sql, _ in conn.log]
    # Each probe: a transaction, EXPLAIN, ROLLBACK -- READ ONLY for reads only (MariaDB
    # will not explain a write in a READ ONLY transaction).
    assert len(statements) == 3 * len(schema_fit.probes(cfg))
    for begin, explain, end in zip(*[iter(statements)] * 3, strict=True):
        assert explain.startswith("EXPLAIN ") and end == "ROLLBACK"
        is_read = explain.startswith("EXPLAIN SELECT")
        assert begin == ("START TRANSACTION READ ONLY" if is_read else "START TRANSACTION")
    assert not any(s.startswith(("SELECT", "UPDATE", "INSERT", "DELETE")) for s in statements)


def test_an_outage_during_the_probes_is_raised_not_reported() -> None:
    conn = ProbeConn({"u.maildir": pymysql.err.OperationalError(2013, "Lost connection")})
    with pytest.raises(pymysql.err.OperationalError):
        schema_fit.run_probes(conn, schema_fit.probes(parse(DB + SERVICES)), PATH)
    assert conn.log[-1][0] == "ROLLBACK"


def test_a_view_that_cannot_be_explained_is_no_misfit() -> None:
    conn = ProbeConn(
        {
            "FROM users": pymysql.err.OperationalError(
                1345, "EXPLAIN/SHOW can not be issued; lacking privileges for underlying table"
            )
        }
    )
    assert schema_fit.run_probes(conn, schema_fit.probes(parse(DB + MAPS)), PATH) == []


# -- the line --------------------------------------------------------------------------------


def test_the_seed_case_names_the_column_and_both_fixes() -> None:
    line = misfit("auth", "query", *MISSING_MAILDIR).line()
    assert line == (
        f"{PATH}: [auth] query does not fit the database: unknown column 'u.maildir' "
        "(error 1054); fix: run 'vmailctl db migrate', or set [auth] query = "
        "SELECT email AS address, password FROM users WHERE email='%s'"
    )


@pytest.mark.parametrize(
    ("m", "says"),
    [
        (
            misfit("policy", "sender_query", 1146, "Table 'mail.sender_grants' doesn't exist"),
            "no table 'mail.sender_grants' (error 1146); fix: run 'vmailctl db migrate', "
            "or set [policy] sender_check = no",
        ),
        # Neither the column nor the table is vmailctl's: only the query can be wrong.
        (
            misfit("map aliases", "query", 1054, "Unknown column 'dest' in 'SELECT'"),
            "unknown column 'dest' (error 1054); fix: correct [map aliases] query",
        ),
        (
            misfit("map x", "query", 1146, "Table 'mail.virtual_users' doesn't exist"),
            "no table 'mail.virtual_users' (error 1146); fix: correct [map x] query",
        ),
        (
            misfit(
                "auth",
                "rehash_query",
                1142,
                "UPDATE command denied to user 'mail'@'localhost' for table `mail`.`users`",
            ),
            "(1142) UPDATE command denied to user 'mail'@'localhost' for table `mail`.`users`; "
            "fix: grant the [database] user what the statement needs, or correct [auth] "
            "rehash_query, or set [auth] rehash = no",
        ),
        (
            misfit(
                "map d",
                "query",
                1064,
                "You have an error in your SQL syntax; ... near 'FRM domains' at line 1",
            ),
            "(1064) You have an error in your SQL syntax; ... near 'FRM domains' at line 1; "
            "fix: correct [map d] query",
        ),
    ],
)
def test_lines(m: Misfit, says: str) -> None:
    assert m.line() == f"{PATH}: [{m.section}] {m.key} does not fit the database: {says}"


# -- the tracker: once per query and configuration, and the gauge ----------------------------


def test_a_request_reports_a_misfit_once(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    fit = SchemaFit(parse(DB + SERVICES), metrics)
    caplog.set_level(logging.INFO, "vmaild.schema")
    assert not fit.report("auth", "query", OUTAGE)  # an outage is not this module's
    assert gauge(metrics, "auth", "query") is None and not caplog.records
    for _ in range(3):
        assert fit.report("auth", "query", misfit_error())
    assert [r.getMessage() for r in caplog.records] == [
        misfit("auth", "query", *MISSING_MAILDIR).line()
    ]
    assert caplog.records[0].levelno == logging.ERROR
    assert gauge(metrics, "auth", "query") == 1


def test_probe_results_set_every_key_and_clear_when_fixed(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    fit = SchemaFit(parse(DB + MAPS + SERVICES), metrics)
    caplog.set_level(logging.INFO, "vmaild.schema")
    broken = [misfit("auth", "query", *MISSING_MAILDIR)]
    fit.apply(broken)
    fit.apply(broken)  # the recheck: nothing new to say
    assert gauge(metrics, "auth", "query") == 1
    assert gauge(metrics, "map aliases", "query") == 0
    assert gauge(metrics, "policy", "ratelimit_prune") == 0
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    fit.apply([])  # vmailctl db migrate ran
    assert gauge(metrics, "auth", "query") == 0
    assert caplog.records[-1].getMessage() == "[auth] query fits the database now"


def test_a_reload_replaces_the_series(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    old = SchemaFit(parse(DB + MAPS), metrics)
    old.apply([misfit("map aliases", "query", 1054, "Unknown column 'x' in 'WHERE'")])
    old.active = False
    new = SchemaFit(parse(DB + SERVICES), metrics)
    new.publish()
    assert gauge(metrics, "map aliases", "query") is None  # the old file's map is gone
    old.report("map mailboxes", "query", misfit_error())  # a request still in flight
    assert gauge(metrics, "map mailboxes", "query") is None
    new.apply([])
    assert gauge(metrics, "auth", "query") == 0


def test_watch_waits_for_the_database_then_rechecks_until_fixed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(schema_fit, "FIRST_RETRY", 0.0)
    monkeypatch.setattr(schema_fit, "RECHECK", 0.0)
    metrics = Metrics()
    fit = SchemaFit(parse(DB + SERVICES), metrics)
    caplog.set_level(logging.INFO, "vmaild.schema")
    answers: list[Any] = [
        OUTAGE,
        OUTAGE,
        [misfit("auth", "query", *MISSING_MAILDIR)],
        [],
        # a request meets a misfit later: probed again, until fixed
        [misfit("policy", "sender_query", 1146, "Table 'd.x' doesn't exist")],
        [],
    ]
    probed = asyncio.Event()

    class Unready:
        async def run(self, fn: Any, *, retry: bool = False, write: bool = False) -> Any:
            answer = answers.pop(0)
            if not answers:
                probed.set()
            if isinstance(answer, Exception):
                raise answer
            return answer

    async def main() -> None:
        task = asyncio.create_task(fit.watch(Unready()))  # type: ignore[arg-type]
        while len(answers) > 2:
            await asyncio.sleep(0)
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(answers) == 2 and gauge(metrics, "auth", "query") == 0  # fits: waiting
        fit.report("policy", "sender_query", misfit_error(1146, "Table 'd.x' doesn't exist"))
        await asyncio.wait_for(probed.wait(), 5)
        for _ in range(10):
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(asyncio.wait_for(main(), 5))
    assert answers == []
    assert gauge(metrics, "auth", "query") == 0 and gauge(metrics, "policy", "sender_query") == 0
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("schema check waits for the database: no database host")
    assert len([m for m in messages if "waits" in m]) == 1
    assert "does not fit" in messages[1] and messages[2].endswith("fits the database now")
    assert "[policy] sender_query does not fit" in messages[3]
    assert messages[4] == "[policy] sender_query fits the database now"


# -- requests that hit a misfit: a temporary failure, one line, no per-request warning -------


class MisfitDatabase(fakes.FakeDatabase):
    async def fetch(
        self, sql: str, params: tuple[Any, ...] = (), *, write: bool = False
    ) -> list[tuple[Any, ...]]:
        self.queries.append((sql, tuple(params)))
        if "maildir" in sql:
            raise misfit_error(1054, "Unknown column 'maildir' in 'SELECT'")
        return self.rows.get(params[0] if params else "", [])


def test_lookup_of_a_misfit_map(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse(fakes.CONFIG)
    lookups, _, metrics = fakes.make_lookups(text=fakes.CONFIG)
    lookups.db = MisfitDatabase()  # type: ignore[assignment]
    lookups.fit = SchemaFit(cfg, metrics)
    caplog.set_level(logging.DEBUG)

    async def twice() -> None:
        for _ in range(2):
            with pytest.raises(TemporaryFailure):  # never "not found"
                await lookups.lookup("mailboxes", "a@example.com")

    asyncio.run(twice())
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "[map mailboxes] query does not fit" in errors[0].getMessage()
    assert gauge(metrics, "map mailboxes", "query") == 1


def test_login_with_a_misfit_account_query(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    service, db = make_auth_service(tmp_path)
    service.fit = SchemaFit(service.cfg, service.metrics)

    async def run(fn: Any, *, retry: bool = False, write: bool = False) -> Any:
        raise misfit_error()

    db.run = run  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)

    async def logins() -> list[Any]:
        # Together: the first alone, the others in one batch (UNION ALL), which fails as
        # the query itself does -- not a reason to stop batching.
        return await asyncio.gather(
            *(service.answer(codec.Pre(".", "imap", f"u{i}@example.test")) for i in range(4)),
            return_exceptions=True,
        )

    results = asyncio.run(logins())
    assert all(isinstance(r, TemporaryFailure) for r in results)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "[auth] query does not fit" in warnings[0]
    assert not any("database unavailable" in r.getMessage() for r in caplog.records)
    assert service.accounts.union
    assert gauge(service.metrics, "auth", "query") == 1


def test_login_with_the_database_down_still_warns(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    service, db = make_auth_service(tmp_path)
    service.fit = SchemaFit(service.cfg, service.metrics)
    db.down = True
    caplog.set_level(logging.INFO)
    with pytest.raises(TemporaryFailure):
        asyncio.run(service.answer(codec.Pre(".", "imap", "a@example.test")))
    assert any("database unavailable" in r.getMessage() for r in caplog.records)
    assert gauge(service.metrics, "auth", "query") is None


class MisfitPolicyDB(FakePolicyDB):
    async def fetch(
        self, sql: str, params: tuple[Any, ...] = (), *, write: bool = False
    ) -> list[tuple[Any, ...]]:
        if "sender_grants" in sql:
            raise misfit_error(1146, "Table 'd.sender_grants' doesn't exist")
        return await super().fetch(sql, params)


def test_policy_check_with_a_misfit_query(caplog: pytest.LogCaptureFixture) -> None:
    service, metrics = make_policy_service(MisfitPolicyDB(), "ratelimit_check = no\n")
    service.fit = SchemaFit(parse(DB + SERVICES), metrics)
    caplog.set_level(logging.INFO)
    req = request(sasl_username="alice@example.com", sender="boss@example.org")
    for _ in range(3):  # the fail action answers, as for an outage
        assert (
            decide(service, req) == "DEFER_IF_PERMIT Sender address check temporarily unavailable"
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "[policy] sender_query does not fit" in warnings[0]
    assert gauge(metrics, "policy", "sender_query") == 1


# -- vmaild check ------------------------------------------------------------------------------


@pytest.fixture
def cfg() -> config.Config:
    return parse(DB + SERVICES)


def test_check_without_the_database(
    cfg: config.Config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(_: config.Config) -> list[Misfit]:
        raise OUTAGE

    monkeypatch.setattr(schema_fit, "check_now", unreachable)
    assert cli.check(cfg, "auto") == 0
    out, err = capsys.readouterr()
    assert out == f"{PATH}: ok (0 maps); queries not checked against the database\n"
    assert err.startswith("vmaild: database not checked (no database host answered")
    assert cli.check(cfg, "require") == 75
    assert "cannot check the queries" in capsys.readouterr().err
    assert cli.check(cfg, "skip") == 0  # never connects (check_now would raise)


def test_check_with_the_database(
    cfg: config.Config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    found = [misfit("auth", "query", *MISSING_MAILDIR)]
    monkeypatch.setattr(schema_fit, "check_now", lambda _: found)
    assert cli.check(cfg, "auto") == 1
    assert capsys.readouterr().err == f"vmaild: {found[0].line()}\n"
    found.clear()
    assert cli.check(cfg, "require") == 0
    assert capsys.readouterr().out == f"{PATH}: ok (0 maps); 10 queries fit the database\n"


def test_check_options() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["check"]).db == "auto"
    assert parser.parse_args(["check", "--db"]).db == "require"
    assert parser.parse_args(["check", "--no-db"]).db == "skip"
    with pytest.raises(SystemExit):
        parser.parse_args(["check", "--db", "--no-db"])
