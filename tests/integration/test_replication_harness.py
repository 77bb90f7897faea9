"""harness.mariadb.replication: a primary and two GTID replicas on loopback, and its
faults (kill -9 and revive, SQL thread stopped, a replica down), checked by what each
server holds and its GTID position, never by waiting a while."""

from __future__ import annotations

from collections.abc import Iterator

import pymysql
import pytest

from harness.common.procs import pid_alive
from harness.mariadb.replication import Replication
from harness.mariadb.server import MariaDB
from tests.integration.conftest import require

DB = "repl_check"


@pytest.fixture(scope="module")
def topology() -> Iterator[Replication]:
    require(MariaDB.missing_requirements(), "MariaDB")
    with Replication(replicas=2) as topo:
        topo.primary.query(f"CREATE DATABASE {DB}")
        topo.primary.query(f"CREATE TABLE {DB}.t (id INT PRIMARY KEY, v TEXT)")
        topo.sync()
        yield topo


def rows(server: MariaDB) -> list[tuple[object, ...]]:
    return server.query(f"SELECT id, v FROM {DB}.t ORDER BY id")


def insert(topo: Replication, n: int) -> str:
    topo.primary.query(f"INSERT INTO {DB}.t VALUES (%s, %s)", (n, f"row {n}"))
    return topo.gtid_position(topo.primary)


def test_the_topology_replicates_by_gtid(topology: Replication) -> None:
    ports = {s.port for s in topology.servers}
    assert len(ports) == 3
    assert len({s.datadir for s in topology.servers}) == 3
    server_ids = {s.query("SELECT @@server_id")[0][0] for s in topology.servers}
    assert server_ids == {1, 2, 3}
    for replica in topology.replicas:
        status = topology.status(replica)
        assert status["Using_Gtid"] == "Slave_Pos"
        assert replica.query("SELECT @@read_only, @@gtid_strict_mode")[0] == (1, 1)
    gtid = insert(topology, 1)
    assert topology.sync() == gtid
    for replica in topology.replicas:
        assert (1, "row 1") in rows(replica)
        assert topology.gtid_position(replica) == gtid
    assert set(topology.positions()) == {"primary", "replica1", "replica2"}


def test_a_stopped_sql_thread_lags_until_started(topology: Replication) -> None:
    lagging, other = topology.replicas
    topology.stop_sql_thread(lagging)
    try:
        gtid = insert(topology, 2)
        topology.wait_applied(other, gtid)
        assert (2, "row 2") in rows(other)
        with pytest.raises(TimeoutError):
            topology.wait_applied(lagging, gtid, timeout=0.2)
        assert (2, "row 2") not in rows(lagging)
    finally:
        topology.start_sql_thread(lagging)
    topology.wait_applied(lagging, gtid)
    assert (2, "row 2") in rows(lagging)


def test_a_killed_primary_comes_back_and_replicas_follow(topology: Replication) -> None:
    before = insert(topology, 3)
    topology.sync()
    pid = topology.primary.pid
    assert pid is not None
    topology.kill(topology.primary)
    assert not pid_alive(pid) and not topology.primary.running
    for replica in topology.replicas:  # replicas still answer reads
        assert (3, "row 3") in rows(replica)
    port = topology.primary.port
    topology.revive(topology.primary)
    assert topology.primary.port == port
    assert topology.gtid_position(topology.primary) == before  # nothing lost (sync_binlog)
    gtid = insert(topology, 4)
    assert topology.sync() == gtid  # the replicas reconnected by themselves
    for replica in topology.replicas:
        assert (4, "row 4") in rows(replica)


def test_a_killed_replica_catches_up_after_revive(topology: Replication) -> None:
    victim = topology.replicas[1]
    topology.kill(victim)
    with pytest.raises(pymysql.err.OperationalError):
        victim.root_conn()
    gtid = insert(topology, 5)
    topology.wait_applied(topology.replicas[0], gtid)
    topology.revive(victim)
    topology.wait_applied(victim, gtid)
    assert (5, "row 5") in rows(victim)


def test_a_replica_shut_down_cleanly_resumes_where_it_stopped(topology: Replication) -> None:
    victim = topology.replicas[0]
    topology.shutdown(victim)
    assert not victim.running
    gtid = insert(topology, 6)
    topology.revive(victim)
    topology.wait_applied(victim, gtid)
    assert (6, "row 6") in rows(victim)
    assert topology.positions()["replica1"] == gtid


def test_writes_on_a_replica_are_refused_for_ordinary_users(topology: Replication) -> None:
    topology.create_database("repl_users", "vm", "secret")
    conn = topology.replicas[0].connect("vm", "secret", "repl_users")
    try:
        with conn.cursor() as cur, pytest.raises(pymysql.err.OperationalError) as caught:
            cur.execute("CREATE TABLE x (id INT)")
        assert caught.value.args[0] == 1290  # --read-only
    finally:
        conn.close()
