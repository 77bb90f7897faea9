"""Finding which schema a database has, and bringing it to the latest one.

MySQL DDL commits implicitly, so a migration cannot be one transaction. Instead every
step is "make it so" (create what is missing, alter what differs) and the version row is
written last: a migration interrupted half-way is still seen as the seed's schema, and
running it again finishes the job. A named lock keeps two vmailctl runs apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

import pymysql  # type: ignore[import-untyped]  # no stubs: setup.cfg has no types-PyMySQL

from . import schema
from .errors import Refused
from .sql import fetch_all, fetch_one

Conn: TypeAlias = pymysql.connections.Connection
LOCK_TIMEOUT = 30


@dataclass
class State:
    kind: str  # empty | seed | partial | vmaild | unknown
    version: int | None = None
    tables: list[str] = field(default_factory=list)
    problem: str = ""

    @property
    def label(self) -> str:
        if self.kind == "empty":
            return "empty"
        if self.kind == "seed":
            return f"seed ({schema.SEED_VERSION})"
        if self.kind == "vmaild":
            return str(self.version)
        if self.kind == "partial":
            return "incomplete"
        return "unknown"

    @property
    def current(self) -> bool:
        return self.kind == "vmaild" and self.version == schema.LATEST

    def advice(self) -> str:
        if self.current:
            return "up to date"
        if self.kind == "empty":
            return "run 'vmailctl db init'"
        if self.kind == "seed" or (self.kind == "vmaild" and (self.version or 0) < schema.LATEST):
            return "run 'vmailctl db migrate'"
        if self.kind == "partial":
            return f"{self.problem}: run 'vmailctl db migrate' again to finish it"
        if self.kind == "vmaild":
            return f"newer than this vmailctl (knows up to {schema.LATEST}): upgrade vmailctl"
        return self.problem


def _columns(conn: Conn, table: str) -> list[str]:
    rows = fetch_all(
        conn,
        "SELECT column_name AS c FROM information_schema.columns "
        "WHERE table_schema = DATABASE() AND table_name = %s "
        "ORDER BY ordinal_position",
        (table,),
    )
    return [r["c"] for r in rows]


def _tables(conn: Conn) -> list[str]:
    rows = fetch_all(
        conn,
        "SELECT table_name AS t FROM information_schema.tables "
        "WHERE table_schema = DATABASE() ORDER BY table_name",
    )
    return [r["t"] for r in rows]


def detect(conn: Conn) -> State:
    tables = _tables(conn)
    if not tables:
        return State("empty")
    if schema.SCHEMA_TABLE in tables:
        row = fetch_one(conn, f"SELECT MAX(version) AS v FROM {schema.SCHEMA_TABLE}")
        if row is None or row["v"] is None:
            # vmaild_schema is written last: an init or migration stopped half-way.
            return State("partial", tables=tables, problem="an init or migration did not finish")
        return State("vmaild", int(row["v"]), tables)
    for table, needed in schema.SEED_REQUIRED.items():
        if table not in tables:
            return State(
                "unknown",
                tables=tables,
                problem=f"neither empty nor the seed's schema (no {table} table)",
            )
        missing = [c for c in needed if c not in _columns(conn, table)]
        if missing:
            return State(
                "unknown",
                tables=tables,
                problem=f"table {table} has no {', '.join(missing)} column",
            )
    return State("seed", schema.SEED_VERSION, tables)


def require_current(conn: Conn) -> None:
    """Refuse to touch data unless the schema is the one this vmailctl writes."""
    state = detect(conn)
    if not state.current:
        raise Refused(f"database schema is {state.label}: {state.advice()}")


# -- init and migrate ---------------------------------------------------------------------


def _execute(conn: Conn, sql: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql)


def _table_info(conn: Conn, table: str) -> dict[str, str]:
    row = fetch_one(
        conn,
        "SELECT engine AS engine, row_format AS row_format, "
        "table_collation AS collation FROM information_schema.tables "
        "WHERE table_schema = DATABASE() AND table_name = %s",
        (table,),
    )
    return {k: str(v or "") for k, v in (row or {}).items()}


def _key_names(conn: Conn, table: str) -> set[str]:
    rows = fetch_all(
        conn,
        "SELECT DISTINCT index_name AS k FROM information_schema.statistics "
        "WHERE table_schema = DATABASE() AND table_name = %s",
        (table,),
    )
    return {r["k"] for r in rows}


def _upgrade_table(conn: Conn, t: schema.Table) -> None:
    """ALTER an existing table to ``t``: InnoDB, utf8mb4, every column as defined (the
    seed's widened, new ones appended), every index present. Rows are kept as they are:
    the seed's hashes and addresses are ASCII, so the character set conversion is
    byte-for-byte for them."""
    info = _table_info(conn, t.name)
    if info.get("engine", "").lower() != "innodb":
        # The tutorial's era defaulted to MyISAM: no transactions, no crash safety.
        _execute(conn, f"ALTER TABLE `{t.name}` ENGINE=InnoDB")
        info = _table_info(conn, t.name)
    if info.get("row_format", "").lower() in ("compact", "redundant"):
        # These cannot index a varchar(255) in utf8mb4 (767-byte key prefix limit).
        _execute(conn, f"ALTER TABLE `{t.name}` ROW_FORMAT=DYNAMIC")
    if info.get("collation") != schema.COLLATION:
        _execute(
            conn,
            f"ALTER TABLE `{t.name}` CONVERT TO CHARACTER SET {schema.CHARSET} "
            f"COLLATE {schema.COLLATION}",
        )
    existing = _columns(conn, t.name)
    changes, previous = [], None
    for name, definition in t.columns:
        if name in existing:
            changes.append(f"MODIFY COLUMN `{name}` {definition}")
        else:
            where = f"AFTER `{previous}`" if previous else "FIRST"
            changes.append(f"ADD COLUMN `{name}` {definition} {where}")
        previous = name
    _execute(conn, f"ALTER TABLE `{t.name}` " + ", ".join(changes))
    have = _key_names(conn, t.name)
    missing = [definition for key, definition in t.keys if key not in have]
    if missing:
        _execute(conn, f"ALTER TABLE `{t.name}` " + ", ".join(f"ADD {d}" for d in missing))


def _ensure_tables(conn: Conn) -> None:
    present = set(_tables(conn))
    for t in schema.TABLES:
        if t.name in present:
            _upgrade_table(conn, t)
        else:
            _execute(conn, schema.create_table(t))
    _execute(conn, f"INSERT IGNORE INTO {schema.CHANGES_TABLE} (id, version) VALUES (1, 0)")


def _ensure_triggers(conn: Conn) -> None:
    for t in schema.watched_tables():
        for trigger in schema.triggers_for(t, _columns(conn, t.name)):
            try:
                _execute(conn, f"DROP TRIGGER IF EXISTS `{trigger.name}`")
                _execute(conn, trigger.create())
            except (pymysql.err.OperationalError, pymysql.err.ProgrammingError) as e:
                if _errno(e) not in TRIGGER_PRIVILEGE_ERRNOS:
                    raise
                raise Refused(_trigger_problem(e)) from e


# 1419: binlog on and no SUPER; 1142: no TRIGGER privilege; 1227: needs SUPER.
TRIGGER_PRIVILEGE_ERRNOS = (1419, 1142, 1227)


def _errno(e: BaseException) -> int | None:
    return e.args[0] if e.args and isinstance(e.args[0], int) else None


def _trigger_problem(e: pymysql.err.Error) -> str:
    errno = _errno(e)
    if errno == 1419:
        return (
            "creating triggers needs SUPER while binary logging is on: set "
            "log_bin_trust_function_creators = 1 in the server's configuration "
            "(or run this once as an administrator), then run the command again"
        )
    if errno in (1142, 1227):
        return (
            "the database user may not create triggers: GRANT TRIGGER (or ALL) on "
            "the database, then run the command again"
        )
    return f"cannot create trigger: {e.args[-1]}"


def _set_version(conn: Conn, version: int) -> None:
    conn.begin()
    _execute(conn, f"DELETE FROM {schema.SCHEMA_TABLE}")
    _execute(conn, f"INSERT INTO {schema.SCHEMA_TABLE} (version) VALUES ({int(version)})")
    conn.commit()


def _locked(conn: Conn, work: str) -> None:
    row = fetch_one(
        conn, "SELECT GET_LOCK(CONCAT('vmaild_schema:', DATABASE()), %s) AS got", (LOCK_TIMEOUT,)
    )
    if not row or row["got"] != 1:
        raise Refused(f"another vmailctl is changing the schema; {work} not started")


def _unlock(conn: Conn) -> None:
    _execute(conn, "DO RELEASE_LOCK(CONCAT('vmaild_schema:', DATABASE()))")


def _apply_latest(conn: Conn) -> None:
    try:
        _execute(conn, f"ALTER DATABASE CHARACTER SET {schema.CHARSET} COLLATE {schema.COLLATION}")
        _ensure_tables(conn)
        _ensure_triggers(conn)
    except pymysql.err.IntegrityError as e:
        raise Refused(
            "converting to utf8mb4 would make two keys equal "
            f"({e.args[-1]}); fix those rows and run the command again"
        ) from e
    _set_version(conn, schema.LATEST)


def init(conn: Conn) -> tuple[State, State]:
    """Create the latest schema on an empty database; (before, after)."""
    _locked(conn, "init")
    try:
        before = detect(conn)
        if before.current:
            return before, before
        if before.kind == "seed":
            raise Refused("database has the seed's tables: use 'vmailctl db migrate'")
        if before.kind not in ("empty", "partial"):
            raise Refused(
                f"database is not empty (schema {before.label}: "
                f"{before.advice()}); init only creates a new schema"
            )
        _apply_latest(conn)
        return before, detect(conn)
    finally:
        _unlock(conn)


def migrate(conn: Conn) -> tuple[State, State]:
    """Upgrade the seed's (or an older vmaild) schema in place; (before, after)."""
    _locked(conn, "migration")
    try:
        before = detect(conn)
        if before.current:
            return before, before
        if before.kind == "empty":
            raise Refused("database is empty: use 'vmailctl db init'")
        if before.kind == "unknown" or (before.version or 0) > schema.LATEST:
            raise Refused(f"cannot migrate schema {before.label}: {before.advice()}")
        _apply_latest(conn)
        return before, detect(conn)
    finally:
        _unlock(conn)


def report(conn: Conn) -> dict[str, object]:
    """What ``db status`` shows."""
    state = detect(conn)
    result: dict[str, object] = {
        "version": state.label,
        "kind": state.kind,
        "number": state.version,
        "latest": schema.LATEST,
        "advice": state.advice(),
        "tables": state.tables,
    }
    if state.kind == "vmaild":
        rows = fetch_all(
            conn,
            "SELECT trigger_name AS t FROM information_schema.triggers "
            "WHERE trigger_schema = DATABASE() AND trigger_name LIKE "
            "'vmaild\\_%'",
        )
        expected = sum(3 for _ in schema.watched_tables())
        result["triggers"] = f"{len(rows)} of {expected}"
        row = fetch_one(
            conn, f"SELECT version, changed_at FROM {schema.CHANGES_TABLE} WHERE id = 1"
        )
        result["changes"] = row["version"] if row else None
        result["changed_at"] = row["changed_at"] if row else None
        if schema.CHANGE_LOG_TABLE in state.tables:
            log = fetch_one(
                conn,
                f"SELECT COUNT(*) AS n, MAX(id) AS top, MIN(changed_at) AS since "
                f"FROM {schema.CHANGE_LOG_TABLE}",
            )
            if log is not None:
                result["change_log"] = (
                    f"{log['n']} rows, newest id {log['top'] or '-'}, since {log['since'] or '-'}"
                )
    return result
