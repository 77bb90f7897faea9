"""Fakes for unit tests: a database that answers from a dict, and an App shell."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from vmaild import config
from vmaild.cache import Cache, TTLs
from vmaild.db import DatabaseError
from vmaild.lookup import Lookups
from vmaild.metrics import Metrics


class FakeDatabase:
    """Answers ``fetch`` from {(sql, params): rows}; ``down`` makes every query fail."""

    def __init__(self, rows: dict[str, list[tuple[Any, ...]]] | None = None):
        self.rows = rows or {}   # keyed by the first parameter
        self.down = False
        self.queries: list[tuple[str, tuple[Any, ...]]] = []
        self.delay = 0.0

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
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


def make_lookups(rows: dict[str, list[tuple[Any, ...]]] | None = None,
                 text: str = CONFIG) -> tuple[Lookups, FakeDatabase, Metrics]:
    cfg = config.parse(text)
    db = FakeDatabase(rows)
    metrics = Metrics()
    cache = Cache(TTLs(cfg.cache.ttl, cfg.cache.negative_ttl, cfg.cache.stale_ttl),
                  cfg.cache.max_entries)
    return Lookups(cfg, db, cache, metrics), db, metrics  # type: ignore[arg-type]


def make_app(lookups: Lookups, metrics: Metrics) -> Any:
    app = SimpleNamespace(metrics=metrics, connections=set(),
                          runtime=SimpleNamespace(lookups=lookups, cache=lookups.cache))
    app.flush_cache = lambda reason: (len(lookups.cache), lookups.cache.flush())[0]
    return app
