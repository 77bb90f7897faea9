"""db.Database's verdicts on errors, with pymysql.connect replaced: a statement that does not
fit the schema leaves the host up and the connection pooled; a lost connection does not."""

from __future__ import annotations

import asyncio
from typing import Any

import pymysql
import pytest

from vmaild import config, db, dbconn
from vmaild.metrics import Metrics
from vmaild.values import DatabaseHost, parse_db_host

HOST = "127.0.0.1:3306"


class FakeRaw:
    def __init__(self) -> None:
        self.closed = False

    def cursor(self) -> FakeRaw:
        return self

    def __enter__(self) -> FakeRaw:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: Any = None) -> int:
        return 0  # SET SESSION max_statement_time

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> Any:
    connects: list[FakeRaw] = []

    def connect(**_: Any) -> FakeRaw:
        connects.append(FakeRaw())
        return connects[-1]

    monkeypatch.setattr(dbconn.pymysql, "connect", connect)
    cfg = config.parse("[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n")
    metrics = Metrics()
    database = db.Database(cfg.database, metrics)
    yield database, metrics, connects
    database.close()


def failing(error: Exception) -> Any:
    def fn(raw: Any) -> Any:
        raise error

    return fn


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"host": HOST})


@pytest.mark.parametrize(
    "error",
    [
        pymysql.err.OperationalError(1054, "Unknown column 'u.maildir' in 'SELECT'"),
        pymysql.err.ProgrammingError(1146, "Table 'd.sender_grants' doesn't exist"),
        pymysql.err.OperationalError(1142, "SELECT command denied to user 'u'@'h' for table 'x'"),
    ],
)
def test_a_statement_that_does_not_fit_is_no_outage(database: Any, error: Exception) -> None:
    dbase, metrics, connects = database
    with pytest.raises(db.DatabaseError) as caught:
        dbase.run_sync(failing(error), retry=True)
    assert caught.value.misfit and caught.value.errno == error.args[0]
    assert sample(metrics, "vmaild_db_up") == 1  # the host answered
    assert sample(metrics, "vmaild_db_errors_total") == 1  # one failed query, no retry
    assert dbase._down_until == {}
    assert len(connects) == 1 and not connects[0].closed  # pooled again, reused next
    assert dbase.run_sync(lambda raw: raw is connects[0])


@pytest.mark.parametrize(
    "error",
    [
        pymysql.err.OperationalError(2013, "Lost connection to server during query"),
        pymysql.err.OperationalError(1969, "Query execution was interrupted (max_statement_time)"),
    ],
)
def test_a_lost_connection_or_a_timeout_still_counts_against_the_host(
    database: Any, error: Exception
) -> None:
    dbase, metrics, connects = database
    with pytest.raises(db.DatabaseError) as caught:
        dbase.run_sync(failing(error))
    assert not caught.value.misfit
    assert sample(metrics, "vmaild_db_up") == 0
    assert connects[0].closed and list(dbase._down_until) == list(dbase.cfg.hosts)


def test_a_data_error_is_no_misfit(database: Any) -> None:
    dbase, metrics, _ = database
    with pytest.raises(db.DatabaseError) as caught:
        dbase.run_sync(failing(pymysql.err.DataError(1406, "Data too long for column")))
    assert not caught.value.misfit and caught.value.errno == 1406
    assert sample(metrics, "vmaild_db_up") == 1


# -- read and write roles ------------------------------------------------------------------

ROLES = """[database]
hosts = 10.0.0.1 10.0.0.2
write_hosts = 10.0.0.9
user = u
dbname = d
retry_interval = 10
max_lag = 30
pool_size = 4
"""


class HostRaw(FakeRaw):
    """A connection that knows its host and answers MASTER_GTID_WAIT with ``gtid_result``."""

    gtid_result: int | None = 0

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host
        self.statements: list[tuple[str, Any]] = []

    def execute(self, sql: str, params: Any = None) -> int:
        self.statements.append((sql, params))
        return 0

    def fetchone(self) -> tuple[Any, ...]:
        return (self.gtid_result,)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return []


@pytest.fixture
def roles(monkeypatch: pytest.MonkeyPatch) -> Any:
    down: set[str] = set()
    made: list[HostRaw] = []

    def connect(host: str, **_: Any) -> HostRaw:
        if host in down:
            raise pymysql.err.OperationalError(2003, f"Can't connect to server on '{host}'")
        made.append(HostRaw(host))
        return made[-1]

    monkeypatch.setattr(dbconn.pymysql, "connect", connect)
    metrics = Metrics()
    database = db.Database(config.parse(ROLES).database, metrics)
    yield database, down, made, metrics
    database.close()


def host_of(raw: Any) -> str:
    return str(raw.host)


def test_reads_go_to_the_first_reader_and_writes_to_the_writer(roles: Any) -> None:
    dbase, _, made, metrics = roles
    assert dbase.run_sync(host_of) == "10.0.0.1"
    assert dbase.run_sync(host_of, write=True) == "10.0.0.9"
    assert dbase.run_sync(host_of) == "10.0.0.1"  # pooled by role: no new connection
    assert [r.host for r in made] == ["10.0.0.1", "10.0.0.9"]
    assert str(dbase.read_host) == "10.0.0.1:3306"
    read = {
        h: metrics.registry.get_sample_value("vmaild_db_read_host", {"host": f"{h}:3306"})
        for h in ("10.0.0.1", "10.0.0.2")
    }
    assert read == {"10.0.0.1": 1, "10.0.0.2": 0}


