"""A MariaDB primary and N GTID replicas on loopback, for several-host tests.

Each server is a :class:`harness.mariadb.server.MariaDB` (its own data directory, run
directory, free port, own process group), started with its own ``server_id``, a binary
log and ``gtid_strict_mode``; each replica follows the primary with
``MASTER_USE_GTID=slave_pos``, is ``read_only`` (as replicas are in production: a write
sent to one by mistake fails instead of forking the data) and logs what it applies
(``log_slave_updates``), so that any replica could be promoted.

Readiness is checked, never slept for: :meth:`Replication.start` returns once every
replica's I/O and SQL threads run and it has applied everything the primary has.

Faults, for the failover tests and the fault-injection run:

* :meth:`kill` (SIGKILL) and :meth:`revive` (start again, same datadir and port) of any
  server; a killed primary keeps what it committed (``sync_binlog=1``,
  ``innodb_flush_log_at_trx_commit=1``), so replicas resume from it in strict mode;
* :meth:`stop_sql_thread`/:meth:`start_sql_thread`: a replica that receives but does not
  apply (lag that grows for as long as you like);
* :meth:`shutdown` one server cleanly (:meth:`revive` starts it again);
* :meth:`gtid_position` of each server, :meth:`wait_applied` (MASTER_GTID_WAIT) and
  :meth:`sync` (every running replica has the primary's position).

Replicas reconnect to a primary that comes back by themselves (``MASTER_CONNECT_RETRY``
1 s). Use it as a context manager; every process is stopped by PID at exit.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from harness.common.service import Service
from harness.common.wait import wait_until
from harness.mariadb.server import MariaDB

REPL_USER = "repl"

# Every server: its binary log in its datadir, GTIDs checked strictly, crash-safe commits
# (a kill -9 of the primary loses nothing a replica may already have), row events.
_COMMON_ARGS = (
    "--log-bin=mariadb-bin",
    "--gtid-strict-mode=1",
    "--binlog-format=ROW",
    "--sync-binlog=1",
    "--innodb-flush-log-at-trx-commit=1",
    "--log-slave-updates=1",
    "--innodb-buffer-pool-size=32M",
    # vmailctl db migrate creates triggers as the vmaild user; with a binary log that needs
    # SUPER unless the administrator sets this (vmailctl says so when it is missing).
    "--log-bin-trust-function-creators=1",
)
_REPLICA_ARGS = ("--read-only=1", "--relay-log=relay-bin", "--relay-log-recovery=1")


class Replication(Service):
    """One primary (server_id 1) and ``replicas`` GTID replicas (server_id 2, 3, ...)."""

    def __init__(
        self,
        replicas: int = 2,
        basedir: str | os.PathLike[str] | None = None,
        *,
        start_timeout: float = 60.0,
    ) -> None:
        if replicas < 1:
            raise ValueError("a replication topology needs at least one replica")
        self._owns_basedir = basedir is None
        self.basedir = (
            Path(basedir) if basedir else Path(tempfile.mkdtemp(prefix="vmaild-replication-"))
        )
        os.chmod(self.basedir, 0o755)  # mariadbd (user mysql) traverses it
        self.start_timeout = start_timeout
        self.repl_password = secrets.token_hex(12)
        self.primary = MariaDB(
            self.basedir / "primary",
            extra_args=("--server-id=1", *_COMMON_ARGS),
            start_timeout=start_timeout,
        )
        self.replicas = [
            MariaDB(
                self.basedir / f"replica{i}",
                extra_args=(f"--server-id={i + 1}", *_COMMON_ARGS, *_REPLICA_ARGS),
                start_timeout=start_timeout,
            )
            for i in range(1, replicas + 1)
        ]
        for server in self.servers:
            server.basedir.mkdir(parents=True, exist_ok=True)
        self._configured: set[int] = set()  # replicas told about the primary (their port)

    @property
    def servers(self) -> list[MariaDB]:
        return [self.primary, *self.replicas]

    def name(self, server: MariaDB) -> str:
        return "primary" if server is self.primary else f"replica{self.replicas.index(server) + 1}"

    # ----------------------------------------------------------------- life
    def start(self) -> Self:
        """Start every server that is not running, set replication up on replicas that
        never had it, and wait until all replicas run and have the primary's position."""
        if not self.primary.running:
            self.primary.start()
        self.primary.query(
            "CREATE USER IF NOT EXISTS %s@'127.0.0.1' IDENTIFIED BY %s",
            (REPL_USER, self.repl_password),
        )
        self.primary.query("GRANT REPLICATION SLAVE ON *.* TO %s@'127.0.0.1'", (REPL_USER,))
        for replica in self.replicas:
            if not replica.running:
                replica.start()
            if replica.port not in self._configured:
                self._follow(replica)
        self.sync()
        return self

    def _follow(self, replica: MariaDB) -> None:
        replica.query("STOP SLAVE")
        replica.query(
            "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = %s, "
            "MASTER_USER = %s, MASTER_PASSWORD = %s, MASTER_CONNECT_RETRY = 1, "
            "MASTER_USE_GTID = slave_pos",
            (self.primary.port, REPL_USER, self.repl_password),
        )
        replica.query("START SLAVE")
        self._configured.add(replica.port)
        self.wait_running(replica)

    def stop(self) -> None:
        """Stop every server (replicas first, so none logs a lost primary at exit)."""
        for server in [*self.replicas, self.primary]:
            server.stop()

    def cleanup(self) -> None:
        self.stop()
        for server in self.servers:
            server.cleanup()
        if self._owns_basedir:
            shutil.rmtree(self.basedir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ---------------------------------------------------------------- faults
    def kill(self, server: MariaDB) -> None:
        """SIGKILL the server (a crash); :meth:`revive` brings it back."""
        server.kill()

    def shutdown(self, server: MariaDB) -> None:
        """Stop the server cleanly (SIGTERM, wait for its exit); :meth:`revive` restarts it."""
        server.stop()

    def revive(self, server: MariaDB) -> None:
        """Start a killed or stopped server again on its datadir and port; for a replica,
        wait until it replicates again (the primary must be up for that)."""
        server.start()
        if server is not self.primary and self.primary.running:
            self.wait_running(server)

    def stop_sql_thread(self, replica: MariaDB) -> None:
        """The replica keeps receiving events but applies none: it lags from now on."""
        replica.query("STOP SLAVE SQL_THREAD")
        wait_until(
            lambda: self.status(replica).get("Slave_SQL_Running") == "No",
            self.start_timeout,
            f"{self.name(replica)} SQL thread to stop",
        )

    def start_sql_thread(self, replica: MariaDB) -> None:
        replica.query("START SLAVE SQL_THREAD")
        wait_until(
            lambda: self.status(replica).get("Slave_SQL_Running") == "Yes",
            self.start_timeout,
            f"{self.name(replica)} SQL thread to run",
        )

    # ------------------------------------------------------------- positions
    def status(self, replica: MariaDB) -> dict[str, Any]:
        """SHOW SLAVE STATUS as a dict (empty when the server is not a replica)."""
        conn = replica.root_conn()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW SLAVE STATUS")
                row = cur.fetchone()
                names = [d[0] for d in cur.description or ()]
        finally:
            conn.close()
        return dict(zip(names, row, strict=True)) if row else {}

    def gtid_position(self, server: MariaDB) -> str:
        """What the server has: the primary's binlog position, a replica's applied
        position (``gtid_slave_pos``)."""
        var = "gtid_binlog_pos" if server is self.primary else "gtid_slave_pos"
        return str(server.query(f"SELECT @@GLOBAL.{var}")[0][0])

    def positions(self) -> dict[str, str]:
        """Every running server's position, by name."""
        return {self.name(s): self.gtid_position(s) for s in self.servers if s.running}

    def wait_applied(self, replica: MariaDB, gtid: str, timeout: float = 30.0) -> None:
        """Block until the replica has applied ``gtid`` (a GTID list); raise otherwise."""
        if not gtid:
            return
        result = replica.query("SELECT MASTER_GTID_WAIT(%s, %s)", (gtid, timeout))[0][0]
        if result != 0:
            raise TimeoutError(
                f"{self.name(replica)} did not apply {gtid} within {timeout:g}s "
                f"(it has {self.gtid_position(replica)!r}; status {self._brief(replica)})"
            )

    def sync(self, timeout: float | None = None, replicas: Sequence[MariaDB] | None = None) -> str:
        """Wait until every running replica (or those given) whose SQL thread runs has
        the primary's current position; returns that position."""
        gtid = self.gtid_position(self.primary)
        for replica in replicas if replicas is not None else self.replicas:
            if replica.running:
                self.wait_applied(replica, gtid, timeout or self.start_timeout)
        return gtid

    def wait_running(self, replica: MariaDB) -> None:
        """Block until both replication threads of the replica run."""
        wait_until(
            lambda: (
                (st := self.status(replica)).get("Slave_IO_Running") == "Yes"
                and st.get("Slave_SQL_Running") == "Yes"
            ),
            self.start_timeout,
            f"{self.name(replica)} to replicate",
            interval=0.05,
            abort=lambda: self._broken(replica),
        )

    def _broken(self, replica: MariaDB) -> str | None:
        st = self.status(replica)
        error = st.get("Last_SQL_Error") or ""
        stopped = st.get("Slave_SQL_Running") == "No"
        return f"replication stopped: {error}" if stopped and error else None

    def _brief(self, replica: MariaDB) -> str:
        st = self.status(replica)
        keys = ("Slave_IO_Running", "Slave_SQL_Running", "Last_IO_Error", "Last_SQL_Error")
        return ", ".join(f"{k}={st.get(k)!r}" for k in keys)

    # ------------------------------------------------------------- databases
    def create_database(self, name: str, user: str, password: str) -> None:
        """The database and its user, made on the primary and replicated to all."""
        self.primary.create_database(name, user, password)
        self.sync()

    def __repr__(self) -> str:
        names = ", ".join(f"{self.name(s)}={s.port}" for s in self.servers)
        return f"<Replication {names}>"
