"""Accounts: the ``[auth] query`` row, read by column name, and its authpipe fields.

The query's columns are matched by name (cursor.description, case-insensitive), so a site
can reorder them or add its own. Known names:

  address (or email)   the canonical login id -> ADDRESS (required)
  password             the stored hash (without it, PRE works and AUTH fails)
  home, uid, gid       default to [mailbox] base/uid/gid, the seed's /home/vmail and 5000
  maildir              relative to HOME; NULL or empty means '<domain>/<user>/' (the seed)
  quota                maildir++ text such as '1000000S,1000C'; or quota_bytes and
                       quota_messages as numbers (0 or NULL: no limit)
  name, options        NAME and OPTIONS; active: 0 disables the account (NULL: active)
  imap_access, pop3_access, smtp_access
                       'on', 'off', or 'app' (only app passwords) per service; a
                       missing column or NULL is 'on', anything else 'off' (logged once)

Values that authdaemond would misread (a line break in NAME, a uid of 0) are dropped or
make the account unusable, with a log line; they never reach the reply.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import expansions
from ..config import Config
from ..db import Database, DatabaseError

log = logging.getLogger("vmaild.auth")

_QUOTA = re.compile(r"\d+[SC](,\d+[SC])*")
_ALIASES = {"email": "address", "passwd": "password", "crypt": "password"}


class AccountError(ValueError):
    """The row cannot make a valid account (a configuration or data problem)."""


@dataclass(frozen=True, slots=True)
class Account:
    address: str
    password: str = field(repr=False)
    home: str
    maildir: str
    uid: int
    gid: int
    quota: str = ""
    name: str = ""
    options: str = ""
    active: bool = True
    imap_access: str = "on"
    pop3_access: str = "on"
    smtp_access: str = "on"

    def fields(self) -> list[tuple[str, str]]:
        """The authpipe account fields (PROTOCOLS.md 4.4), in authdaemond's order. No
        PASSWD: no Courier module downstream needs the hash, and authtest would print it."""
        out = [
            ("UID", str(self.uid)),
            ("GID", str(self.gid)),
            ("HOME", self.home),
            ("ADDRESS", self.address),
            ("MAILDIR", self.maildir),
        ]
        if self.name:
            out.append(("NAME", self.name))
        if self.quota:
            out.append(("QUOTA", self.quota))
        if self.options:
            out.append(("OPTIONS", self.options))
        return out

    def access_for(self, service: str) -> str:
        """How ``service`` may be used: "on", "off", or "app" (app passwords only).
        A service without a switch (not imap, pop3 or smtp) is "on"."""
        if service == "imap":
            return self.imap_access
        if service == "pop3":
            return self.pop3_access
        if service == "smtp":
            return self.smtp_access
        return "on"

    def maildir_path(self) -> str:
        """The Maildir as a path: MAILDIR is relative to HOME unless absolute (4.4)."""
        return os.path.normpath(os.path.join(self.home, self.maildir))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _flag(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bytes | bytearray):  # BIT(1) columns
        return any(value)
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "n", "no", "false", "off", "")
    return bool(value)


ACCESS_VALUES = ("on", "off", "app")
_bad_access_logged: set[str] = set()


def _access(value: Any, column: str) -> str:
    """An access switch: NULL (or no such column) is "on"; an unknown value is "off", so
    a typo in hand-typed SQL never opens a service (logged once per value)."""
    if value is None:
        return "on"
    text = _text(value).strip().lower()
    if text in ACCESS_VALUES:
        return text
    if text not in _bad_access_logged and len(_bad_access_logged) < 100:
        _bad_access_logged.add(text)
        log.warning("%s %r is not on, off or app: treated as off", column, text[:20])
    return "off"


def _clean(value: str) -> str:
    """Optional single-line fields: drop what would break the NAME=value line."""
    return "" if any(c in value for c in "\r\n\0") else value


def _number(value: Any, what: str) -> int:
    try:
        n = int(_text(value).strip())
    except ValueError:
        raise AccountError(f"{what} is not a number") from None
    if n <= 0:
        # atol() semantics downstream: 0 would mean root; courier skips such entries.
        raise AccountError(f"{what} must be positive")
    return n


def default_maildir(address: str) -> str:
    """The seed's layout '<domain>/<user>/', as its authmysqlrc MYSQL_MAILDIR_FIELD builds
    it: CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/')."""
    local, at, domain = address.rpartition("@")
    return f"{domain}/{local}/" if at else f"{address}/"


