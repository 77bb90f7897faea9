"""One connection to one database host, and the statements every connection runs.

Used by the pool (db.py) and by the lag check (lagcheck.py), which keeps connections of
its own. A leaf: nothing here knows about pools or roles.
"""

from __future__ import annotations

import pymysql  # type: ignore[import-untyped]  # pymysql ships no type hints
import pymysql.cursors  # type: ignore[import-untyped]

from .sections import DatabaseConfig
from .values import DatabaseHost


def connect(cfg: DatabaseConfig, host: DatabaseHost) -> pymysql.connections.Connection:
    """One autocommit connection to ``host`` with the configured timeouts."""
    raw = pymysql.connect(
        host=host.host or "localhost",
        port=host.port,
        unix_socket=host.socket,
        user=cfg.user,
        password=cfg.password,
        database=cfg.dbname,
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.query_timeout,
        write_timeout=cfg.query_timeout,
        charset="utf8mb4",
        autocommit=True,
        cursorclass=pymysql.cursors.Cursor,
    )
    _limit_statement_time(raw, cfg.query_timeout)
    if cfg.wsrep_sync_wait:
        # Galera: causal reads on this session (README "Galera"). An error is the
        # connection's: a server without wsrep refuses it, and that is a misconfiguration.
        try:
            with raw.cursor() as cur:
                cur.execute(f"SET SESSION wsrep_sync_wait = {int(cfg.wsrep_sync_wait)}")
        except pymysql.err.Error:
            raw.close()
            raise
    return raw


def wait_gtid(conn: pymysql.connections.Connection, gtid: str, timeout: float) -> bool:
    """``MASTER_GTID_WAIT`` on this connection: True once the server has applied ``gtid``,
    False after ``timeout`` seconds (or when the server says NULL: a malformed list)."""
    with conn.cursor() as cur:
        cur.execute("SELECT MASTER_GTID_WAIT(%s, %s)", (gtid, timeout))
        row = cur.fetchone()
    return row is not None and row[0] == 0


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
