"""vmaild on a MariaDB primary and two GTID replicas (harness.mariadb.replication): reads
from the replicas in order, writes on the primary, and the faults of issue 14 item 5.

One vmaild reads ``hosts = replica1 replica2`` and writes ``write_hosts = primary``, with
every cache off (``ttl``/``stale_ttl``/``login_cache_ttl`` 0), so that each answer below
came from a database that answered then. A prober thread asks the tcp: mailboxes map for
every seeded mailbox all along; no test may leave a "not found" (500) among its answers.

Faults: the primary killed (-9) and revived; a replica killed and revived; a replica's SQL
thread stopped beyond ``max_lag``. Each is undone in ``finally`` and the topology synced
before the next test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.common.ports import free_port
from harness.common.tempdir import shared_tempdir
from harness.common.wait import wait_until
from harness.mariadb.replication import Replication
from harness.mariadb.server import MariaDB
from harness.stack.hostload import auth_login, policy_action
from harness.stack.seed import SEED_USERS, load_seed
from harness.vmaild.server import Vmaild, config_text, seed_ports
from tests.integration.conftest import require
from vmaild import config
from vmaild.db import Database

MAX_LAG = 3.0
MAILBOXES = {e: f"{e.split('@')[1]}/{e.split('@')[0]}/" for e in SEED_USERS}


class Prober(threading.Thread):
    """Asks the tcp: mailboxes map for each seeded mailbox, over and over, and counts
    the answers by kind: found (the right value), wrong, 4xx, 5xx."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.counts: Counter[str] = Counter()
        self.bad: list[tuple[str, str]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    f = s.makefile("rb")
                    while not self._stop_event.is_set():
                        for key, value in MAILBOXES.items():
                            s.sendall(f"get {key}\n".encode())
                            self._count(key, value, f.readline().decode().rstrip("\n"))
                        self._stop_event.wait(0.02)
            except OSError as e:
                self.counts["connection"] += 1
                self.bad.append(("-", str(e)))

    def _count(self, key: str, value: str, line: str) -> None:
        kind = "found" if line == f"200 {value}" else line[:1] + "xx" if line else "closed"
        if kind == "found":
            self.counts["found"] += 1
            return
        self.counts[kind] += 1
        self.bad.append((key, line))

    def take(self) -> Counter[str]:
        """The counts so far, reset."""
        counts, self.counts = self.counts, Counter()
        return counts

    def stop(self) -> None:
        self._stop_event.set()
        self.join(15)


@dataclass
class Setup:
    topo: Replication
    vmaild: Vmaild
    dbname: str
    ports: dict[str, int]
    metrics_port: int
    policy_port: int
    auth_socket: Path
    prober: Prober

    @property
    def primary(self) -> MariaDB:
        return self.topo.primary

    def host(self, server: MariaDB) -> str:
        return f"127.0.0.1:{server.port}"

    def metric(self, name: str, host: MariaDB) -> float | None:
        text = self.vmaild.metrics_text(self.metrics_port)
        m = re.search(rf'^{name}\{{host="{self.host(host)}"\}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else None

    def reading_from(self, server: MariaDB) -> bool:
        return self.metric("vmaild_db_read_host", server) == 1.0

    def lookup(self, key: str) -> str:
        with socket.create_connection(("127.0.0.1", self.ports["mailboxes"]), timeout=10) as s:
            s.sendall(f"get {key}\n".encode())
            return s.makefile("rb").readline().decode().rstrip("\n")

    def login(self, user: str, password: str) -> str:
        """An IMAP login on vmaild's auth socket: ok, fail or tempfail."""
        return auth_login(self.auth_socket, user, password)[0]

    def policy(self, login: str, sender: str, recipient: str) -> str:
        """One RCPT-time policy request of an authenticated session; the action."""
        request = {
            "request": "smtpd_access_policy",
            "protocol_state": "RCPT",
            "protocol_name": "ESMTP",
            "client_address": "192.0.2.10",
            "sasl_username": login,
            "sender": sender,
            "recipient": recipient,
            "recipient_count": "0",
            "instance": f"{login}-{recipient}",
        }
        return policy_action(self.policy_port, request)

    def vmailctl(self, *args: str, stdin: str = "") -> str:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "vmailctl"), "-c", str(self.vmaild.config_path)]
            + list(args),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def stored(self, server: MariaDB, address: str) -> str:
        rows = server.query(
            "SELECT password FROM users WHERE email = %s", (address,), database=self.dbname
        )
        return str(rows[0][0])

    def add_des_user(self, address: str, password: str) -> None:
        """A user with the seed's ENCRYPT() hash (des_crypt: a login rehashes it)."""
        self.primary.query(
            "INSERT INTO users (email, password) VALUES (%s, ENCRYPT(%s))",
            (address, password),
            database=self.dbname,
        )
        self.topo.sync()

    def heal(self) -> None:
        """Every server up and replicating, every replica caught up."""
        for server in self.topo.servers:
            if not server.running:
                self.topo.revive(server)
        for replica in self.topo.replicas:
            if self.topo.status(replica).get("Slave_SQL_Running") != "Yes":
                self.topo.start_sql_thread(replica)
            self.topo.wait_running(replica)
        self.topo.sync()


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    require(MariaDB.missing_requirements(), "MariaDB")
    tmp = shared_tempdir("vmaild-repl-")
    topo = Replication(replicas=2)
    vmaild = None
    prober = None
    try:
        topo.start()
        seed = load_seed(topo.primary)
        r1, r2 = topo.replicas
        ports, metrics_port, policy_port = seed_ports(), free_port(), free_port()
        sock = tmp / "run" / "auth.sock"
        conf = config_text(
            db_port=topo.primary.port,
            db_hosts=f"127.0.0.1:{r1.port} 127.0.0.1:{r2.port}",
            database=(
                f"write_hosts = 127.0.0.1:{topo.primary.port}\n"
                f"max_lag = {MAX_LAG}\nlag_check_interval = 0.5"
            ),
            dbname=seed.dbname,
            user=seed.user,
            password=seed.password,
            ports=ports,
            metrics_port=metrics_port,
            cache="ttl = 0\nnegative_ttl = 0\nstale_ttl = 0",
            extra=(
                f"[auth]\nlisten = unix:{sock}\npassword_rounds = 5000\nlogin_cache_ttl = 0\n"
                f"[mailbox]\nbase = {tmp / 'vmail'}\n"
                f"[policy]\nlisten = 127.0.0.1:{policy_port}\nratelimit_count_state = RCPT\n"
            ),
        )
        vmaild = Vmaild(conf, tmp / "vmaild")
        vmaild.migrate()  # vmailctl: on write_hosts
        topo.sync()
        vmaild.start()
        prober = Prober(ports["mailboxes"])
        prober.start()
        s = Setup(topo, vmaild, seed.dbname, ports, metrics_port, policy_port, sock, prober)
        wait_until(lambda: s.reading_from(r1), 30, "vmaild to read from replica1")
        yield s
    finally:
        if prober is not None:
            prober.stop()
        if vmaild is not None:
            vmaild.stop()
        topo.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def phase(setup: Setup, request: pytest.FixtureRequest) -> Iterator[Setup]:
    """One test: the topology healed after it, and no 5xx for an existing mailbox in it.
    The answers by kind are printed (pytest -s) as the phase's figures."""
    setup.prober.take()
    try:
        yield setup
    finally:
        setup.heal()
    counts = setup.prober.take()
    print(f"\n{request.node.name}: mailbox lookups {dict(counts)}")
    assert counts["found"] > 0, counts
    assert "Traceback" not in setup.vmaild.log()
    assert counts["5xx"] == 0, (counts, setup.prober.bad[-5:])


