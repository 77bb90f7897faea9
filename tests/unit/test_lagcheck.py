"""lagcheck.LagCheck against fake servers: the heartbeat on the writer, each replica's lag
as the writer's beat minus the one it has applied, and what happens when a host is down
or the table is missing."""

from __future__ import annotations

import logging
from typing import Any

import pymysql
import pytest

from vmaild import config, lagcheck
from vmaild.db import Database
from vmaild.metrics import Metrics
from vmaild.values import DatabaseHost, parse_db_host

W, R1, R2 = (parse_db_host(h) for h in ("10.0.0.9", "10.0.0.1", "10.0.0.2"))
CONF = """[database]
hosts = 10.0.0.1 10.0.0.2
write_hosts = 10.0.0.9
user = u
dbname = d
max_lag = 30
"""


class Server:
    def __init__(self) -> None:
        self.beats: dict[str, float] = {}
        self.up = True
        self.error: int | None = None  # a server error for every statement


class Cursor:
    def __init__(self, server: Server, clock: list[float]) -> None:
        self.server, self.clock = server, clock
        self.rows: list[tuple[Any, ...]] = []

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: tuple[str]) -> None:
        if not self.server.up:
            raise pymysql.err.OperationalError(2013, "Lost connection")
        if self.server.error is not None:
            raise pymysql.err.ProgrammingError(self.server.error, "Table doesn't exist")
        (name,) = params
        if sql == lagcheck.BEAT_SQL:
            self.server.beats[name] = self.clock[0]
        else:
            beat = self.server.beats.get(name)
            self.rows = [(beat,)] if beat is not None else []

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows


class Conn:
    def __init__(self, server: Server, clock: list[float]) -> None:
        self.server, self.clock = server, clock

    def cursor(self) -> Cursor:
        return Cursor(self.server, self.clock)

    def close(self) -> None:
        pass


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Any:
    servers = {W: Server(), R1: Server(), R2: Server()}
    clock = [1000.0]

    def connect(cfg: Any, host: DatabaseHost) -> Conn:
        if not servers[host].up:
            raise pymysql.err.OperationalError(2003, "Can't connect")
        return Conn(servers[host], clock)

    monkeypatch.setattr(lagcheck, "connect", connect)
    cfg = config.parse(CONF).database
    database = Database(cfg)
    metrics = Metrics()
    check = lagcheck.LagCheck(cfg, database.hosts, "mx1:/etc/vmaild/vmaild.conf", metrics)
    yield check, servers, clock, database, metrics
    check.close()
    database.close()


def replicate(servers: dict[DatabaseHost, Server], *replicas: DatabaseHost) -> None:
    for r in replicas:
        servers[r].beats.update(servers[W].beats)


def lag_metric(metrics: Metrics, host: DatabaseHost) -> float | None:
    return metrics.registry.get_sample_value("vmaild_db_replica_lag_seconds", {"host": str(host)})


def test_healthy_replicas_have_no_lag(world: Any) -> None:
    check, servers, clock, database, metrics = world
    assert check.check_once() == {R1: None, R2: None}  # no beat yet anywhere
    for _ in range(3):
        replicate(servers, R1, R2)
        clock[0] += 2
        assert check.check_once() == {R1: 0.0, R2: 0.0}
    assert lag_metric(metrics, R1) == 0.0
    assert database.hosts.preferred() == R1


def test_a_replica_that_stopped_applying_lags_and_is_passed_over(world: Any) -> None:
    check, servers, clock, database, metrics = world
    check.check_once()
    for _ in range(30):  # R1 stops applying; one round every 2 s for a minute
        replicate(servers, R2)
        clock[0] += 2
        lags = check.check_once()
    assert lags[R2] == 0.0
    assert lags[R1] == pytest.approx(58.0)  # one interval of resolution
    assert lag_metric(metrics, R1) == pytest.approx(58.0)
    assert database.hosts.order() == [R2, R1]
    replicate(servers, R1)  # it catches up
    clock[0] += 2
    assert check.check_once()[R1] == 0.0
    assert database.hosts.preferred() == R1


def test_with_the_writer_down_replicas_that_have_everything_are_not_lagged(
    world: Any,
) -> None:
    check, servers, clock, database, _ = world
    check.check_once()
    replicate(servers, R1, R2)
    clock[0] += 2
    check.check_once()  # both have the writer's beat; R2 stops applying now
    replicate(servers, R1)
    clock[0] += 2
    check.check_once()
    servers[W].up = False
    for _ in range(10):
        clock[0] += 2
        lags = check.check_once()
    assert lags == {R1: 0.0, R2: 2.0}  # frozen at what the writer had
    assert database.hosts.is_down(W)
    assert database.hosts.preferred() == R1


def test_a_missing_table_leaves_lag_unknown_and_the_host_up(
    world: Any, caplog: pytest.LogCaptureFixture
) -> None:
    check, servers, clock, database, metrics = world
    for server in servers.values():
        server.error = 1146
    with caplog.at_level(logging.WARNING, "vmaild.db"):
        for _ in range(3):
            clock[0] += 2
            assert check.check_once() == {R1: None, R2: None}
    assert not any(database.hosts.is_down(h) for h in servers)
    assert lag_metric(metrics, R1) is None
    said = [r for r in caplog.records if "not measured" in r.getMessage()]
    # Once, not once per round; without the writer's beat the replicas are not asked.
    assert len(said) == 1 and "10.0.0.9" in said[0].getMessage()


def test_a_replica_down_is_marked_down(world: Any) -> None:
    check, servers, clock, database, _ = world
    check.check_once()
    servers[R1].up = False
    clock[0] += 2
    assert check.check_once()[R1] is None
    assert database.hosts.order() == [R2, R1]


def test_the_row_is_this_vmaild_s() -> None:
    name = lagcheck.default_name("/etc/vmaild/vmaild.conf")
    assert name.endswith(":/etc/vmaild/vmaild.conf") and len(name) <= 255


@pytest.mark.parametrize(
    ("extra", "built"),
    [
        ("", True),
        ("lag_check_interval = 0\n", False),
        ("write_hosts = 10.0.0.1 10.0.0.2\n", False),  # reads and writes on the same hosts
    ],
)
def test_the_daemon_checks_lag_only_with_replicas(extra: str, built: bool) -> None:
    from vmaild.runtime import Runtime

    text = CONF.replace(
        "write_hosts = 10.0.0.9\n", "" if "write_hosts" in extra else "write_hosts = 10.0.0.9\n"
    )
    rt = Runtime.build(config.parse(text + extra), Metrics())
    try:
        assert (rt.lag is not None) == built
    finally:
        rt.close()
