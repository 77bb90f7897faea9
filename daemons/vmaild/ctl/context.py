"""What every command shares: the configuration, the database, output and notification.

The configuration and the database connection are opened lazily, so commands that need
neither (``import-postfix``) work before vmaild is configured at all.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO, TypeVar

import pymysql  # type: ignore[import-untyped]  # no stubs: setup.cfg has no types-PyMySQL

from .. import config as vconfig
from ..db import Database
from . import daemon, output
from .errors import Refused
from .schema_state import require_current
from .sql import transaction

T = TypeVar("T")

#: At most this many keys go with a notification; more are sent as "any key".
NOTIFY_KEYS = 100

# Administrative statements may scan or rebuild more than a daemon lookup ever does.
ADMIN_QUERY_TIMEOUT = 60.0
SCHEMA_QUERY_TIMEOUT = 3600.0


class Context:
    def __init__(
        self,
        config_path: str | None,
        as_json: bool,
        out: TextIO | None = None,
        err: TextIO | None = None,
        stdin: TextIO | None = None,
    ):
        self.config_path = config_path
        self.as_json = as_json
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.stdin = stdin or sys.stdin
        self._config: vconfig.Config | None = None
        self._db: Database | None = None
        self.query_timeout = ADMIN_QUERY_TIMEOUT
        self.schema_checked = False
        # The change log's last id before this command changed anything: the keys logged
        # after it go with the notification (None: not read, or no log).
        self._log_mark: int | None = None

    # -- configuration and database ------------------------------------------------------

    @property
    def config(self) -> vconfig.Config:
        if self._config is None:
            self._config = vconfig.load(self.config_path or vconfig.default_path())
        return self._config

    @property
    def db(self) -> Database:
        if self._db is None:
            cfg = self.config.database
            timeout = max(cfg.query_timeout, self.query_timeout)
            # Every command runs on the writer (write_hosts, the first that answers): its
            # changes must land there, and what it shows is what it just changed.
            self._db = Database(
                dataclasses.replace(
                    cfg, hosts=cfg.writers, query_timeout=timeout, pool_size=1, max_lag=0
                )
            )
        return self._db

    def run(self, fn: Callable[[pymysql.connections.Connection], T]) -> T:
        """Run ``fn(connection)`` once the schema is known to be vmaild's current one."""
        if not self.schema_checked:
            self.db.run_sync(require_current)
            self.schema_checked = True
            self._log_mark = self.db.run_sync(_log_top)
        return self.db.run_sync(fn)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def delete_row(self, sql: str, params: tuple[Any, ...], missing: str) -> None:
        """Run one DELETE in a transaction, refuse with ``missing`` when it matched
        nothing, and tell a running vmaild."""

        def work(conn: pymysql.connections.Connection) -> None:
            with transaction(conn) as cur:
                if not cur.execute(sql, params):
                    raise Refused(missing)

        self.run(work)
        self.changed()

    # -- after a change ------------------------------------------------------------------

    def changed(self, full: bool = False) -> None:
        """Tell a running vmaild what changed: the commit's GTID and the keys the change
        log got since this command started (``notify``), or, with ``full`` (a schema
        change), to flush its whole cache. The triggers have already logged the change,
        so a daemon that cannot be reached catches up at its next poll: that is worth a
        warning, not a failure."""
        listen = self.config.control.listen
        if listen is None:
            return
        wait = self.config.cache.gtid_wait
        try:
            if full or self._log_mark is None:
                daemon.flush(listen)
                return
            gtid, keys = self._commit_facts()
            reply = daemon.notify(listen, gtid, keys, timeout=daemon.TIMEOUT + wait)
        except daemon.DaemonUnreachable as e:
            interval = self.config.cache.check_interval
            when = f"within {interval:g}s" if interval > 0 else "when its cache entries expire"
            self.warn(f"could not notify vmaild ({e}); it will see the change {when}")
            return
        if reply.endswith("pending"):
            self.warn(
                f"vmaild's database host has not applied this change within {wait:g}s "
                "(replication lag); it answers from the new state once it has"
            )

    def _commit_facts(self) -> tuple[str | None, list[str] | None]:
        """(the GTID of this session's last commit or None, the keys logged since the
        command started or None when there are too many or they cannot be read)."""
        mark = self._log_mark or 0

        def read(conn: pymysql.connections.Connection) -> tuple[str | None, list[str] | None]:
            with conn.cursor() as cur:
                # MariaDB: the GTID of the last transaction this session committed; empty
                # without a binary log (MySQL has no such variable: no GTID then).
                try:
                    cur.execute("SELECT @@last_gtid")
                    row = cur.fetchone()
                    gtid = str(row[0]) if row and row[0] else None
                except pymysql.err.Error:
                    gtid = None
                cur.execute(
                    "SELECT change_key FROM vmaild_change_log WHERE id > %s ORDER BY id LIMIT %s",
                    (mark, NOTIFY_KEYS + 1),
                )
                keys = sorted({str(r[0]) for r in cur.fetchall()})
            if len(keys) > NOTIFY_KEYS or any(not k or any(c.isspace() for c in k) for k in keys):
                return gtid, None
            return gtid, keys

        try:
            return self.db.run_sync(read)
        except Exception:  # noqa: BLE001 - a notification without facts still notifies
            return None, None

    # -- output ----------------------------------------------------------------------------

    def warn(self, message: str) -> None:
        print(f"vmailctl: warning: {message}", file=self.err)

    def done(self, message: str, **fields: Any) -> None:
        """Report a completed change: a sentence for people, an object for scripts."""
        if self.as_json:
            self.print(output.to_json({"result": "ok", "message": message, **fields}))
        else:
            self.print(message)

    def show_table(
        self, rows: Sequence[Mapping[str, Any]], columns: Sequence[output.Column]
    ) -> None:
        if self.as_json:
            self.print(output.to_json([dict(r) for r in rows]))
        else:
            self.print(output.table(rows, columns))

    def show_record(
        self,
        obj: Mapping[str, Any],
        labels: Sequence[tuple[str, str]],
        formats: Mapping[str, output.Formatter] | None = None,
    ) -> None:
        """``labels`` maps keys to labels in display order; keys missing from it are
        still in the JSON."""
        if self.as_json:
            self.print(output.to_json(dict(obj)))
            return
        formats = formats or {}
        fields = []
        for key, label in labels:
            value = obj.get(key)
            fields.append((label, formats[key](value) if key in formats else value))
        self.print(output.record(fields))

    def print(self, text: str) -> None:
        print(text, file=self.out)


def _log_top(conn: pymysql.connections.Connection) -> int | None:
    """The change log's largest id (0 when empty), or None without a change log."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COALESCE(MAX(id), 0) FROM vmaild_change_log")
            row = cur.fetchone()
    except pymysql.err.Error:
        return None
    return int(row[0]) if row else 0
