"""Running statements on one connection: a transaction, and rows as dicts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pymysql  # type: ignore[import-untyped]  # no stubs: setup.cfg has no types-PyMySQL
import pymysql.cursors  # type: ignore[import-untyped]

Row = dict[str, Any]


@contextlib.contextmanager
def transaction(conn: pymysql.connections.Connection) -> Iterator[pymysql.cursors.DictCursor]:
    """A dict cursor inside BEGIN ... COMMIT; any exception rolls back."""
    conn.begin()
    try:
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            yield cur
        conn.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            conn.rollback()
        raise


def fetch_all(
    conn: pymysql.connections.Connection, sql: str, params: Sequence[Any] = ()
) -> list[Row]:
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(sql, tuple(params) or None)
        return list(cur.fetchall())


def fetch_one(
    conn: pymysql.connections.Connection, sql: str, params: Sequence[Any] = ()
) -> Row | None:
    rows = fetch_all(conn, sql, params)
    return rows[0] if rows else None
