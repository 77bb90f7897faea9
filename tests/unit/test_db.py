"""db.Database's verdicts on errors, with pymysql.connect replaced: a statement that does not
fit the schema leaves the host up and the connection pooled; a lost connection does not."""

from __future__ import annotations

from typing import Any

import pymysql
import pytest

from vmaild import config, db
from vmaild.metrics import Metrics

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

    monkeypatch.setattr(db.pymysql, "connect", connect)
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
