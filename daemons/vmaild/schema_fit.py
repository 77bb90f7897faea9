"""Does the configuration fit the database? Every configured query, tried once.

A default ``[auth] query`` on the seed's tables (they have no ``users.maildir``), or a
policy query on a table that is not there, fails on every request with the same server
error. That is a configuration mistake, not an outage: it is reported once, in one line
naming the file, the section and key, what the server is missing and the fix, and as
``vmaild_config_schema_errors{section, key} 1``. Requests that hit it still get a
temporary failure (a bounce would lose mail), but the database host is not marked down
(db.py, ``SCHEMA_ERRNOS``) and each request no longer logs its own warning.

How a query is tried: ``EXPLAIN`` and the statement, with placeholder values. The server
parses it and resolves every table, column, function and grant as it would for the
statement itself, but does not execute it: no row is returned or written and no trigger
fires (the optimiser may read a row by primary key to plan; MariaDB and MySQL explain
SELECT, INSERT, REPLACE, UPDATE and DELETE). Each probe also
runs inside a transaction that is rolled back: READ ONLY for a SELECT, so that not even a
stored function the optimiser evaluates can write; an ordinary one for the writes (MariaDB
refuses to explain a write inside a READ ONLY transaction, error 1792). Running the
statement itself was not chosen: a SELECT with a dummy key would be cheap, but the
enumerate query reads every account, and for a write the rollback would be the only
protection. Statements of any other kind (CALL ...) are not tried: EXPLAIN cannot take them,
and a false alarm is worse than none. So are views the user may not EXPLAIN (1345).

The placeholder values never matter (numbers get 0, text a dummy address under the
reserved ``.invalid`` domain); while the transaction lasts (one round trip) it may hold a
gap lock on that key.

When: ``vmaild serve`` probes in the background once the database answers (start-up never
waits for it: a host booting with MariaDB still starting must not crash-loop), after every
reload, and again every ``RECHECK`` seconds while something does not fit, so the gauge goes
back to 0 once ``vmailctl db migrate`` ran; and when a request meets a misfit the probes
did not see (a column dropped under a running daemon). ``vmaild check`` runs the same probes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pymysql  # type: ignore[import-untyped]  # pymysql ships no type hints

from . import expansions
from .ctl import schema as vmailctl_schema
from .db import SCHEMA_ERRNOS, Database, DatabaseError, errno_of

if TYPE_CHECKING:
    from .config import Config
    from .metrics import Metrics

log = logging.getLogger("vmaild.schema")

RECHECK = 60.0  # seconds between probes while something does not fit
FIRST_RETRY = 1.0  # while the database does not answer: 1, 2, 4 ... MAX_RETRY seconds
MAX_RETRY = 30.0
DUMMY = "vmaild-schema-probe@probe.invalid"
# Policy parameters that are numbers (bucket numbers, counts).
_NUMERIC = frozenset({"since", "bucket", "messages", "recipients", "before"})
_EXPLAINABLE = frozenset({"SELECT", "WITH", "INSERT", "REPLACE", "UPDATE", "DELETE"})
_FIRST_WORD = re.compile(r"[\s(]*([A-Za-z]+)")
# Errors after which a probe tells nothing either way: EXPLAIN on a view needs SHOW VIEW
# (1345), a construct EXPLAIN does not support (1235).
_UNJUDGED = frozenset({1345, 1235})

# Queries for the seed's four tables, by key (AuthConfig's docstring, README "Logins").
SEED_FORMS: dict[tuple[str, str], str] = {
    ("auth", "query"): "SELECT email AS address, password FROM users WHERE email='%s'",
    ("auth", "enumerate_query"): "SELECT email AS address FROM users",
    ("auth", "passwd_query"): (
        "UPDATE users SET password = %(new)s WHERE email = %(address)s AND password = %(old)s"
    ),
}
# Switches that turn off what needs the query.
SWITCHES: dict[tuple[str, str], str] = {
    ("auth", "rehash_query"): "[auth] rehash = no",
    ("policy", "recipient_query"): "[policy] recipient_check = no and quota_check = no",
    ("policy", "sender_query"): "[policy] sender_check = no",
    ("policy", "ratelimit_query"): "[policy] ratelimit_check = no",
    ("policy", "ratelimit_update"): "[policy] ratelimit_check = no",
    ("policy", "ratelimit_prune"): "[policy] ratelimit_check = no",
    ("policy", "ratelimit_lock"): "[policy] ratelimit_check = no",
}


@dataclass(frozen=True)
class Probe:
    """One configured statement, as the daemon sends it (pymysql parameter style)."""

    section: str  # "auth", "policy", "map NAME"
    key: str
    sql: str
    params: tuple[Any, ...] | dict[str, Any] | None
    read_only: bool


@dataclass(frozen=True)
class Misfit:
    """A configured statement the database refused; ``line()`` is what an admin reads."""

    path: str
    section: str
    key: str
    errno: int
    message: str  # the server's own words

    @property
    def where(self) -> tuple[str, str]:
        return self.section, self.key

    def line(self) -> str:
        return (
            f"{self.path}: [{self.section}] {self.key} does not fit the database: "
            f"{describe(self.errno, self.message)}; {fix(self)}"
        )


def describe(errno: int, message: str) -> str:
    """What the server is missing, as it named it."""
    if errno == 1054 and (m := re.search(r"Unknown column '([^']*)'", message)):
        return f"unknown column '{m.group(1)}' (error 1054)"
    if errno == 1146 and (m := re.search(r"Table '([^']*)' doesn't exist", message)):
        return f"no table '{m.group(1)}' (error 1146)"
    text = message if len(message) <= 200 else message[:200] + "..."
    return f"({errno}) {text}"


def _missing_name(m: Misfit) -> str | None:
    """The unqualified name of the missing column or table, if the server gave one."""
    if m.errno == 1054:
        found = re.search(r"Unknown column '([^']*)'", m.message)
    elif m.errno == 1146:
        found = re.search(r"Table '([^']*)' doesn't exist", m.message)
    else:
        return None
    return found.group(1).rsplit(".", 1)[-1] if found else None


def _migrate_creates(m: Misfit) -> bool:
    """Would ``vmailctl db migrate`` create what the server is missing?"""
    name = _missing_name(m)
    if name is None:
        return False
    if m.errno == 1146:
        return name in vmailctl_schema.BY_NAME
    return any(name in t.column_names() for t in vmailctl_schema.TABLES)


def fix(m: Misfit) -> str:
    """The way out: migrate the schema, or set the key (or switch off what needs it)."""
    seed, switch = SEED_FORMS.get(m.where), SWITCHES.get(m.where)
    if _migrate_creates(m):
        ways = ["run 'vmailctl db migrate'"]
        if seed:
            ways.append(f"set [{m.section}] {m.key} = {seed}")
    elif m.errno in (1142, 1143):
        ways = [
            "grant the [database] user what the statement needs",
            f"correct [{m.section}] {m.key}",
        ]
    else:
        ways = [f"correct [{m.section}] {m.key}"]
    if switch:
        ways.append(f"set {switch}")
    return "fix: " + ", or ".join(ways)


# -- the probes ------------------------------------------------------------------------------


def _probe(
    section: str, key: str, sql: str, params: tuple[Any, ...] | dict[str, Any] | None
) -> Probe | None:
    word = _FIRST_WORD.match(sql)
    verb = word.group(1).upper() if word else ""
    if verb not in _EXPLAINABLE:
        log.debug(
            "[%s] %s is not checked against the schema: EXPLAIN cannot take %s",
            section,
            key,
            verb or "it",
        )
        return None
    return Probe(section, key, sql, params, read_only=verb in ("SELECT", "WITH"))


def _postfix_probe(section: str, key: str, query: str) -> Probe | None:
    compiled = expansions.compile_query(query)
    return _probe(section, key, compiled.sql, (DUMMY,) * len(compiled.params))


def probes(cfg: Config) -> list[Probe]:
    """Every statement the configuration will send: each [map] query, and the queries of
    the [auth] and [policy] services that are on (listen set), as those services use them."""
    found: list[Probe | None] = [
        _postfix_probe(f"map {name}", "query", m.query) for name, m in cfg.maps.items()
    ]
    ac = cfg.auth
    if ac.listen is not None:
        found.append(_postfix_probe("auth", "query", ac.query))
        found.append(_probe("auth", "enumerate_query", ac.enumerate_query, None))
        updates = {"address": DUMMY, "old": DUMMY, "new": DUMMY}
        found.append(_probe("auth", "passwd_query", ac.passwd_query, updates))
        if ac.rehash:
            found.append(_probe("auth", "rehash_query", ac.rehash_query, updates))
    pc = cfg.policy
    if pc.listen is not None:
        from .policy.queries import compile_named
        from .policy.settings import QUERY_PARAMS

        keys = []
        if pc.sender_check:
            keys.append("sender_query")
        if pc.recipient_check or pc.quota_check:
            keys.append("recipient_query")
        if pc.ratelimit_check and (pc.ratelimit_messages > 0 or pc.ratelimit_recipients > 0):
            keys += ["ratelimit_query", "ratelimit_update", "ratelimit_lock"]
            if pc.ratelimit_prune_interval > 0:
                keys.append("ratelimit_prune")
        for key in keys:
            q = compile_named(getattr(pc, key), QUERY_PARAMS[key])
            values = tuple(0 if n in _NUMERIC else DUMMY for n in q.names)
            found.append(_probe("policy", key, q.sql, values or None))
    return [p for p in found if p is not None]


def run_probes(conn: Any, todo: Sequence[Probe], path: str) -> list[Misfit]:
    """Explain each statement on ``conn`` (a pymysql connection, in a worker thread).
    Returns what does not fit; raises what is not the statement's fault (a lost
    connection, a timeout): the caller tries again later."""
    found = []
    for probe in todo:
        error = _explain(conn, probe)
        if error is not None:
            found.append(Misfit(path, probe.section, probe.key, *error))
    return found


def _explain(conn: Any, probe: Probe) -> tuple[int, str] | None:
    with conn.cursor() as cur:
        cur.execute("START TRANSACTION READ ONLY" if probe.read_only else "START TRANSACTION")
        try:
            cur.execute("EXPLAIN " + probe.sql, probe.params)
            cur.fetchall()
        except pymysql.err.Error as e:
            errno = errno_of(e)
            if errno in SCHEMA_ERRNOS:
                return errno, str(e.args[1]) if len(e.args) > 1 else str(e)
            if errno in _UNJUDGED:
                log.debug("[%s] %s cannot be checked: %s", probe.section, probe.key, e)
                return None
            raise
        finally:
            cur.execute("ROLLBACK")
    return None


def writes(todo: Sequence[Probe]) -> bool:
    """True when some probe is of a write statement: then they all run on the writer, since
    a read-only replica refuses even EXPLAIN of one (error 1290). The schema is the same on
    every host of a replicated setup, so one host judges them all."""
    return any(not p.read_only for p in todo)


def check_now(cfg: Config) -> list[Misfit]:
    """The probes of ``cfg``, run now (``vmaild check``); DatabaseError when the database
    does not answer."""
    db = Database(cfg.database)
    try:
        todo = probes(cfg)
        if not todo:
            return []
        return db.run_sync(lambda conn: run_probes(conn, todo, cfg.path), write=writes(todo))
    finally:
        db.close()


# -- the daemon's side -----------------------------------------------------------------------


class SchemaFit:
    """The misfits of one configuration (one Runtime): each logged once, and the gauge.

    ``watch`` probes in the background; ``report`` is called by a request that got a misfit
    error (a statement that was not probed, or a schema changed since): the line is logged
    once and the gauge set, and the request answers a temporary failure without a warning
    of its own.
    """

    def __init__(self, cfg: Config, metrics: Metrics | None = None):
        self.path = cfg.path
        self.metrics = metrics
        self.probes = probes(cfg)
        self.current: dict[tuple[str, str], Misfit] = {}
        self.checked = False
        self.active = True  # False once this configuration was replaced
        self._logged: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()  # a request met a misfit: probe again

    def report(self, section: str, key: str, error: DatabaseError) -> bool:
        """True when ``error`` is a misfit (then logged once and in the gauge)."""
        if not error.misfit:
            return False
        message = re.sub(r"^\(\d+\) ", "", str(error))
        m = Misfit(self.path, section, key, error.errno or 0, message)
        if m.where not in self.current:
            self.current[m.where] = m
            self._log(m)
            self._set(m.where, 1)
            self._wake.set()
        return True

    def apply(self, found: Sequence[Misfit]) -> None:
        """A complete probe run's result."""
        new = {m.where: m for m in found}
        for m in new.values():
            self._log(m)
        probed = {(p.section, p.key) for p in self.probes}
        for where, m in self.current.items():
            if where not in probed:
                new.setdefault(where, m)  # reported by a request; no probe can clear it
            elif where not in new:
                log.info("[%s] %s fits the database now", *where)
        self.current = new
        for where in probed:
            self._set(where, 1 if where in new else 0)
        if not self.checked and not new:
            log.info(
                "the configuration fits the database (%d statements checked)", len(self.probes)
            )
        self.checked = True

    def publish(self) -> None:
        """Make the gauge this configuration's: the replaced one's series go."""
        if self.metrics is None:
            return
        self.metrics.schema_errors.clear()
        for where in self.current:
            self._set(where, 1)

    async def watch(self, db: Database) -> None:
        """Probe once the database answers; again every RECHECK s while something does not
        fit. When all fit, wait until a request meets a misfit (the schema changed under
        the running daemon), then probe again, so that the gauge can clear after a fix."""
        delay, said = FIRST_RETRY, False
        while self.probes and self.active:
            self._wake.clear()
            try:
                found = await db.run(
                    lambda conn: run_probes(conn, self.probes, self.path),
                    retry=True,
                    write=writes(self.probes),
                )
            except DatabaseError as e:
                if not said:
                    log.info("schema check waits for the database: %s", e)
                    said = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY)
                continue
            except RuntimeError:  # the pool was shut down: this configuration is gone
                return
            delay = FIRST_RETRY
            if not self.active:
                return
            self.apply(found)
            if self.current:
                await asyncio.sleep(RECHECK)
            else:
                await self._wake.wait()

    def _log(self, m: Misfit) -> None:
        if m.where not in self._logged:
            self._logged.add(m.where)
            log.error("%s", m.line())

    def _set(self, where: tuple[str, str], value: int) -> None:
        if self.metrics is not None and self.active:
            self.metrics.schema_errors.labels(*where).set(value)
