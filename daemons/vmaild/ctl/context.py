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

    def changed(self) -> None:
        """Tell a running vmaild to flush its cache. The triggers have already bumped
        vmaild_changes, so a daemon that cannot be reached catches up at its next poll:
        that is worth a warning, not a failure."""
        listen = self.config.control.listen
        if listen is None:
            return
        try:
            daemon.flush(listen)
        except daemon.DaemonUnreachable as e:
            interval = self.config.cache.check_interval
            when = f"within {interval:g}s" if interval > 0 else "when its cache entries expire"
            self.warn(f"could not notify vmaild ({e}); it will see the change {when}")

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
