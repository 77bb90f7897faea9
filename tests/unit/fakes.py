"""Fakes for unit tests: a database that answers from a dict, and what the listeners get
from the daemon (``FakeApp``)."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from vmaild import config
from vmaild.cache import Cache, TTLs
from vmaild.codec.policy import DEFAULT_MAX_REQUEST as DEFAULT_MAX_POLICY_REQUEST
from vmaild.db import DatabaseError
from vmaild.lookup import Lookups
from vmaild.metrics import Metrics
from vmaild.servers.auth import AuthProtocol
from vmaild.servers.base import ListenerContext, SequentialProtocol
from vmaild.servers.control import ControlProtocol
from vmaild.servers.interfaces import AuthAnswerer, Authenticator, MapLookups, PolicyDecider
from vmaild.servers.policy import PolicyProtocol
from vmaild.servers.sasl import SaslProtocol
from vmaild.servers.socketmap import SocketmapProtocol
from vmaild.servers.tcp_table import TcpTableProtocol


class FakeDatabase:
    """Answers ``fetch`` from {(sql, params): rows}; ``down`` makes every query fail."""

    def __init__(self, rows: dict[str, list[tuple[Any, ...]]] | None = None):
        self.rows = rows or {}  # keyed by the first parameter
        self.down = False
        self.queries: list[tuple[str, tuple[Any, ...]]] = []
        self.delay = 0.0

    async def fetch(
        self, sql: str, params: tuple[Any, ...] = (), *, write: bool = False
    ) -> list[tuple[Any, ...]]:
        self.queries.append((sql, tuple(params)))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise DatabaseError("(2003) Can't connect to MySQL server")
        return self.rows.get(params[0] if params else "", [])


CONFIG = """\
[database]
hosts = 127.0.0.1
user = u
dbname = d

[map mailboxes]
query = SELECT maildir FROM users WHERE email='%s'

[map aliases]
query = SELECT destination FROM forwardings WHERE source='%s'
catchall = yes

[map domains]
query = SELECT domain FROM domains WHERE domain='%s'
"""


def make_lookups(
    rows: dict[str, list[tuple[Any, ...]]] | None = None, text: str = CONFIG
) -> tuple[Lookups, FakeDatabase, Metrics]:
    cfg = config.parse(text)
    db = FakeDatabase(rows)
    metrics = Metrics()
    cache = Cache(
        TTLs(cfg.cache.ttl, cfg.cache.negative_ttl, cfg.cache.stale_ttl), cfg.cache.max_entries
    )
    return Lookups(cfg, db, cache, metrics), db, metrics  # type: ignore[arg-type]


class FakeApp:
    """What ``daemon.App`` gives the listeners, and nothing else: one ``ListenerContext``
    and a getter per thing answered from (servers/interfaces.py). Assigning ``lookups``,
    ``auth`` or ``policy`` is what a SIGHUP reload does: the next request, even on a
    connection already open, is answered by the new one."""

    def __init__(
        self,
        *,
        lookups: Lookups | None = None,
        auth: AuthAnswerer | None = None,
        policy: PolicyDecider | None = None,
        metrics: Metrics | None = None,
        policy_max_request: int = DEFAULT_MAX_POLICY_REQUEST,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.ctx = ListenerContext(metrics or Metrics())
        self.lookups = lookups
        self.auth = auth
        self.authenticator = authenticator
        self.policy = policy
        self.policy_max_request = policy_max_request

    @property
    def metrics(self) -> Metrics:
        return self.ctx.metrics

    @property
    def connections(self) -> set[SequentialProtocol]:
        return self.ctx.connections

    # -- the getters, as daemon.App's current_* ------------------------------------------------

    def current_lookups(self) -> MapLookups:
        return _given(self.lookups, "lookups")

    def current_auth(self) -> AuthAnswerer:
        return _given(self.auth, "auth")

    def current_authenticator(self) -> Authenticator:
        return _given(self.authenticator, "authenticator")

    def current_policy(self) -> PolicyDecider:
        return _given(self.policy, "policy")

    def flush_cache(self, reason: str) -> int:
        cache = _given(self.lookups, "lookups").cache
        dropped = len(cache)
        cache.flush()
        return dropped

    async def control_flush(self) -> int:
        return self.flush_cache("control")

    # -- the listeners, built as daemon.App.wanted_listeners builds them -----------------------

    def tcp_table(self, map_name: str) -> TcpTableProtocol:
        return TcpTableProtocol(self.ctx, self.current_lookups, map_name)

    def socketmap(self) -> SocketmapProtocol:
        return SocketmapProtocol(self.ctx, self.current_lookups)

    def auth_listener(self) -> AuthProtocol:
        return AuthProtocol(self.ctx, self.current_auth)

    def sasl_listener(self) -> SaslProtocol:
        return SaslProtocol(self.ctx, self.current_authenticator)

    def policy_listener(self) -> PolicyProtocol:
        return PolicyProtocol(self.ctx, self.current_policy, self.policy_max_request)

    def control(self) -> ControlProtocol:
        return ControlProtocol(self.ctx, self.control_flush)


_T = TypeVar("_T")


def _given(thing: _T | None, what: str) -> _T:
    if thing is None:
        raise LookupError(f"this FakeApp was built without {what}")
    return thing
