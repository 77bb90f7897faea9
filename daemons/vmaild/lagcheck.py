"""Replica lag, measured with no privilege beyond the vmaild user's own tables.

``SHOW SLAVE STATUS`` needs REPLICA MONITOR (or SUPER), which a mail daemon's user should
not have. Instead each vmaild writes a heartbeat, its own row of ``vmaild_heartbeat``
(``beat = NOW(6)``), on the writer every ``lag_check_interval`` seconds, and reads the
same row back on every read host. Rows replicate like any other: a read host that has the
beat the writer had at the start of this round is not behind; one whose beat is older is
behind by the difference.

Each round, in this order:

1. on the writer, read our row's beat ``W`` (written one round ago: a healthy replica
   has had a whole interval to apply it, so it does not look lagged merely because the
   round measured it a millisecond after writing);
2. on each read host that is not a writer, read our row's beat ``R``: lag = ``W - R``;
3. on the writer, write the next beat.

Both values are the writer's clock (the beat is replicated, not re-evaluated), so
servers' clocks need not agree. One row per vmaild (``name``: host name and configuration
file) keeps two daemons from overwriting each other's beat between steps 1 and 2. The
resolution is one interval: lag below it reads as 0.

With the writer down, ``W`` stays the last value read: replicas that have everything the
writer had are not lagged (there is nothing newer to have), one whose SQL thread stopped
before still is. Measurements go to ``HostState`` (which orders reads, dbhosts.py) and to
``vmaild_db_replica_lag_seconds``. A host that cannot be reached is marked down as a
failed query would; a missing table or grant is said once and leaves the lag unknown
(unknown lag never passes a host over).

Blocking work runs in one thread of its own with its own connections (one per host), so a
hung host delays the next round, never the pool's queries.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pymysql  # type: ignore[import-untyped]  # pymysql ships no type hints

from .db import SCHEMA_ERRNOS, errno_of
from .dbconn import connect
from .dbhosts import HostState
from .sections import DatabaseConfig
from .values import DatabaseHost

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("vmaild.db")

HEARTBEAT_TABLE = "vmaild_heartbeat"
READ_SQL = f"SELECT UNIX_TIMESTAMP(beat) FROM {HEARTBEAT_TABLE} WHERE host = %s"
BEAT_SQL = (
    f"INSERT INTO {HEARTBEAT_TABLE} (host, beat) VALUES (%s, NOW(6)) "
    "ON DUPLICATE KEY UPDATE beat = NOW(6)"
)
# Errors that say "not here": no such table yet, no grant (1142), a read-only server
# taken for a writer (1290). The host answered: not an outage.
_NOT_SET_UP = SCHEMA_ERRNOS | {1290}


def default_name(config_path: str) -> str:
    """The heartbeat row of this vmaild: its host name and configuration file."""
    return f"{socket.gethostname()}:{config_path}"[:255]


class LagCheck:
    def __init__(
        self,
        cfg: DatabaseConfig,
        hosts: HostState,
        name: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.hosts = hosts
        self.name = name
        self.metrics = metrics
        self.reference: float | None = None  # W: the writer's beat at the latest round
        self._first: float | None = None  # the first W seen
        self._missing = False  # the latest _read found the host without our row
        self._conns: dict[DatabaseHost, Any] = {}
        self._said: set[tuple[DatabaseHost, int | None]] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmaild-lag")
        self._closed = False

    @property
    def readers(self) -> list[DatabaseHost]:
        return [h for h in self.cfg.hosts if h not in self.cfg.writers]

    async def run(self) -> None:
        """Measure every ``lag_check_interval`` seconds until cancelled."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                await loop.run_in_executor(self._executor, self.check_once)
            except RuntimeError:  # the executor was shut down: this runtime is gone
                return
            except Exception:  # a bug here must not end lag checking without a word
                log.exception("lag check failed; trying again")
            await asyncio.sleep(self.cfg.lag_check_interval)

    def check_once(self) -> dict[DatabaseHost, float | None]:
        """One round (blocking): each read host's lag in seconds (None: unknown)."""
        writer = self._first_writer()
        if writer is not None:
            beat = self._read(writer)
            if beat is not None:
                self.reference = beat
                if self._first is None:
                    self._first = beat
        lags: dict[DatabaseHost, float | None] = {}
        for host in self.cfg.hosts:
            if host in self.cfg.writers:
                lags[host] = 0.0  # a writer has every write
                continue
            lags[host] = self._lag(host)
        if writer is not None:
            self._query(writer, BEAT_SQL, fetch=False)
        for host, lag in lags.items():
            self._publish(host, lag)
        return lags

    def _lag(self, host: DatabaseHost) -> float | None:
        if self.reference is None:
            return None
        beat, missing = self._read(host), self._missing
        if beat is not None:
            return max(0.0, self.reference - beat)
        if missing and self._first is not None:
            # The host answered but lacks our row: it has not applied even the first beat
            # this vmaild saw on the writer, so it is at least that far behind.
            return self.reference - self._first
        return None

    def close(self) -> None:
        """Stop measuring and close the connections (from a worker thread or at exit)."""
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            _close_quietly(conn)

    # -- one host --------------------------------------------------------------------------

    def _first_writer(self) -> DatabaseHost | None:
        """The writer to beat on: the first in write order that connects."""
        for host in self.hosts.order(write=True):
            if self._conn(host) is not None:
                return host
        return None

    def _read(self, host: DatabaseHost) -> float | None:
        """Our row's beat on ``host``; None with ``_missing`` set when the host answered
        without one (a first start, or a replica behind it), unset when it did not answer."""
        self._missing = False
        rows = self._query(host, READ_SQL, fetch=True, answered=True)
        if not rows or rows[0][0] is None:
            return None
        return float(rows[0][0])

    def _query(
        self, host: DatabaseHost, sql: str, *, fetch: bool, answered: bool = False
    ) -> list[tuple[Any, ...]]:
        """Run ``sql`` for our row; with ``answered``, ``_missing`` says the host answered
        and had no row."""
        for attempt in range(2):
            reused = host in self._conns
            conn = self._conn(host)
            if conn is None:
                return []
            try:
                with conn.cursor() as cur:
                    cur.execute(sql, (self.name,))
                    rows = list(cur.fetchall()) if fetch else []
            except (pymysql.err.Error, OSError) as e:
                if errno_of(e) in _NOT_SET_UP:
                    self._say(
                        host, e, "replica lag not measured on %s: %s (fix: vmailctl db migrate)"
                    )
                    return []
                # A connection that died while idle (the server restarted) gets one more
                # try on a fresh one before the host counts as down.
                self._drop(host)
                if reused and attempt == 0:
                    continue
                self._lost(host, e)
                return []
            self._said.discard((host, None))
            self._missing = answered and not rows
            return rows
        return []

    def _conn(self, host: DatabaseHost) -> Any:
        conn = self._conns.get(host)
        if conn is not None:
            return conn
        try:
            conn = connect(self.cfg, host)
        except (pymysql.err.Error, OSError) as e:
            self._lost(host, e)
            return None
        self._conns[host] = conn
        return conn

    def _drop(self, host: DatabaseHost) -> None:
        conn = self._conns.pop(host, None)
        if conn is not None:
            _close_quietly(conn)

    def _lost(self, host: DatabaseHost, error: BaseException) -> None:
        self._drop(host)
        self.hosts.mark_down(host)
        if self.metrics is not None:
            self.metrics.db_up.labels(str(host)).set(0)
        self._say(host, error, "lag check: database %s: %s", key=None)

    def _say(self, host: DatabaseHost, error: BaseException, fmt: str, key: int | None = 0) -> None:
        """Log a problem once per host until that host answers again."""
        if (host, key) not in self._said:
            self._said.add((host, key))
            log.warning(fmt, host, error)

    def _publish(self, host: DatabaseHost, lag: float | None) -> None:
        before = self.hosts.lag(host)
        self.hosts.set_lag(host, lag)
        if self.metrics is not None:
            gauge = self.metrics.db_replica_lag
            if lag is None:
                if before is not None:
                    gauge.remove(str(host))
            else:
                gauge.labels(str(host)).set(lag)
        bound = self.cfg.max_lag
        if bound > 0 and lag is not None:
            was_over = before is not None and before > bound
            if lag > bound and not was_over:
                log.warning(
                    "database %s: %.1fs behind the writer (max_lag %gs): reading elsewhere",
                    host,
                    lag,
                    bound,
                )
            elif lag <= bound and was_over:
                log.info("database %s: caught up (%.1fs behind)", host, lag)


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail again
        pass