def quota_text(row: dict[str, Any]) -> str:
    if row.get("quota") not in (None, ""):
        text = _text(row["quota"]).replace(" ", "")
        if text.isdigit():
            text += "S"
        if text == "0S":
            return ""
        if not _QUOTA.fullmatch(text):
            log.warning("ignoring malformed quota %r (want e.g. 1000000S,1000C)", text[:40])
            return ""
        return text
    parts = []
    for column, suffix in (("quota_bytes", "S"), ("quota_messages", "C")):
        value = row.get(column)
        if value not in (None, "") and int(value) > 0:
            parts.append(f"{int(value)}{suffix}")
    return ",".join(parts)


def account_from_row(row: dict[str, Any], cfg: Config) -> Account:
    """Build an Account from a row keyed by lower-cased column names."""
    address = _text(row.get("address")).strip()
    if not address or _clean(address) != address:
        raise AccountError("the query returned no usable 'address' column")
    box = cfg.mailbox
    home = _text(row.get("home")).strip() or box.base
    if _clean(home) != home:
        raise AccountError("home contains a line break")
    maildir = _text(row.get("maildir")).strip() or default_maildir(address)
    if _clean(maildir) != maildir:
        raise AccountError("maildir contains a line break")
    uid = _number(row["uid"], "uid") if row.get("uid") is not None else box.uid
    gid = _number(row["gid"], "gid") if row.get("gid") is not None else box.gid
    return Account(
        address=address,
        password=_text(row.get("password")),
        home=home,
        maildir=maildir,
        uid=uid,
        gid=gid,
        quota=quota_text(row),
        name=_clean(_text(row.get("name")).strip()),
        options=_clean(_text(row.get("options")).strip()),
        active=_flag(row.get("active")),
        imap_access=_access(row.get("imap_access"), "imap_access"),
        pop3_access=_access(row.get("pop3_access"), "pop3_access"),
        smtp_access=_access(row.get("smtp_access"), "smtp_access"),
    )


# ``conn`` is a pymysql connection lent by Database.run (typed Any: pymysql has no stubs).
def _named_rows(
    conn: Any, sql: str, params: Sequence[Any] | dict[str, Any] | None
) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute(sql, params or None)
        names = [_ALIASES.get(d[0].lower(), d[0].lower()) for d in cur.description or ()]
        return [dict(zip(names, row, strict=False)) for row in cur.fetchall()]


def _update(conn: Any, sql: str, params: dict[str, str]) -> int:
    with conn.cursor() as cur:
        return int(cur.execute(sql, params))