def test_reads_come_from_the_first_replica_and_writes_land_on_the_primary(phase: Setup) -> None:
    s = phase
    r1, r2 = s.topo.replicas
    assert s.reading_from(r1) and not s.reading_from(r2)
    # The heartbeat row and the migrated schema were written on the primary, replicated.
    beats = s.primary.query("SELECT COUNT(*) FROM vmaild_heartbeat", database=s.dbname)
    assert beats[0][0] == 1
    lag = s.metric("vmaild_db_replica_lag_seconds", r1)
    assert lag is not None and lag <= MAX_LAG
    # A login rehashes the seed's DES hash: the UPDATE goes to the primary (the replicas
    # are read_only: it could not have landed there) and replicates.
    assert s.login("sales@raecoo.com", "password") == "ok"
    wait_until(lambda: s.stored(s.primary, "sales@raecoo.com").startswith("$6$"), 30, "the rehash")
    s.topo.sync()
    for replica in s.topo.replicas:
        assert s.stored(replica, "sales@raecoo.com") == s.stored(s.primary, "sales@raecoo.com")
    # vmailctl writes on write_hosts too; the new mailbox is then read from replica1.
    s.vmailctl("user", "add", "dave@example.test", "--password-stdin", stdin="dave-pw\n")
    assert s.stored(s.primary, "dave@example.test").startswith("$6$")
    s.topo.sync()
    assert s.lookup("dave@example.test") == "200 example.test/dave/"
    # The sending counter of a policy request is written on the primary.
    assert s.policy("alice@example.test", "alice@example.test", "bob@example.test") == "DUNNO"
    counted = s.primary.query(
        "SELECT SUM(recipients) FROM send_counters WHERE login = %s",
        ("alice@example.test",),
        database=s.dbname,
    )
    assert counted[0][0] >= 1


