"""The database layer: a bounded pool of pymysql connections used from worker threads.

pymysql blocks, so every query runs in a thread of a pool with ``pool_size`` workers, each
borrowing one connection: the event loop never waits on the database, and there are never
more than ``pool_size`` connections. ``hosts`` are tried in order, like Postfix's mysql
``hosts``; a host that failed is passed over for ``retry_interval`` seconds while another
answers, and new connections go back to it once that time is up.

Two roles (dbhosts.py chooses the host): reads go to ``hosts`` (replicas first, in the
order given; a lagging one is passed over), writes to ``write_hosts`` (default: ``hosts``).
Every statement that changes data must ask for the writer: ``execute`` does by default,
``run(fn, write=True)`` for a function that writes. With the writer down, writes fail
with DatabaseError while reads go on from the replicas. ``wait_for_gtid``/``run_at_gtid``
wait until the current read host has applied a GTID (read-your-writes after a change).

Every failure becomes ``DatabaseError``: to Postfix and Courier a database that cannot
answer is a temporary failure, never "not found". A statement the server refuses because
it does not fit the schema (``SCHEMA_ERRNOS``: unknown column, missing table, syntax, no
grant) is one too, with ``misfit`` set: the host answered, so it is not marked down and the
connection goes back to the pool (schema_fit.py reports such statements once, by key).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import pymysql  # type: ignore[import-untyped]  # pymysql ships no type hints

from .dbconn import connect, wait_gtid
from .dbhosts import HostState
from .sections import DatabaseConfig
from .values import DatabaseHost

if TYPE_CHECKING:  # prometheus_client costs vmailctl ~0.1 s of start-up it never needs
    from .metrics import Metrics

log = logging.getLogger("vmaild.db")
T = TypeVar("T")

# Errors after which a connection is no longer usable (lost, timed out, closed).
_BROKEN = (
    pymysql.err.OperationalError,
    pymysql.err.InterfaceError,
    pymysql.err.InternalError,
    OSError,
    EOFError,
)

# Server errors that say "this statement does not fit this database": the same statement
# fails the same way until the configuration or the schema changes. pymysql raises some of
# them as OperationalError (1054, 1142, 1305...), which would otherwise count as a lost
# connection and mark the host down. Data-dependent errors (1406 data too long, 1242
# subquery returns more than one row, 1062 duplicate key) are not here: another key may work.
SCHEMA_ERRNOS = frozenset(
    {
        1054,  # unknown column
        1146,  # table doesn't exist
        1064,
        1149,  # SQL syntax
        1052,  # column is ambiguous
        1066,  # not unique table/alias
        1109,  # unknown table (in a qualified column or a multi-table statement)
        1110,  # column specified twice
        1111,  # invalid use of a group function
        1136,  # column count doesn't match value count
        1142,
        1143,  # command denied for table / column (no grant)
        1222,  # different number of columns in the SELECTs of a UNION
        1241,  # operand should contain 1 column
        1248,  # every derived table must have its own alias
        1305,
        1630,  # function does not exist
        1582,
        1583,  # wrong parameters to a native function
    }
)


# Conflicts between transactions: deadlock (1213; also a Galera certification failure) and
# lock wait timeout (1205). The statement lost, not the connection: the caller may retry.
CONFLICT_ERRNOS = frozenset({1205, 1213})


class DatabaseError(Exception):
    """The database could not answer. ``errno`` is MySQL's error number when there is one;
    ``misfit`` is True when the server refused the statement itself (``SCHEMA_ERRNOS``)."""

    def __init__(self, message: str, errno: int | None = None, *, misfit: bool = False):
        super().__init__(message)
        self.errno = errno
        self.misfit = misfit


class _Conn:
    __slots__ = ("raw", "host", "write")

    def __init__(self, raw: pymysql.connections.Connection, host: DatabaseHost, write: bool):
        self.raw = raw
        self.host = host
        self.write = write  # the role it was opened for: the idle list it goes back to


class Database:
    def __init__(self, cfg: DatabaseConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics
        self.hosts = HostState(
            cfg.hosts,
            cfg.writers,
            retry_interval=cfg.retry_interval,
            max_lag=cfg.max_lag if cfg.replicated else 0.0,
        )
        self._executor = ThreadPoolExecutor(
            max_workers=cfg.pool_size, thread_name_prefix="vmaild-db"
        )
        # Idle connections by role; one list when both roles use the same hosts in the
        # same order (the default), so that nothing changes for a single server.
        self._idle_reads: list[_Conn] = []
        self._idle_writes = self._idle_reads if cfg.writers == cfg.hosts else []
        self._lock = threading.Lock()
        self._open = 0
        self._closed = False
        self._read_host: DatabaseHost | None = None

    @property
    def _down_until(self) -> dict[DatabaseHost, float]:
        return self.hosts.down_until

    @property
    def read_host(self) -> DatabaseHost | None:
        """The host the latest read was answered from (None before the first)."""
        return self._read_host

    # -- public API ----------------------------------------------------------------------

    async def fetch(
        self, sql: str, params: Sequence[Any] = (), *, write: bool = False
    ) -> list[tuple[Any, ...]]:
        """Run a read query; a connection lost on the way is retried once on a fresh one.
        ``write``: on the writer (a read that must see the latest writes, or a statement
        that reads and writes in one, such as an atomic counter's)."""
        return await self.run(lambda conn: _fetch(conn, sql, params), retry=not write, write=write)

    async def execute(self, sql: str, params: Sequence[Any] = (), *, write: bool = True) -> int:
        """Run one write statement (autocommit) on the writer; returns the affected row
        count. Never retried: it may have been applied before the connection was lost."""
        return await self.run(lambda conn: _execute(conn, sql, params), write=write)

    async def run(
        self,
        fn: Callable[[pymysql.connections.Connection], T],
        *,
        retry: bool = False,
        write: bool = False,
    ) -> T:
        """Run ``fn(connection)`` in a worker thread. Connections are in autocommit mode;
        ``fn`` may call ``begin()``/``commit()`` for a transaction. Only idempotent work
        may ask for ``retry``. ``write=True`` for every ``fn`` that changes data: it runs
        on a ``write_hosts`` connection; otherwise on a read host, which may be a replica
        (read-only, lagging)."""
        if self._closed:
            raise DatabaseError("database layer is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, lambda: self.run_sync(fn, retry, write=write)
        )

    async def wait_for_gtid(self, gtid: str, timeout: float) -> bool:
        """Wait until the current read host has applied ``gtid`` (a GTID list such as
        ``0-1-42``, e.g. the writer's ``@@last_gtid`` after a commit): True once it has,
        False after ``timeout`` seconds. See ``run_at_gtid``."""
        reached, _ = await self.run_at_gtid(gtid, timeout, lambda conn: None)
        return reached

    async def run_at_gtid(
        self, gtid: str, timeout: float, fn: Callable[[pymysql.connections.Connection], T]
    ) -> tuple[bool, T]:
        """Wait (``MASTER_GTID_WAIT``, no privilege needed) until the read host has applied
        ``gtid``, then run ``fn`` on the same connection, so that what it reads is at least
        that state even if the read host changes meanwhile. Returns (reached, fn's result);
        ``fn`` runs also when the wait timed out (then it may read an older state). ``fn``
        only reads: it runs on a read host and is retried once on a lost connection.

        On a writer the wait is skipped: its own commits are not in ``gtid_slave_pos``,
        which MASTER_GTID_WAIT watches, and it has them all. ``timeout`` is kept below
        ``query_timeout``, after which the server would abandon the statement."""
        timeout = max(0.0, min(timeout, self.cfg.query_timeout * 0.8))

        def work(conn: _Conn) -> tuple[bool, T]:
            reached = (
                conn.host in self.cfg.writers or not gtid or wait_gtid(conn.raw, gtid, timeout)
            )
            return reached, fn(conn.raw)

        if self._closed:
            raise DatabaseError("database layer is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, work, True, False)

    def run_sync(
        self,
        fn: Callable[[pymysql.connections.Connection], T],
        retry: bool = False,
        *,
        write: bool = False,
    ) -> T:
        """The blocking form of ``run`` (for worker threads and command-line tools)."""
        return self._run(lambda conn: fn(conn.raw), retry, write)

    def _run(self, fn: Callable[[_Conn], T], retry: bool, write: bool) -> T:
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            conn, reused = self._acquire(write)
            started = time.perf_counter()
            try:
                result = fn(conn)
            except _BROKEN as e:
                if errno_of(e) in CONFLICT_ERRNOS:
                    self._release(conn)  # fn rolled back; the connection is fine
                    self._count_error(conn.host)
                    raise DatabaseError(_describe(e), errno_of(e)) from e
                if _misfit(e):
                    # The server answered; the statement does not fit its schema. The host
                    # and the connection are fine (no retry: it would fail the same way).
                    self._release(conn)
                    self._count_error(conn.host)
                    raise DatabaseError(_describe(e), errno_of(e), misfit=True) from e
                self._discard(conn, e)
                # A pooled connection may have died while idle (server restart, idle
                # timeout). Its idle siblings went with it, so drop them all and try
                # once more on a fresh connection.
                # A slow failure is a timeout, not a stale connection: no second wait.
                fast = time.perf_counter() - started < self.cfg.query_timeout / 2
                if reused and fast and attempt + 1 < attempts:
                    self._drop_idle(conn.host)
                    continue
                raise DatabaseError(_describe(e), errno_of(e)) from e
            except pymysql.err.Error as e:
                self._release(conn)  # the connection is fine; the statement was not
                self._count_error(conn.host)
                raise DatabaseError(_describe(e), errno_of(e), misfit=_misfit(e)) from e
            except BaseException:
                self._discard(conn, None)
                raise
            if self.metrics is not None:
                self.metrics.db_query_seconds.observe(time.perf_counter() - started)
                self.metrics.db_up.labels(str(conn.host)).set(1)
            if not write:
                self._note_read_host(conn.host)
            self._release(conn)
            return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop accepting work, wait for running queries, close every connection."""
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            idle = self._idle_reads + (
                self._idle_writes if self._idle_writes is not self._idle_reads else []
            )
            self._idle_reads.clear()
            self._idle_writes.clear()
            self._open -= len(idle)
        for conn in idle:
            _close_quietly(conn.raw)
        self._report_open()

    # -- the pool --------------------------------------------------------------------------

    def _idle(self, write: bool) -> list[_Conn]:
        return self._idle_writes if write else self._idle_reads

    def _acquire(self, write: bool) -> tuple[_Conn, bool]:
        preferred = self.hosts.preferred(write)
        stale: list[_Conn] = []
        try:
            with self._lock:
                idle = self._idle(write)
                while idle:
                    conn = idle.pop()
                    # A connection to a host that is no longer the first choice (a fallback
                    # while the preferred host may be back, a replica now lagging) is
                    # dropped, so that traffic moves.
                    if conn.host == preferred:
                        return conn, True
                    stale.append(conn)
                # About to open one more: keep within pool_size by closing the oldest
                # idle connection of the other role.
                other = self._idle(not write)
                if self._open - len(stale) >= self.cfg.pool_size and other:
                    stale.append(other.pop(0))
        finally:
            for conn in stale:
                self._discard(conn, None)
        return self._connect(write), False

    def _release(self, conn: _Conn) -> None:
        # A connection to a host that is no longer the first choice is dropped (see
        # _acquire): traffic returns to the preferred host once it may be back.
        if conn.host != self.hosts.preferred(conn.write):
            self._discard(conn, None)
            return
        with self._lock:
            self._idle(conn.write).append(conn)

    def _discard(self, conn: _Conn, error: BaseException | None) -> None:
        _close_quietly(conn.raw)
        with self._lock:
            self._open -= 1
        self._report_open()
        if error is not None:
            log.warning("database %s: %s", conn.host, _describe(error))
            self._mark_down(conn.host)

    def _drop_idle(self, host: DatabaseHost) -> None:
        """Close the idle connections to ``host`` (of both roles): they died with it."""
        with self._lock:
            idle: list[_Conn] = []
            for pool in {id(p): p for p in (self._idle_reads, self._idle_writes)}.values():
                idle += [c for c in pool if c.host == host]
                pool[:] = [c for c in pool if c.host != host]
            self._open -= len(idle)
        for conn in idle:
            _close_quietly(conn.raw)
        self._report_open()

    def _connect(self, write: bool) -> _Conn:
        # Hosts in their retry interval come last, so one is still tried if all are down.
        errors = []
        errno: int | None = None
        for host in self.hosts.order(write):
            try:
                raw = connect(self.cfg, host)
            except (pymysql.err.Error, OSError) as e:
                errors.append(f"{host}: {_describe(e)}")
                errno = errno_of(e)
                self._mark_down(host)
                continue
            with self._lock:
                self._open += 1
            self._report_open()
            if self.hosts.mark_up(host):
                log.info("database %s: connected again", host)
            if self.metrics is not None:
                self.metrics.db_up.labels(str(host)).set(1)
            return _Conn(raw, host, write)
        role = "writer" if write and self.cfg.writers != self.cfg.hosts else "database host"
        # The last errno tells callers "access denied" (1045) from "host down" (2003).
        raise DatabaseError(f"no {role} answered: " + "; ".join(errors), errno)

    def _note_read_host(self, host: DatabaseHost) -> None:
        """Say when reads move to another host (and show it in the metrics)."""
        previous = self._read_host
        if host == previous:
            return
        self._read_host = host
        if previous is not None:
            log.info("database: reading from %s (was %s)", host, previous)
        if self.metrics is not None:
            for h in self.cfg.hosts:
                self.metrics.db_read_host.labels(str(h)).set(1 if h == host else 0)

    def _mark_down(self, host: DatabaseHost) -> None:
        self.hosts.mark_down(host)
        self._count_error(host)
        if self.metrics is not None:
            self.metrics.db_up.labels(str(host)).set(0)

    def _count_error(self, host: DatabaseHost) -> None:
        if self.metrics is not None:
            self.metrics.db_errors.labels(str(host)).inc()

    def _report_open(self) -> None:
        if self.metrics is not None:
            self.metrics.db_connections.set(self._open)


def _fetch(
    conn: pymysql.connections.Connection, sql: str, params: Sequence[Any]
) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, tuple(params) or None)
        return list(cur.fetchall())


def _execute(conn: pymysql.connections.Connection, sql: str, params: Sequence[Any]) -> int:
    with conn.cursor() as cur:
        return int(cur.execute(sql, tuple(params) or None))


def errno_of(e: BaseException) -> int | None:
    """MySQL's error number of a pymysql error (None for other errors)."""
    args = getattr(e, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _misfit(e: BaseException) -> bool:
    return isinstance(e, pymysql.err.Error) and errno_of(e) in SCHEMA_ERRNOS


def _describe(e: BaseException) -> str:
    args: tuple[Any, ...] = getattr(e, "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    return str(e) or type(e).__name__


def _close_quietly(raw: pymysql.connections.Connection) -> None:
    try:
        raw.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail again
        pass
