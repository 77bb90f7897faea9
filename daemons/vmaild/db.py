"""The database layer: a bounded pool of pymysql connections used from worker threads.

pymysql blocks, so every query runs in a thread of a pool with ``pool_size`` workers, each
borrowing one connection: the event loop never waits on the database, and there are never
more than ``pool_size`` connections. ``hosts`` are tried in order, like Postfix's mysql
``hosts``; a host that failed is passed over for ``retry_interval`` seconds while another
answers, and new connections go back to it once that time is up.

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
import pymysql.cursors  # type: ignore[import-untyped]

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
    __slots__ = ("raw", "host")

    def __init__(self, raw: pymysql.connections.Connection, host: DatabaseHost):
        self.raw = raw
        self.host = host


class Database:
    def __init__(self, cfg: DatabaseConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(
            max_workers=cfg.pool_size, thread_name_prefix="vmaild-db"
        )
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._down_until: dict[DatabaseHost, float] = {}
        self._open = 0
        self._closed = False

    # -- public API ----------------------------------------------------------------------

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query; a connection lost on the way is retried once on a fresh one."""
        return await self.run(lambda conn: _fetch(conn, sql, params), retry=True)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement (autocommit); returns the affected row count."""
        return await self.run(lambda conn: _execute(conn, sql, params))

    async def run(
        self, fn: Callable[[pymysql.connections.Connection], T], *, retry: bool = False
    ) -> T:
        """Run ``fn(connection)`` in a worker thread. Connections are in autocommit mode;
        ``fn`` may call ``begin()``/``commit()`` for a transaction. Only idempotent work
        may ask for ``retry``."""
        if self._closed:
            raise DatabaseError("database layer is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_sync, fn, retry)

    def run_sync(self, fn: Callable[[pymysql.connections.Connection], T], retry: bool = False) -> T:
        """The blocking form of ``run`` (for worker threads and command-line tools)."""
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            conn, reused = self._acquire()
            started = time.perf_counter()
            try:
                result = fn(conn.raw)
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
                    self._drop_idle()
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
            self._release(conn)
            return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop accepting work, wait for running queries, close every connection."""
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn.raw)
            self._open -= 1
        self._report_open()

    # -- the pool --------------------------------------------------------------------------

    def _acquire(self) -> tuple[_Conn, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _release(self, conn: _Conn) -> None:
        # A connection to a fallback host is dropped once the preferred host may be back,
        # so that traffic returns to it.
        if conn.host != self.cfg.hosts[0] and self._preferred_may_be_up():
            self._discard(conn, None)
            return
        with self._lock:
            self._idle.append(conn)

    def _discard(self, conn: _Conn, error: BaseException | None) -> None:
        _close_quietly(conn.raw)
        with self._lock:
            self._open -= 1
        self._report_open()
        if error is not None:
            log.warning("database %s: %s", conn.host, _describe(error))
            self._mark_down(conn.host)

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for conn in idle:
            _close_quietly(conn.raw)
        self._report_open()

    def _preferred_may_be_up(self) -> bool:
        return self._down_until.get(self.cfg.hosts[0], 0.0) <= time.monotonic()

    def _connect(self) -> _Conn:
        now = time.monotonic()
        hosts = list(self.cfg.hosts)
        # Hosts in their retry interval go last, so one is still tried if all are down.
        order = [h for h in hosts if self._down_until.get(h, 0.0) <= now]
        order += [h for h in hosts if h not in order]
        errors = []
        errno: int | None = None
        for host in order:
            try:
                raw = pymysql.connect(
                    host=host.host or "localhost",
                    port=host.port,
                    unix_socket=host.socket,
                    user=self.cfg.user,
                    password=self.cfg.password,
                    database=self.cfg.dbname,
                    connect_timeout=self.cfg.connect_timeout,
                    read_timeout=self.cfg.query_timeout,
                    write_timeout=self.cfg.query_timeout,
                    charset="utf8mb4",
                    autocommit=True,
                    cursorclass=pymysql.cursors.Cursor,
                )
            except (pymysql.err.Error, OSError) as e:
                errors.append(f"{host}: {_describe(e)}")
                errno = errno_of(e)
                self._mark_down(host)
                continue
            _limit_statement_time(raw, self.cfg.query_timeout)
            with self._lock:
                self._open += 1
            self._report_open()
            if self._down_until.pop(host, None) is not None:
                log.info("database %s: connected again", host)
            if self.metrics is not None:
                self.metrics.db_up.labels(str(host)).set(1)
            return _Conn(raw, host)
        # The last errno tells callers "access denied" (1045) from "host down" (2003).
        raise DatabaseError("no database host answered: " + "; ".join(errors), errno)

    def _mark_down(self, host: DatabaseHost) -> None:
        self._down_until[host] = time.monotonic() + self.cfg.retry_interval
        self._count_error(host)
        if self.metrics is not None:
            self.metrics.db_up.labels(str(host)).set(0)

    def _count_error(self, host: DatabaseHost) -> None:
        if self.metrics is not None:
            self.metrics.db_errors.labels(str(host)).inc()

    def _report_open(self) -> None:
        if self.metrics is not None:
            self.metrics.db_connections.set(self._open)


def _limit_statement_time(raw: pymysql.connections.Connection, seconds: float) -> None:
    """Let the server abandon a statement we stop waiting for (MariaDB's
    max_statement_time; MySQL calls it max_execution_time, in milliseconds)."""
    for sql in (
        f"SET SESSION max_statement_time = {seconds:.3f}",
        f"SET SESSION max_execution_time = {int(seconds * 1000)}",
    ):
        try:
            with raw.cursor() as cur:
                cur.execute(sql)
            return
        except pymysql.err.Error:
            continue


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