class AccountSource:
    """The account queries of one configuration. Every method raises DatabaseError when
    the database cannot answer; ``AccountError`` when a row is unusable.

    Account fetches are batched: a fetch starts a database job at once when fewer than
    ``max_jobs`` are running, otherwise it joins the batch that the next finishing job
    starts. A batch is one statement, the account query once per login joined with UNION
    ALL (see ``_union``), so a burst of logins costs one trip to a worker thread and one
    round trip to the database, and pymysql reads the column definitions once instead of
    per login (most of its cost for a one-row result). Every query still starts after its
    login arrived: a changed password is seen at once. A query that cannot be wrapped
    (ORDER BY, LIMIT, UNION, ...: see ``_unionable``) runs once per login in the batch.
    """

    # Account jobs running at once; the rest of the pool serves lookups. One is enough when
    # a batch is one statement (a round trip whatever its size), and makes batches larger.
    JOBS_UNION = 1
    JOBS_EACH = 2  # when each login's query runs on its own: do not serialise them all
    MAX_BATCH = 32  # logins per job: one slow batch must not hold up too many

    def __init__(self, cfg: Config, db: Database):
        self.cfg = cfg
        self.db = db
        self.query = expansions.compile_query(cfg.auth.query)
        self._waiting: list[tuple[Any, asyncio.Future[list[dict[str, Any]]]]] = []
        self._jobs = 0
        self.union = _unionable(self.query.sql)

    async def fetch(self, login: str) -> Account | None:
        """The account for a login name, or None when there is none."""
        try:
            params = self.query.bind(login)
        except expansions.Suppressed:
            return None  # as in Postfix: e.g. %d of a name without a domain
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._waiting.append((params, future))
        if self._jobs < self.max_jobs:
            self._start_job()
        rows = await future
        if not rows:
            return None
        if len(rows) > 1:
            log.warning("[auth] query returned %d rows for one login; using the first", len(rows))
        return account_from_row(rows[0], self.cfg)

    def _start_job(self) -> None:
        batch = self._waiting[: self.MAX_BATCH]
        del self._waiting[: self.MAX_BATCH]
        batch = [(params, future) for params, future in batch if not future.done()]
        if not batch:
            return
        self._jobs += 1
        task = asyncio.get_running_loop().create_task(self._run_job(batch))
        task.add_done_callback(_retrieve)

    async def _run_job(
        self,
        batch: list[tuple[Any, asyncio.Future[list[dict[str, Any]]]]],
    ) -> None:
        all_params = [params for params, _ in batch]
        try:
            results = await self._rows(all_params)
        except Exception as e:  # DatabaseError, or a bug: every waiter hears of it
            _fail(batch, e)
        except BaseException:  # cancelled (shutting down): a temporary failure for them
            _fail(batch, DatabaseError("account query cancelled"))
            raise
        else:
            for (_, future), rows in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(rows)
        finally:
            self._jobs -= 1
            while self._waiting and self._jobs < self.max_jobs:
                self._start_job()

    @property
    def max_jobs(self) -> int:
        return self.JOBS_UNION if self.union else self.JOBS_EACH

    async def _rows(self, all_params: list[Any]) -> list[list[dict[str, Any]]]:
        """The account query's rows for each login of a batch, in order."""
        sql = self.query.sql
        if self.union and len(all_params) > 1:
            union_sql, flat = _union(sql, all_params)
            try:
                rows = await self.db.run(
                    lambda conn: _named_rows(conn, union_sql, flat), retry=True
                )
            except DatabaseError as e:
                if e.errno not in _UNION_ERRORS:
                    raise
                # The query itself may be what the server refused (an unknown column):
                # then it fails below as well, and that is not the wrapping's fault.
                each = await self._each(sql, all_params)
                # The server would not take the wrapped query: say so once, stop trying.
                log.warning("[auth] query cannot be batched (%s); running it once per login", e)
                self.union = False
                return each
            out: list[list[dict[str, Any]]] = [[] for _ in all_params]
            for row in rows:
                out[int(row.pop(_BATCH_COLUMN))].append(row)
            return out
        return await self._each(sql, all_params)

    async def _each(self, sql: str, all_params: list[Any]) -> list[list[dict[str, Any]]]:
        return await self.db.run(
            lambda conn: [_named_rows(conn, sql, params) for params in all_params], retry=True
        )

    async def enumerate(self) -> list[Account]:
        sql = self.cfg.auth.enumerate_query
        rows = await self.db.run(lambda conn: _named_rows(conn, sql, None), retry=True)
        accounts = []
        for row in rows:
            try:
                account = account_from_row(row, self.cfg)
            except AccountError as e:
                log.warning("ENUMERATE: skipping a row: %s", e)
                continue
            if account.active:
                accounts.append(account)
        return accounts

    async def update_password(self, sql: str, address: str, old: str, new: str) -> int:
        """Run an update query; the number of rows changed (0: the stored hash is no
        longer ``old``, someone changed it meanwhile). On the writer: with it down this
        raises DatabaseError, the rehash waits for a later login and PASSWD fails."""
        params = {"address": address, "old": old, "new": new}
        return await self.db.run(lambda conn: _update(conn, sql, params), write=True)


# The batch statement's extra column: which login of the batch a row belongs to.
_BATCH_COLUMN = "vmaild_batch_login"
# Words after which a query is not wrapped: the optimizer may drop an ORDER BY inside a
# derived table, and the rest change what "the query's rows" means.
_NOT_UNIONABLE = re.compile(
    r"\b(ORDER\s+BY|LIMIT|UNION|INTO|FOR\s+UPDATE|LOCK\s+IN|"
    r"PROCEDURE|WITH)\b",
    re.IGNORECASE,
)
# MySQL errors meaning "this query cannot be a derived table" (duplicate column name,
# syntax, derived table needs an alias, unknown column, ...): fall back, do not fail.
_UNION_ERRORS = frozenset({1060, 1064, 1248, 1054, 1221, 1222, 1235, 1349})


def _unionable(sql: str) -> bool:
    # Literals are already placeholders (expansions.py), so a keyword here is SQL.
    return sql.lstrip().upper().startswith("SELECT") and not _NOT_UNIONABLE.search(sql)


def _union(sql: str, all_params: list[Any]) -> tuple[str, list[Any]]:
    """One statement for a batch: the query once per login, each arm a derived table
    tagged with the login's position, so rows map back whatever address they carry."""
    inner = sql.rstrip().rstrip(";")
    arms = [
        f"SELECT {i} AS {_BATCH_COLUMN}, q.* FROM ({inner}) AS q" for i in range(len(all_params))
    ]
    return " UNION ALL ".join(arms), [value for params in all_params for value in params]


def _fail(batch: list[tuple[Any, asyncio.Future[list[dict[str, Any]]]]], error: Exception) -> None:
    for _, future in batch:
        if not future.done():  # a waiter whose client left is cancelled already
            future.set_exception(error)


def _retrieve(task: asyncio.Task[None]) -> None:
    # Its waiters got the outcome; this only keeps asyncio from logging it a second time.
    if not task.cancelled():
        task.exception()