def test_execute_and_fetch_write_go_to_the_writer(roles: Any) -> None:
    dbase, _, made, _ = roles

    async def both() -> None:
        await dbase.execute("UPDATE t SET x = 1")
        await dbase.fetch("SELECT 1", write=True)
        await dbase.fetch("SELECT 1")

    asyncio.run(both())
    assert sorted({r.host for r in made}) == ["10.0.0.1", "10.0.0.9"]
    writer = next(r for r in made if r.host == "10.0.0.9")
    assert [s for s, _ in writer.statements if not s.startswith("SET")] == [
        "UPDATE t SET x = 1",
        "SELECT 1",
    ]


def test_writer_down_writes_fail_reads_go_on(roles: Any) -> None:
    dbase, down, _, _ = roles
    down.add("10.0.0.9")
    with pytest.raises(db.DatabaseError) as caught:
        dbase.run_sync(host_of, write=True)
    assert caught.value.errno == 2003 and not caught.value.misfit
    assert "no writer answered" in str(caught.value)
    assert dbase.run_sync(host_of) == "10.0.0.1"


def test_a_reader_down_moves_reads_to_the_next_until_retry_interval(roles: Any) -> None:
    dbase, down, _, _ = roles
    now = [1000.0]
    dbase.hosts._clock = lambda: now[0]
    assert dbase.run_sync(host_of) == "10.0.0.1"
    down.add("10.0.0.1")
    # The pooled connection breaks: retried (idempotent read) on the next reader.
    lost = pymysql.err.OperationalError(2013, "Lost connection to server during query")

    def fails_on_first(raw: Any) -> str:
        if raw.host == "10.0.0.1":
            raise lost
        return str(raw.host)

    assert dbase.run_sync(fails_on_first, retry=True) == "10.0.0.2"
    assert dbase.run_sync(host_of) == "10.0.0.2"
    down.discard("10.0.0.1")
    now[0] += 9.0
    assert dbase.run_sync(host_of) == "10.0.0.2"  # still within retry_interval
    now[0] += 2.0
    assert dbase.run_sync(host_of) == "10.0.0.1"  # back to the preferred reader


def test_a_lagging_reader_is_passed_over_and_taken_back(roles: Any) -> None:
    dbase, _, made, _ = roles
    r1 = parse_host("10.0.0.1")
    assert dbase.run_sync(host_of) == "10.0.0.1"
    dbase.hosts.set_lag(r1, 120.0)
    assert dbase.run_sync(host_of) == "10.0.0.2"
    assert made[0].closed  # its idle connection was dropped, not reused
    dbase.hosts.set_lag(parse_host("10.0.0.2"), 500.0)
    assert dbase.run_sync(host_of) == "10.0.0.1"  # none within bound: the least lagged
    dbase.hosts.set_lag(r1, 0.0)
    dbase.hosts.set_lag(parse_host("10.0.0.2"), 0.0)
    assert dbase.run_sync(host_of) == "10.0.0.1"


def test_two_roles_stay_within_pool_size(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[HostRaw] = []

    def connect(host: str, **_: Any) -> HostRaw:
        made.append(HostRaw(host))
        return made[-1]

    monkeypatch.setattr(dbconn.pymysql, "connect", connect)
    dbase = db.Database(config.parse(ROLES.replace("pool_size = 4", "pool_size = 1")).database)
    try:
        for _ in range(3):
            dbase.run_sync(host_of)
            dbase.run_sync(host_of, write=True)
            assert dbase._open == 1
    finally:
        dbase.close()
    assert all(r.closed for r in made)


def test_wait_for_gtid_on_a_replica_and_not_on_a_writer(roles: Any) -> None:
    dbase, _, made, _ = roles
    assert asyncio.run(dbase.wait_for_gtid("0-1-42", 1.0)) is True
    waits = [p for s, p in made[-1].statements if "MASTER_GTID_WAIT" in s]
    assert waits == [("0-1-42", 1.0)]
    HostRaw.gtid_result = -1
    try:
        reached, value = asyncio.run(dbase.run_at_gtid("0-1-43", 99.0, host_of))
    finally:
        HostRaw.gtid_result = 0
    assert (reached, value) == (False, "10.0.0.1")
    # Kept below query_timeout (2 s by default): the server would abandon the statement.
    assert [p for s, p in made[-1].statements if "MASTER_GTID_WAIT" in s][-1][1] < 2.0


def test_wait_for_gtid_is_skipped_on_a_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[HostRaw] = []

    def connect(host: str, **_: Any) -> HostRaw:
        made.append(HostRaw(host))
        return made[-1]

    monkeypatch.setattr(dbconn.pymysql, "connect", connect)
    dbase = db.Database(
        config.parse("[database]\nhosts = 10.0.0.9\nuser = u\ndbname = d\n").database
    )
    try:
        assert asyncio.run(dbase.wait_for_gtid("0-1-42", 1.0)) is True
    finally:
        dbase.close()
    assert not any("MASTER_GTID_WAIT" in s for s, _ in made[0].statements)


def parse_host(text: str) -> DatabaseHost:
    return parse_db_host(text)
