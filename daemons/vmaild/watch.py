"""Keeping the cache in step with the database: the change log, or the change counter.

``ChangeWatch`` is what the daemon's cache learns changes from: the change log
(invalidation.py: targeted drops, GTID waits) and, without one (a version 2 schema), the
schema's change counter, whose every move flushes the whole cache. vmailctl's ``flush``
and ``changed`` on the control socket (servers/control.py) arrive here too, so that one
change is never flushed twice (``control_flush`` has the rule).

It is given a getter for the running ``Runtime`` (read anew at each step: a reload swaps
it) and a callable saying the cache snapshot is stale, never the App.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from .changes import Drop, Scope
from .db import DatabaseError
from .invalidation import ChangeFeed
from .metrics import Metrics
from .runtime import Runtime

log = logging.getLogger("vmaild")
# How long a control flush waits for the change counter before flushing without it
# (vmailctl waits 3 s for the whole answer).
CONTROL_VERSION_SECONDS = 1.0
_UNREAD = object()  # the change counter could not be read
# Without a change log (a version 2 schema) the poller reads the counter, and looks for a
# log again every this many polls (``vmailctl db migrate`` while vmaild runs).
LOG_PROBE_POLLS = 60


class ChangeWatch:
    """The poller, the control socket's flushes, and the baseline they share."""

    def __init__(
        self,
        current: Callable[[], Runtime],
        metrics: Metrics,
        snapshot_stale: Callable[[], None],
    ):
        self._current = current
        self.metrics = metrics
        self._snapshot_stale = snapshot_stale
        # The change poller's baseline: the counter as read before the latest flush (None:
        # not read yet). flushes tells a poll that a flush happened while it was reading.
        self.version: Any = None
        self.flushes = 0
        # The change log reader (targeted drops, GTID waits); its position outlives reloads.
        self.feed = ChangeFeed(self, metrics)

    def flush_cache(self, reason: str, detail: str = "") -> int:
        cache = self._current().cache
        dropped = len(cache)
        cache.flush()
        self.flushes += 1
        self.metrics.cache_flushes.labels(reason).inc()
        self._snapshot_stale()
        log.info("cache flushed (%s): %d entries dropped", detail or reason, dropped)
        return dropped

    # -- baselines: a warm start, a reload, a snapshot ------------------------------------

    def restored(self, baseline: Any) -> None:
        """The change log position (or, on a version 2 schema, the change counter) the
        restored answers are consistent with becomes the poller's baseline: a change made
        while vmaild was stopped drops (or flushes) them."""
        self.feed.position = self.feed.position.from_baseline(baseline)
        if self.feed.position.done is None:
            self.version = baseline

    def reloaded(self) -> None:
        """A reload starts with an empty cache: the counter is read afresh, and a poll
        under way (reading the old runtime's database) is set aside."""
        self.version = None
        self.flushes += 1

    def baseline(self) -> Any:
        """What a snapshot records: the change log position, or the version counter
        without a log."""
        baseline = self.feed.baseline() if self.feed.has_log is not False else None
        return baseline or self.version

    # -- what the change feed drops from (invalidation.Target) ----------------------------

    def flush_all(self, reason: str, label: str = "change") -> int:
        """A full flush the change log asks for: a part of it was missed (``change``), or
        the first position is taken with entries cached before it (``start``)."""
        cache = self._current().cache
        if not len(cache):
            cache.flush()  # still covers the fetches in flight
            return 0
        return self.flush_cache(label, reason)

    def drop(self, drop: Drop) -> int:
        rt = self._current()
        if drop.scope is Scope.DOMAIN:
            return rt.cache.drop_domain(drop.value)
        if rt.auth is not None:
            rt.auth.rows.forget(drop.value)  # the login row kept for outages
        return rt.cache.drop_address(drop.value)

    # -- the control socket (servers/interfaces.py: CacheFlusher, ChangeNotifier) ---------

    async def control_flush(self) -> int:
        """vmailctl's flush (the control socket), which also settles the change poller.

        The rule the poller keeps: it flushes when the change counter differs from its
        baseline, the value read before the latest flush. vmailctl commits a change (the
        triggers bump the counter in the same transaction), then asks for this flush. So
        the counter is read first, the cache flushed next, and the value read becomes the
        baseline: every change it counts was committed before the read, hence before this
        flush, which covers it. The poller does not flush for that change a second time,
        up to ``check_interval`` later, emptying a cache that has been warming since (and
        leaving lookups nothing stale to serve should the database fail then). Hence:
        - a change committed after the read (SQL by hand, another vmailctl, even between
          the read and the flush) moves the counter past the baseline: the poller flushes;
        - a change nobody notified moves it as well: flushed at the next poll, as always;
        - when the counter cannot be read here (database down, slow beyond
          ``CONTROL_VERSION_SECONDS``, no table, polling off) the cache is flushed all the
          same and the baseline left alone: the poller flushes once more when it sees the
          change, as it did before;
        - a poll whose read was under way during a flush is set aside: its value may
          predate the flush; the next poll compares with the baseline the flush left.
        The counter does not count every change (unwatched tables, password rehashes):
        a control flush always flushes, whatever the counter says.
        """
        rt = self._current()
        version = await self._read_version(rt, CONTROL_VERSION_SECONDS)
        dropped = self.flush_cache("control")
        if version is not _UNREAD and rt is self._current():
            self.version = version
        return dropped

    async def control_changed(self, gtid: str | None, keys: tuple[str, ...] | None) -> str:
        """vmailctl's ``changed``: wait (``[cache] gtid_wait``) for the read host to apply
        the commit, then drop what the change log names. Without a change log, a whole
        flush as ``flush`` does. If the log cannot be read now, the entries stay (they are
        what an outage is served from) and the polls apply it later."""
        rt = self._current()
        try:
            result = await self.feed.notified(
                rt.db, gtid, None if keys is None else list(keys), rt.config.cache.gtid_wait
            )
        except DatabaseError as e:
            log.warning("change notification: the change log cannot be read now: %s", e)
            return "ok 0 pending"
        if result is None:
            return f"ok {await self.control_flush()}"
        dropped, applied = result
        return f"ok {dropped}" + ("" if applied else " pending")

    @staticmethod
    async def _read_version(rt: Runtime, timeout: float) -> Any:
        """The change counter, or _UNREAD (polling off, an error, no row, too slow)."""
        query = rt.config.cache.version_query
        if rt.config.cache.check_interval <= 0 or not query:
            return _UNREAD
        try:
            rows = await asyncio.wait_for(rt.db.fetch(query), timeout)
        except (DatabaseError, TimeoutError):
            return _UNREAD
        return rows[0][0] if rows else _UNREAD

    # -- the poller ------------------------------------------------------------------------

    async def poll_changes(self) -> None:
        """Apply the change log (invalidation.py: targeted drops); without one (a version 2
        schema), flush the cache when the schema's change counter moves (vmailctl, or SQL
        typed by hand: the triggers bump it) away from the value read before the latest
        flush; a control flush sets that baseline itself (``control_flush`` has the
        rule). A database without either just is not polled."""
        warned = False
        polls = 0
        while True:
            rt = self._current()
            interval = rt.config.cache.check_interval
            if interval <= 0:
                await asyncio.sleep(5)
                if len(self.feed.pending):  # polling off: still settle notified changes
                    with contextlib.suppress(DatabaseError):
                        await self.feed.poll(rt.db)
                continue
            await asyncio.sleep(interval)
            polls += 1
            if self.feed.has_log is not False or polls % LOG_PROBE_POLLS == 0:
                try:
                    if await self.feed.poll(rt.db):
                        await self.feed.maybe_prune(rt.db, rt.config.cache.change_log_retention)
                        continue
                except DatabaseError:
                    continue
            if not rt.config.cache.version_query:
                continue
            flushes = self.flushes
            try:
                rows = await rt.db.fetch(rt.config.cache.version_query)
            except DatabaseError as e:
                if e.errno in (1146, 1054) and not warned:  # no such table / column
                    log.warning("change polling off: %s (run 'vmailctl db migrate')", e)
                    warned = True
                continue
            if flushes != self.flushes or rt is not self._current():
                continue  # flushed (or reloaded) while reading: that baseline stands
            version = rows[0][0] if rows else None
            if self.version is not None and version != self.version:
                self.flush_cache("change")
            self.version = version
