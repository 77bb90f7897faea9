"""The lookup cache: TTLs, negative answers, stale-on-error and single-flight.

One dict per map, ``key -> (value or None, fetched_at)``. Dicts keep insertion order and an
entry is re-inserted when it is refreshed, so the oldest entries are always at the front:
both the size bound and the expiry sweep pop from there. At a million entries the memory
is dominated by the key and value strings, so the entry tuple shares one timestamp object
between all entries stored within the same tenth of a second.

Rules (DESIGN.md, "Behaviour that must hold everywhere"):
- a found value is fresh for ``ttl`` seconds, a not-found answer for ``negative_ttl``;
- while the database fails, an expired *found* value is served for up to ``stale_ttl``
  more seconds. An expired not-found answer is not served stale: a user created just
  before an outage must get a temporary error, not a bounce. A map may opt in with
  ``stale_negative`` (``[map NAME] stale_negative = yes``): for an alias map, whose "not
  found" only sends Postfix on to the mailbox map, that keeps mail to cached mailboxes
  flowing through a long outage instead of deferring it once ``negative_ttl`` has passed;
- concurrent misses of one key share one fetch (single-flight);
- a flush also covers the fetches in flight: what they return still answers the requests
  waiting for it, but is not stored, and a request after the flush starts its own fetch.
  Such a fetch may have read the database before the change the flush is for.
- a targeted drop (``drop_address``, ``drop_domain``: a change log entry, changes.py)
  does the same for the keys it names, found through a per-map index (cache_index.py)
  instead of a scan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from .cache_index import KeyIndex, domain_of


class Outcome(StrEnum):
    """How an answer was produced; also the ``outcome`` label of the lookup metrics."""

    HIT = "hit"  # a found value from a fresh cache entry
    MISS = "miss"  # a found value fetched from the database
    NOTFOUND = "notfound"  # not found, from the cache or the database
    STALE = "stale"  # an expired answer, served because the database failed
    ERROR = "error"  # temporary failure: nothing usable in the cache


@dataclass(frozen=True, slots=True)
class TTLs:
    ttl: float
    negative_ttl: float
    stale_ttl: float
    stale_negative: bool = False

    def keep_for(self) -> float:
        """How long an entry can be of use at all, stale included."""
        negative = self.negative_ttl + (self.stale_ttl if self.stale_negative else 0.0)
        return max(self.ttl + self.stale_ttl, negative)


class Cache:
    def __init__(self, ttls: TTLs, max_entries: int, clock: Callable[[], float] = time.monotonic):
        self.default_ttls = ttls
        self.max_entries = max_entries
        self.clock = clock
        self._maps: dict[str, dict[str, tuple[str | None, float]]] = {}
        self._ttls: dict[str, TTLs] = {}
        self._index: dict[str, KeyIndex] = {}
        self._delimiters: dict[str, str] = {}
        self._case_kept: set[str] = set()  # maps whose keys are not lower-cased
        self._inflight: dict[tuple[str, str], asyncio.Future[str | None]] = {}
        # Fetches in flight for keys dropped since they started: their answer is not stored.
        self._dropped_flights: set[asyncio.Future[str | None]] = set()
        self._size = 0
        self._tick = clock()
        self._generation = 0  # bumped by flush(): fetches started before it are not stored

    def configure_map(
        self, name: str, ttls: TTLs, delimiters: str = "", fold_case: bool = True
    ) -> None:
        """``delimiters``: the map's recipient delimiters, so that a change of ``u@d``
        also drops ``u+ext@d``; ``fold_case`` False: its keys keep their case, so a drop
        compares them case-insensitively (through the domain index)."""
        self._ttls[name] = ttls
        self._delimiters[name] = delimiters
        if not fold_case:
            self._case_kept.add(name)

    def __len__(self) -> int:
        return self._size

    def flush(self) -> None:
        self._maps.clear()
        self._index.clear()
        self._size = 0
        self._generation += 1
        self._inflight.clear()
        self._dropped_flights.clear()

    def _now_stamp(self) -> float:
        now = self.clock()
        if now - self._tick >= 0.1 or now < self._tick:
            self._tick = now
        return self._tick

    def peek(self, map_name: str, key: str) -> tuple[str | None, float] | None:
        entry = self._maps.get(map_name, {}).get(key)
        return None if entry is None else (entry[0], self.clock() - entry[1])

    def _entries(self, map_name: str) -> dict[str, tuple[str | None, float]]:
        entries = self._maps.get(map_name)
        if entries is None:
            entries = self._maps[map_name] = {}
            self._index[map_name] = KeyIndex(self._delimiters.get(map_name, ""))
        return entries

    def store(self, map_name: str, key: str, value: str | None) -> None:
        self._put(map_name, key, value, self._now_stamp())

    def _put(self, map_name: str, key: str, value: str | None, stamp: float) -> None:
        """Store at the end of its map (the newest), indexed, within the size bound."""
        if self.max_entries <= 0:
            return
        entries = self._entries(map_name)
        if entries.pop(key, None) is not None:
            self._size -= 1
        else:
            self._index[map_name].add(key)
        entries[key] = (value, stamp)
        self._size += 1
        while self._size > self.max_entries:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        # The map whose first entry is oldest loses it.
        oldest_map, oldest_at = None, float("inf")
        for name, entries in self._maps.items():
            if entries:
                first = next(iter(entries.values()))
                if first[1] < oldest_at:
                    oldest_map, oldest_at = name, first[1]
        if oldest_map is None:
            self._size = 0
            return
        entries = self._maps[oldest_map]
        key = next(iter(entries))
        del entries[key]
        self._index[oldest_map].discard(key)
        self._size -= 1

    def sweep(self) -> int:
        """Drop entries too old to be served even stale; returns how many went."""
        now, dropped = self.clock(), 0
        for name, entries in self._maps.items():
            limit = self._ttls.get(name, self.default_ttls).keep_for()
            index = self._index[name]
            while entries:
                key = next(iter(entries))
                if now - entries[key][1] < limit:
                    break
                del entries[key]
                index.discard(key)
                dropped += 1
        self._size -= dropped
        return dropped

    def export(self) -> dict[str, dict[str, tuple[str | None, float]]]:
        """Every entry, per map and oldest first, ``key -> (value, fetched_at)`` on
        ``clock``: copies (dict.copy, ~25 ms per million entries, no Python code per entry)
        that another thread may read while the loop goes on changing the cache."""
        return {name: entries.copy() for name, entries in self._maps.items() if entries}

    def restore(self, map_name: str, key: str, value: str | None, fetched_at: float) -> None:
        """Put back an entry fetched at ``fetched_at`` (on ``clock``), keeping its age: TTLs,
        stale serving and the size bound treat it as if it had never left. Entries of a map
        must come oldest first (``export``'s order), which keeps the front the oldest."""
        self._put(map_name, key, value, fetched_at)

    # -- targeted drops (changes.py) ---------------------------------------------------------

    def drop_address(self, address: str) -> int:
        """Drop, in every map, the entries answered from ``address``'s rows: the address
        itself and its ``+extension`` forms. Returns how many went."""
        address = address.lower()
        dropped = 0
        for name, entries in self._maps.items():
            index = self._index[name]
            keys = [address, *index.variants(address)]
            if name in self._case_kept:
                keys += [k for k in index.of_domain(domain_of(address)) if k.lower() == address]
            for key in keys:
                if entries.pop(key, None) is not None:
                    index.discard(key)
                    dropped += 1
        self._size -= dropped
        self._forget_flights(lambda key: key == address or _base_is(key, address))
        return dropped

    def drop_domain(self, domain: str) -> int:
        """Drop, in every map, every entry of ``domain``: the domain itself, '@domain'
        and every address in it. Returns how many went."""
        domain = domain.lower()
        dropped = 0
        for name, entries in self._maps.items():
            index = self._index[name]
            for key in index.of_domain(domain):
                if entries.pop(key, None) is not None:
                    dropped += 1
                index.discard(key)
        self._size -= dropped
        self._forget_flights(lambda key: domain_of(key) == domain)
        return dropped

    def _forget_flights(self, affected: Callable[[str], bool]) -> None:
        """Fetches in flight for dropped keys may have read the old rows: their answer
        still goes to those waiting for it but is not stored, and the next request for
        such a key starts its own fetch."""
        for flight in [f for f in self._inflight if affected(f[1].lower())]:
            self._dropped_flights.add(self._inflight.pop(flight))

    def ttls(self, map_name: str) -> TTLs:
        return self._ttls.get(map_name, self.default_ttls)

    def fresh(self, map_name: str, key: str) -> tuple[bool, str | None]:
        """(True, value) when a fresh entry answers without any waiting; value None means
        a fresh "not found". (False, None) otherwise."""
        entry = self._maps.get(map_name, {}).get(key)
        if entry is None:
            return False, None
        t = self._ttls.get(map_name, self.default_ttls)
        age = self.clock() - entry[1]
        if age < (t.negative_ttl if entry[0] is None else t.ttl):
            return True, entry[0]
        return False, None

    async def get(
        self, map_name: str, key: str, fetch: Callable[[], Awaitable[str | None]]
    ) -> tuple[str | None, Outcome]:
        """Answer from the cache or through ``fetch``; a failed fetch re-raises its error
        unless a stale found value (or, with ``stale_negative``, not-found) can be served."""
        t = self._ttls.get(map_name, self.default_ttls)
        entry = self._maps.get(map_name, {}).get(key)
        age = 0.0
        if entry is not None:
            age = self.clock() - entry[1]
            if entry[0] is None:
                if age < t.negative_ttl:
                    return None, Outcome.NOTFOUND
            elif age < t.ttl:
                return entry[0], Outcome.HIT
        try:
            value = await self._fetch_once(map_name, key, fetch)
        except Exception:
            if entry is not None and self._servable_stale(entry[0], age, t):
                return entry[0], Outcome.STALE
            raise
        return value, (Outcome.NOTFOUND if value is None else Outcome.MISS)

    @staticmethod
    def _servable_stale(value: str | None, age: float, t: TTLs) -> bool:
        if value is not None:
            return age < t.ttl + t.stale_ttl
        return t.stale_negative and age < t.negative_ttl + t.stale_ttl

    async def _fetch_once(
        self, map_name: str, key: str, fetch: Callable[[], Awaitable[str | None]]
    ) -> str | None:
        flight = (map_name, key)
        pending = self._inflight.get(flight)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = fut
        generation = self._generation
        try:
            value = await fetch()
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark it retrieved: there may be no other waiter
            raise
        else:
            if generation == self._generation and fut not in self._dropped_flights:
                self.store(map_name, key, value)
            fut.set_result(value)
            return value
        finally:
            self._dropped_flights.discard(fut)
            if self._inflight.get(flight) is fut:
                del self._inflight[flight]


def _base_is(key: str, address: str) -> bool:
    """Whether ``key`` is ``address`` with an extension (``u+x@d`` for ``u@d``)."""
    local, _, domain = key.rpartition("@")
    a_local, _, a_domain = address.rpartition("@")
    return domain == a_domain and local.startswith(a_local) and len(local) > len(a_local)
