"""Warm restarts: the lookup cache restored at start from its snapshot (snapshot.py), saved
every ``[cache] snapshot_interval`` seconds and at stop, and removed by every flush.

Restored entries keep their age: an answer fetched 50 s before the stop is 50 s old plus the
downtime when vmaild answers again, so TTLs, stale serving and "never a stale not-found
unless the map opts in" hold as if it had never stopped. Entries too old to be served even
stale are left out.

A flush (vmailctl, the change poller, a reload) removes the file at once, under the lock the
writer renames under: a restart right after a flush must not bring back what it dropped. The
snapshot also records the change log position (``log:ID``; on a version 2 schema, the
change counter) its answers are consistent with; the daemon makes it the poller's baseline,
so changes made while vmaild was stopped drop their entries from the restored cache as soon
as the database answers (all of it when the log no longer goes back that far).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

from . import snapshot
from .cache import Cache
from .config import Config

log = logging.getLogger("vmaild")


class CacheKeeper:
    def __init__(self, path: str, interval: float):
        self.path = path
        self.interval = interval
        self._lock = threading.Lock()
        self._generation = 0  # bumped by invalidate(): a write started before is dropped
        self._saving: asyncio.Lock | None = None
        self._failing = False

    @classmethod
    def for_config(cls, cfg: Config) -> CacheKeeper | None:
        """The keeper for ``[cache] snapshot``, or None: switched off (empty), or its
        directory (the unit's StateDirectory=) does not exist, which is said in one line."""
        path = cfg.cache.snapshot
        if not path:
            return None
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            log.info("cache snapshots off: no directory %s ([cache] snapshot)", directory)
            return None
        return cls(path, cfg.cache.snapshot_interval)

    # -- start ---------------------------------------------------------------------------------

    def restore(self, cache: Cache, cfg: Config, known_maps: set[str]) -> Any:
        """Load the snapshot into ``cache`` (empty, maps configured); returns the change
        counter it recorded, or None."""
        try:
            snap = snapshot.read(self.path)
            now = time.time()
            keep = max((cache.ttls(name).keep_for() for name in known_maps), default=0.0)
            if snap.config != snapshot.fingerprint(cfg):
                raise snapshot.Ignored("written for another configuration", expected=True)
            if now - snap.written >= keep:
                raise snapshot.Ignored(
                    f"too old (written {now - snap.written:.0f} s ago; entries are of use "
                    f"for {keep:.0f} s at most: ttl + stale_ttl)",
                    expected=True,
                )
        except FileNotFoundError:
            log.info("no cache snapshot at %s: starting with an empty cache", self.path)
            return None
        except snapshot.Ignored as e:
            level = logging.INFO if e.expected else logging.WARNING
            log.log(level, "cache snapshot %s ignored: %s", self.path, e)
            return None
        except OSError as e:
            log.warning("cache snapshot %s ignored: %s", self.path, e.strerror or e)
            return None
        restored = self._load(cache, snap, now, known_maps)
        log.info(
            "cache snapshot: %d of %d entries restored from %s (written %.0f s ago)",
            restored,
            len(snap),
            self.path,
            now - snap.written,
        )
        return snap.changes

    @staticmethod
    def _load(cache: Cache, snap: snapshot.Snapshot, now: float, known: set[str]) -> int:
        mono_now, restored = cache.clock(), 0
        for name, entries in snap.maps.items():
            if name not in known:
                continue
            keep = cache.ttls(name).keep_for()
            last_wall, stamp = None, 0.0
            for key, value, wall in entries:
                age = max(0.0, now - wall)  # a clock set back: as if fetched just now
                if age >= keep:
                    continue
                if wall != last_wall:  # entries of one tenth of a second share a stamp
                    last_wall, stamp = wall, mono_now - age
                cache.restore(name, key, value, stamp)
                restored += 1
        return restored

    # -- while running -------------------------------------------------------------------------

    def invalidate(self) -> None:
        """The cache was flushed: remove the snapshot now, and drop a write in progress."""
        with self._lock:
            self._generation += 1
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("cache snapshot %s: cannot remove it: %s", self.path, e.strerror)

    async def save(self, cache: Cache, cfg: Config, changes: Any) -> bool:
        """Write the snapshot of ``cache`` (one write at a time; the encoding and the I/O
        in a worker thread). Returns whether the file was replaced."""
        if self._saving is None:
            self._saving = asyncio.Lock()
        async with self._saving:
            generation = self._generation
            exported = cache.export()  # on the loop: a consistent copy
            wall_offset = time.time() - cache.clock()
            lines = snapshot.encode(
                snapshot.fingerprint(cfg), time.time(), changes, exported, wall_offset
            )

            def still_wanted() -> bool:
                return generation == self._generation

            loop = asyncio.get_running_loop()
            try:
                done = await loop.run_in_executor(
                    None, snapshot.write, self.path, lines, self._lock, still_wanted
                )
            except OSError as e:
                if not self._failing:
                    log.warning("cache snapshot %s: cannot write it: %s", self.path, e)
                self._failing = True
                return False
            if self._failing:
                log.info("cache snapshot %s: written again", self.path)
            self._failing = False
            return bool(done)

    async def run(self, current: Any) -> None:
        """Save every ``interval`` seconds (0: only at stop); ``current()`` gives the
        (cache, config, change counter) of the moment."""
        if self.interval <= 0:
            return
        while True:
            await asyncio.sleep(self.interval)
            await self.save(*current())
