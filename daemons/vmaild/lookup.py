"""Map lookups: one key in, a value, "not found" or a temporary failure out.

This is the one place that knows what a map is: its compiled query, its address rules and
its TTLs. The tcp: and socketmap: servers only translate its three answers into bytes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import addresses, expansions
from .cache import Cache, Outcome, TTLs
from .config import Config
from .db import Database, DatabaseError
from .failures import TemporaryFailure
from .logsafe import shown
from .metrics import Metrics
from .sections import MapConfig

if TYPE_CHECKING:
    from .pending import PendingChanges
    from .schema_fit import SchemaFit

log = logging.getLogger("vmaild.lookup")


class UnknownMap(KeyError):
    """A socketmap request named a map that is not configured (a Postfix config error)."""


@dataclass(frozen=True)
class _Map:
    config: MapConfig
    queries: tuple[expansions.CompiledQuery, ...]  # its own first, then its chain's
    delimiters: str
    sources: tuple[str, ...]  # the map whose query each one is, for schema_fit


def join_rows(rows: list[tuple[object, ...]]) -> str | None:
    """Postfix's rule for SQL tables: every column of every row, joined with commas.
    NULL and empty columns are left out; nothing left means "not found"."""
    parts = []
    for row in rows:
        for col in row:
            if col is None:
                continue
            text = col.decode("utf-8") if isinstance(col, bytes | bytearray) else str(col)
            if text:
                parts.append(text)
    return ",".join(parts) if parts else None


class Lookups:
    def __init__(
        self,
        config: Config,
        db: Database,
        cache: Cache,
        metrics: Metrics,
        fit: SchemaFit | None = None,
    ):
        self.db = db
        self.cache = cache
        self.metrics = metrics
        self.fit = fit
        mode = config.cache.confirm_not_found
        self.confirm = mode == "yes" or (mode == "auto" and config.database.replicated)
        # Changes vmaild was told of that the read host has not applied (pending.py).
        self.pending: PendingChanges | None = None
        self.maps: dict[str, _Map] = {}
        d = config.cache
        for name, m in config.maps.items():
            sources = (name, *m.chain)
            queries = tuple(expansions.compile_query(config.maps[n].query) for n in sources)
            self.maps[name] = _Map(m, queries, config.delimiter_for(m), sources)
            cache.configure_map(
                name,
                TTLs(
                    ttl=d.ttl if m.ttl is None else m.ttl,
                    negative_ttl=d.negative_ttl if m.negative_ttl is None else m.negative_ttl,
                    stale_ttl=d.stale_ttl,
                    stale_negative=m.stale_negative,
                ),
                config.delimiter_for(m),
                m.fold_case,
            )

    def cached(self, map_name: str, key: str) -> tuple[bool, str | None]:
        """The fast path: (True, value-or-None) when a fresh cache entry answers at once.
        The servers call it inside data_received, so a hit costs no task switch."""
        m = self.maps.get(map_name)
        if m is None:
            raise UnknownMap(map_name)
        started = time.perf_counter()
        key = addresses.normalise(key, m.config.fold_case)
        hit, value = self.cache.fresh(map_name, key)
        if hit and value is None and self._held_back(m, key):
            return False, None  # lookup() answers it: a temporary failure
        if hit:
            self._observe(map_name, Outcome.HIT if value is not None else Outcome.NOTFOUND, started)
        return hit, value

    async def lookup(self, map_name: str, key: str) -> str | None:
        """The value for ``key``, or None for "not found". Raises UnknownMap or
        TemporaryFailure; never turns an error into None."""
        m = self.maps.get(map_name)
        if m is None:
            raise UnknownMap(map_name)
        started = time.perf_counter()
        key = addresses.normalise(key, m.config.fold_case)
        try:
            value, outcome = await self.cache.get(map_name, key, lambda: self._resolve(m, key))
        except DatabaseError as e:
            self._observe(map_name, Outcome.ERROR, started)
            self.metrics.lookup_errors.labels(map_name).inc()
            # A query that does not fit the schema was reported once (schema_fit.py).
            log.log(
                logging.DEBUG if e.misfit and self.fit is not None else logging.WARNING,
                "map %s: lookup failed: %s",
                map_name,
                shown(str(e), 500),
            )
            raise TemporaryFailure(str(e)) from e
        if value is None and self._held_back(m, key):
            # vmailctl changed this key and the read host has not applied the commit yet:
            # "not found" may be the state before it (a mailbox just created). 4xx, not 5xx.
            self._observe(map_name, Outcome.ERROR, started)
            self.metrics.lookup_errors.labels(map_name).inc()
            raise TemporaryFailure("a change to this key is not applied on the read host yet")
        self._observe(map_name, outcome, started)
        return value

    def _held_back(self, m: _Map, key: str) -> bool:
        return self.pending is not None and self.pending.holds_back(key, m.delimiters)

    async def _resolve(self, m: _Map, key: str) -> str | None:
        """The value from the read host; a "not found" there is confirmed on the writer
        when the read host may be a replica behind it (``[cache] confirm_not_found``): a
        mailbox created a moment ago must not be refused (5xx) because this host's replica
        has not applied it yet. The writer unavailable: the replica's answer stands (no
        mailbox can be created meanwhile; a 4xx instead would defer every alias-map miss
        while the primary is down)."""
        value = await self._query(m, key, write=False)
        if value is not None or not self.confirm:
            return value
        try:
            value = await self._query(m, key, write=True)
        except DatabaseError as e:
            self.metrics.lookup_confirmations.labels("unavailable").inc()
            log.debug("map %s: not found, not confirmed on the writer: %s", m.sources[0], e)
            return None
        self.metrics.lookup_confirmations.labels("notfound" if value is None else "found").inc()
        return value

    async def _query(self, m: _Map, key: str, *, write: bool) -> str | None:
        for candidate in addresses.candidates(key, m.delimiters, m.config.catchall):
            for source, query in zip(m.sources, m.queries, strict=True):
                try:
                    params = query.bind(candidate)
                except expansions.Suppressed:
                    continue
                try:
                    rows = await self.db.fetch(query.sql, params, write=write)
                except DatabaseError as e:
                    if self.fit is not None and not write:
                        self.fit.report(f"map {source}", "query", e)
                    raise
                value = join_rows(rows)
                if value is not None:
                    return value
        return None

    def _observe(self, map_name: str, outcome: Outcome, started: float) -> None:
        self.metrics.lookup_stats.observe(map_name, outcome.value, time.perf_counter() - started)
