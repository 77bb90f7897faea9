"""An in-memory stand-in for the policy schema, answering the default [policy] queries.

Not a test module; the policy tests (test_policy_*, test_servers_policy, test_schema_fit)
import it. It recognises each default query by a fragment of its SQL and binds the
parameters by name through the compiled query, so a change to a default query's parameter
order does not silently break the fake.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from vmaild import config
from vmaild.db import DatabaseError
from vmaild.metrics import Metrics
from vmaild.policy import recipient, sender
from vmaild.policy.queries import compile_named
from vmaild.policy.service import PolicyService
from vmaild.sections import PolicyConfig

BASE = """\
[database]
hosts = 127.0.0.1
user = u
dbname = d

[policy]
listen = 127.0.0.1:10040
"""


@dataclass
class User:
    active: Any = 1
    quota_bytes: int = 0
    quota_messages: int = 0
    maildir: str | None = None


@dataclass
class FakePolicyDB:
    users: dict[str, User] = field(default_factory=dict)
    domains: dict[str, Any] = field(default_factory=dict)  # domain -> active
    forwardings: dict[str, tuple[str, Any]] = field(default_factory=dict)  # src -> (dest, active)
    grants: set[tuple[str, str]] = field(default_factory=set)  # (login, sender)
    counters: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    down: bool = False
    delay: float = 0.0
    queries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # The next this many counting transactions fail with conflict_errno (then work).
    conflicts: int = 0
    conflict_errno: int = 1213

    def __post_init__(self) -> None:
        pc = PolicyConfig()
        self._named = [
            ("recipient", compile_named(pc.recipient_query, recipient.PARAMS)),
            ("sender", compile_named(pc.sender_query, sender.PARAMS)),
            ("select", compile_named(pc.ratelimit_query, frozenset({"login", "since"}))),
            (
                "update",
                compile_named(
                    pc.ratelimit_update, frozenset({"login", "bucket", "messages", "recipients"})
                ),
            ),
            ("prune", compile_named(pc.ratelimit_prune, frozenset({"before"}))),
            ("lock", compile_named(pc.ratelimit_lock, frozenset({"login"}))),
        ]

    def _decode(self, sql: str, params: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
        for kind, q in self._named:
            if q.sql == sql:
                values: dict[str, Any] = {}
                for name, value in zip(q.names, params, strict=True):
                    values.setdefault(name, value)
                return kind, values
        raise AssertionError(f"unexpected query {sql!r}")

    async def _enter(self, sql: str, params: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
        kind, values = self._decode(sql, tuple(params))
        self.queries.append((kind, values))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise DatabaseError("(2003) Can't connect to MySQL server on '127.0.0.1'")
        return kind, values

    async def fetch(
        self, sql: str, params: tuple[Any, ...] = (), *, write: bool = False
    ) -> list[tuple[Any, ...]]:
        kind, v = await self._enter(sql, params)
        if kind == "recipient":
            u = self.users.get(v["address"])
            if u is None:
                return []
            return [
                (
                    u.active,
                    self.domains.get(v["domain"]),
                    u.quota_bytes,
                    u.quota_messages,
                    u.maildir,
                )
            ]
        if kind == "sender":
            rows = []
            fwd = self.forwardings.get(v["sender"])
            if fwd and fwd[1] == 1 and v["login"] in fwd[0].lower().replace(" ", "").split(","):
                rows.append((1,))
            grants = {(v["login"], v["sender"]), (v["login"], v["at_domain"])}
            if grants & self.grants:
                rows.append((1,))
            return rows[:1]
        if kind == "select":
            return [
                (b, c[0], c[1])
                for (login, b), c in sorted(self.counters.items())
                if login == v["login"] and b >= v["since"]
            ]
        raise AssertionError(f"{kind} is not a read query")

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        kind, v = await self._enter(sql, params)
        if kind == "update":
            c = self.counters.setdefault((v["login"], v["bucket"]), [0, 0])
            c[0] += v["messages"]
            c[1] += v["recipients"]
            return 1
        if kind == "prune":
            old = [k for k in self.counters if k[1] < v["before"]]
            for k in old:
                del self.counters[k]
            return len(old)
        raise AssertionError(f"{kind} is not a write statement")

    async def run(self, fn: Any, *, write: bool = False) -> Any:
        """A transaction (policy/counting.py) on a connection that answers like the rest
        of this fake; its update is applied at commit only."""
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise DatabaseError("(2003) Can't connect to MySQL server on '127.0.0.1'")
        if self.conflicts > 0:
            self.conflicts -= 1
            self.queries.append(("conflict", {}))
            raise DatabaseError(f"({self.conflict_errno}) conflict", self.conflict_errno)
        return fn(FakeConn(self))

    def apply_update(self, v: dict[str, Any]) -> None:
        c = self.counters.setdefault((v["login"], v["bucket"]), [0, 0])
        c[0] += v["messages"]
        c[1] += v["recipients"]

    def kinds(self) -> list[str]:
        return [k for k, _ in self.queries]


class FakeConn:
    def __init__(self, db: FakePolicyDB):
        self.db = db
        self.staged: list[dict[str, Any]] = []
        self.rows: list[tuple[Any, ...]] = []

    def cursor(self) -> FakeConn:
        return self

    def __enter__(self) -> FakeConn:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def begin(self) -> None:
        self.staged = []

    def commit(self) -> None:
        for v in self.staged:
            self.db.apply_update(v)
        self.staged = []

    def rollback(self) -> None:
        self.staged = []

    def execute(self, sql: str, params: Any = None) -> int:
        if sql.startswith("SET "):
            return 0
        kind, v = self.db._decode(sql, tuple(params or ()))
        self.db.queries.append((kind, v))
        if kind == "select":
            self.rows = [
                (b, c[0], c[1])
                for (login, b), c in sorted(self.db.counters.items())
                if login == v["login"] and b >= v["since"]
            ]
        elif kind == "update":
            self.staged.append(v)
        return 1

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_service(
    db: FakePolicyDB, extra: str = "", base: str = BASE, clock: Clock | None = None
) -> tuple[PolicyService, Metrics]:
    cfg = config.parse(base + extra)
    metrics = Metrics()
    service = PolicyService(cfg, db, metrics, clock=clock or Clock())
    return service, metrics


def request(**attrs: Any) -> Any:
    """A request as Postfix 3.7 sends it at RCPT, with ``attrs`` overriding."""
    from types import MappingProxyType

    from vmaild.codec.policy import PolicyRequest

    base = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": "192.0.2.1",
        "client_name": "mail.example.net",
        "helo_name": "mail.example.net",
        "sender": "someone@example.net",
        "recipient": "alice@example.com",
        "recipient_count": "0",
        "queue_id": "",
        "instance": "a5f.5f3b5d41.4a2.0",
        "size": "0",
        "sasl_method": "",
        "sasl_username": "",
        "sasl_sender": "",
    }
    base.update({k: str(v) for k, v in attrs.items()})
    return PolicyRequest(MappingProxyType(base))


def decide(service: PolicyService, req: Any) -> str | None:
    return asyncio.run(service.decide(req))


def decisions(metrics: Metrics) -> dict[tuple[str, str], float]:
    out = {}
    for metric in metrics.policy_decisions.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                out[(s.labels["check"], s.labels["action"])] = s.value
    return out