def test_with_the_primary_killed_lookups_and_logins_go_on_and_the_rehash_waits(
    phase: Setup,
) -> None:
    s = phase
    s.add_des_user("carol@example.test", "carol-pw")
    des = s.stored(s.primary, "carol@example.test")
    s.topo.kill(s.primary)
    assert s.lookup("alice@example.test") == "200 example.test/alice/"
    assert s.lookup("nobody@example.test").startswith("500")  # still a real "not found"
    # The login is answered from replica1; its rehash cannot be stored (the writer is
    # down) and waits: the login succeeds all the same, every time.
    for _ in range(3):
        assert s.login("carol@example.test", "carol-pw") == "ok"
    assert s.login("carol@example.test", "wrong") == "fail"
    # Policy reads go on from the replica (a failed sender check would answer its fail
    # action, DEFER_IF_PERMIT); the sending counter cannot be written and fails open.
    assert s.policy("alice@example.test", "alice@example.test", "bob@example.test") == "DUNNO"
    assert s.policy("alice@example.test", "bob@example.test", "carol@example.test").startswith(
        "553"
    )
    wait_until(lambda: "counting failed" in s.vmaild.log(), 30, "the counter to fail open")
    for replica in s.topo.replicas:
        assert s.stored(replica, "carol@example.test") == des
    wait_until(
        lambda: "rehash for carol@example.test failed" in s.vmaild.log(), 30, "the rehash to fail"
    )
    s.topo.revive(s.primary)
    s.topo.sync()
    # The writer is back: the next login stores the new hash.
    wait_until(
        lambda: (
            s.login("carol@example.test", "carol-pw") == "ok"
            and s.stored(s.primary, "carol@example.test").startswith("$6$")
        ),
        30,
        "the rehash once the primary is back",
        interval=0.2,
    )


def test_a_killed_replica_moves_reads_to_the_next_and_back(phase: Setup) -> None:
    s = phase
    r1, r2 = s.topo.replicas
    s.topo.kill(r1)
    # The next lookup that reaches the database finds replica1 gone and is answered
    # from replica2 (a read is retried once on a fresh connection).
    assert s.lookup("bob@example.test") == "200 example.test/bob/"
    wait_until(lambda: s.reading_from(r2), 10, "reads to move to replica2")
    assert s.login("alice@example.test", "alice-pw1") == "ok"
    s.topo.revive(r1)
    # retry_interval (1 s) after the failure, new connections go back to replica1.
    wait_until(
        lambda: s.lookup("bob@example.test") and s.reading_from(r1),
        30,
        "reads to return to replica1",
        interval=0.1,
    )


def test_a_replica_beyond_max_lag_is_passed_over_and_shown(phase: Setup) -> None:
    s = phase
    r1, r2 = s.topo.replicas
    s.topo.stop_sql_thread(r1)

    def lagging() -> bool:
        lag = s.metric("vmaild_db_replica_lag_seconds", r1)
        return lag is not None and lag > MAX_LAG and s.reading_from(r2)

    wait_until(lagging, 30, "replica1's lag over max_lag, reads on replica2", interval=0.2)
    assert (s.metric("vmaild_db_replica_lag_seconds", r2) or 0.0) <= MAX_LAG
    assert s.lookup("alice@example.test") == "200 example.test/alice/"
    assert "behind the writer" in s.vmaild.log()
    s.topo.start_sql_thread(r1)
    wait_until(
        lambda: (
            (s.metric("vmaild_db_replica_lag_seconds", r1) or 0.0) <= MAX_LAG
            and s.lookup("alice@example.test")
            and s.reading_from(r1)
        ),
        30,
        "replica1 caught up and read from again",
        interval=0.2,
    )


def test_wait_for_gtid_waits_for_the_read_host(phase: Setup) -> None:
    """Database.wait_for_gtid/run_at_gtid (read-your-writes after a change): on a replica
    that has not applied the GTID it times out, once applied the read sees the change."""
    s = phase
    r1 = s.topo.replicas[0]
    cfg = config.load(str(s.vmaild.config_path)).database
    database = Database(cfg)

    def count(conn: Any) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM users WHERE email = 'erin@example.test'")
            return int(cur.fetchone()[0])

    try:
        assert asyncio.run(database.run(count)) == 0
        s.topo.stop_sql_thread(r1)
        s.primary.query(
            "INSERT INTO users (email, password) VALUES ('erin@example.test', 'x')",
            database=s.dbname,
        )
        gtid = s.topo.gtid_position(s.primary)
        assert asyncio.run(database.run_at_gtid(gtid, 0.3, count)) == (False, 0)
        s.topo.start_sql_thread(r1)
        assert asyncio.run(database.run_at_gtid(gtid, 1.5, count)) == (True, 1)
        assert str(database.read_host) == s.host(r1)
    finally:
        database.close()
    writer = Database(dataclasses.replace(cfg, hosts=cfg.writers))
    try:  # on the writer there is nothing to wait for
        assert asyncio.run(writer.wait_for_gtid(gtid, 1.0)) is True
    finally:
        writer.close()
