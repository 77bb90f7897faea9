"""Fakes for the login service's unit tests: a database that answers the account queries
from a dict through a pymysql-like connection, an AuthService on it, and ``aio`` for async
tests (no pytest plugin needed)."""

from __future__ import annotations

import asyncio
import functools
import unicodedata
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from vmaild import config
from vmaild.auth.service import AuthService
from vmaild.db import DatabaseError
from vmaild.metrics import Metrics


def unicode_ci(text: str) -> str:
    """Roughly what MariaDB's utf8mb4_unicode_ci compares: trailing spaces ignored (PAD
    SPACE), accents and full-width forms equal to their base letters, case folded."""
    decomposed = unicodedata.normalize("NFKD", text.rstrip(" "))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def aio(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (no pytest plugin needed)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 60))

    return run


class FakeCursor:
    def __init__(self, db: FakeDB):
        self.db = db
        self.description: list[tuple[str]] | None = None
        self._rows: list[tuple[Any, ...]] = []

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: Any = None) -> int:
        self.db.statements.append(sql)
        if isinstance(params, dict):  # an update: %(address)s %(old)s %(new)s
            user = self.db.users.get(self.db.fold(params["address"]))
            if self.db.update_error is not None:
                raise self.db.update_error
            if user is None or user["password"] != params["old"]:
                return 0
            user["password"] = params["new"]
            return 1
        columns = self.db.columns
        self.description = [(c,) for c in columns]
        if " UNION ALL " in sql:  # a batch: the account query once per login, tagged
            arms = sql.count(" UNION ALL ") + 1
            per_arm = len(params) // arms
            self.description = [("vmaild_batch_login",), *self.description]
            self._rows = []
            for i in range(arms):
                user = self.db.users.get(self.db.fold(params[i * per_arm]))
                if user:
                    self._rows.append((i, *(user.get(c) for c in columns)))
            return len(self._rows)
        if params:  # the account query, bound to the login name
            user = self.db.users.get(self.db.fold(params[0]))
            users = [user] if user else []
        else:  # ENUMERATE
            users = list(self.db.users.values())
        self._rows = [tuple(u.get(c) for c in columns) for u in users]
        return len(self._rows)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows


class FakeConn:
    def __init__(self, db: FakeDB):
        self.db = db

    def cursor(self) -> FakeCursor:
        return FakeCursor(self.db)


class FakeDB:
    """Just enough of vmaild.db.Database: ``run(fn)`` with a pymysql-like connection."""

    columns = ("address", "password", "maildir", "name", "quota_bytes", "quota_messages", "active")

    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.down = False
        self.writer_down = False  # writes (run(..., write=True)) fail, reads go on
        self.update_error: Exception | None = None
        self.statements: list[str] = []
        # How the account query's WHERE compares names (unicode_ci: like MariaDB's).
        self.fold: Callable[[str], str] = str.lower
        self.writes = 0  # functions run with write=True

    def add(self, address: str, stored: str, **extra: Any) -> None:
        self.users[self.fold(address)] = {
            "address": address,
            "password": stored,
            "active": 1,
            **extra,
        }

    async def run(self, fn: Any, *, retry: bool = False, write: bool = False) -> Any:
        await asyncio.sleep(0)
        if self.down or (write and self.writer_down):
            raise DatabaseError("(2003) Can't connect to MySQL server")
        self.writes += write
        return fn(FakeConn(self))


def make_service(tmp_path: Path, extra: str = "", **kw: Any) -> tuple[AuthService, FakeDB]:
    text = (
        f"[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n"
        f"[mailbox]\nbase = {tmp_path}/vmail\nuid = 5000\ngid = 5001\n"
        f"[auth]\nlisten = unix:{tmp_path}/auth.sock\npassword_rounds = 1000\n"
        f"hash_workers = 2\n{extra}"
    )
    cfg = config.parse(text)
    db = FakeDB()
    service = AuthService(cfg, db, Metrics(), **kw)  # type: ignore[arg-type]
    return service, db
