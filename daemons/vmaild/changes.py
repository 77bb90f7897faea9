"""The change log, read: which cache entries a logged change affects, and where the reader
is in the log (pure logic; invalidation.py does the I/O).

The schema's triggers append ``(id, tbl, change_key)`` rows to ``vmaild_change_log`` in the
transaction that changes a watched table (ctl/schema.py). A key's *form* says what it can
have changed in the cache, whatever table it came from:

- ``user@domain`` (users, forwardings, sender_grants): the entries of that address and its
  ``+extension`` forms, in every map, and the login rows kept for outages;
- ``@domain`` (a catch-all alias): it answers every address of the domain, so every entry
  of that domain;
- ``domain`` or ``.domain`` (domains, transport): every entry of that domain (a disabled
  domain changes what queries joining it answer for each of its addresses);
- an empty key: everything (nothing narrower is known).

Reading position. Ids come from AUTO_INCREMENT on the writer and are replicated with the
rows, so they are the same on every host; but they are taken at INSERT time, not at
COMMIT: a transaction holding id 10 may commit after the one holding id 11. So the reader
keeps ``done`` (every id up to it is applied or given up), the ids above it already
applied, and the holes between them. A hole is either a rolled-back transaction (ids are
never reused) or one not committed yet; it is waited for ``HOLE_SETTLE`` seconds and then
given up. New rows are read past the highest id applied, and the open holes by id.

A part of the log missed: the smallest id still in the log is above ``done + 1`` (rows
were pruned before this reader got to them: a stop longer than the retention), or the
largest is below ``done`` (the log was emptied and its ids restarted). Then nothing
narrower than a full flush is safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from .addresses import strip_extension
from .cache_index import domain_of

#: A missing id is waited for this long before the reader moves past it.
HOLE_SETTLE = 30.0
#: More missing ids than this at once are not waited for.
MAX_HOLES = 10 * 1000
#: Rows read per statement; a full batch is followed by another at once.
BATCH = 1000


class Scope(StrEnum):
    ADDRESS = "address"
    DOMAIN = "domain"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Drop:
    scope: Scope
    value: str = ""


def drops_for(table: str, key: str) -> Drop:
    """What a change of ``key`` (logged for ``table``) invalidates; see the module doc."""
    key = key.strip().lower()
    if not key:
        return Drop(Scope.ALL)
    at = key.rfind("@")
    if at == 0:
        return Drop(Scope.DOMAIN, key[1:]) if len(key) > 1 else Drop(Scope.ALL)
    if at > 0:
        return Drop(Scope.ADDRESS, key)
    domain = key.lstrip(".")
    return Drop(Scope.DOMAIN, domain) if domain else Drop(Scope.ALL)


def affected(key: str, drop: Drop, delimiters: str) -> bool:
    """Whether the lookup key ``key`` is answered from what ``drop`` covers."""
    if drop.scope is Scope.ALL:
        return True
    key = key.lower()
    if drop.scope is Scope.DOMAIN:
        return domain_of(key) == drop.value
    return key == drop.value or strip_extension(key, delimiters) == drop.value


@dataclass(frozen=True)
class Batch:
    full_flush: bool
    changes: list[tuple[str, str]]  # (table, key), in log order
    reason: str = ""
    start: bool = False  # the flush that sets a first position, not a change missed


@dataclass
class LogPosition:
    """Where a reader is in the change log (the module doc has the rules)."""

    done: int | None = None  # None: no baseline yet
    applied: set[int] = field(default_factory=set)  # ids > done already applied
    holes: dict[int, float] = field(default_factory=dict)  # missing id -> first noticed

    def since(self) -> int:
        """The id to read new rows after: past everything applied (the holes below it are
        asked for by id, ``open_holes``)."""
        return max(self.applied, default=self.done or 0)

    def open_holes(self, limit: int = BATCH) -> list[int]:
        """The missing ids still waited for, oldest first."""
        return sorted(self.holes)[:limit]

    def rebase(self, top: int | None) -> None:
        self.done = top or 0
        self.applied.clear()
        self.holes.clear()

    def advance(
        self,
        lowest: int | None,
        highest: int | None,
        rows: list[tuple[int, str, str]],
        now: float,
    ) -> Batch:
        """Take one read: the log's smallest and largest ids and the rows after ``since()``
        plus those of ``open_holes()`` that arrived (id, table, key), in id order. Returns
        what to drop, or that a full flush is due."""
        if self.done is None:
            # No baseline (a start without a snapshot, a reload): the cache holds nothing
            # this reader could vouch for; a full flush costs what little it holds.
            self.rebase(highest)
            return Batch(True, [], "no position in the change log yet", start=True)
        if highest is not None and highest < self.done:
            self.rebase(highest)
            return Batch(True, [], "the change log was emptied (its ids restarted)")
        if lowest is not None and lowest > self.done + 1:
            self.rebase(highest)
            return Batch(True, [], "change log rows were pruned before they were read")
        changes = []
        for row_id, table, key in rows:
            if row_id <= self.done or row_id in self.applied:
                continue
            self.applied.add(row_id)
            self.holes.pop(row_id, None)
            changes.append((table, key))
        self._settle(now)
        return Batch(False, changes)

    def _settle(self, now: float) -> None:
        """Move ``done`` up over applied ids and holes older than HOLE_SETTLE."""
        assert self.done is not None
        top = max(self.applied, default=self.done)
        if top - self.done > MAX_HOLES:
            # A jump this large is the id allocator's (a bulk statement, a server's
            # auto-increment step), not transactions in flight: not worth waiting for.
            self.done = top
            self.applied.clear()
            self.holes.clear()
            return
        while self.done < top:
            nxt = self.done + 1
            if nxt in self.applied:
                self.applied.discard(nxt)
            else:
                noticed = self.holes.setdefault(nxt, now)
                if now - noticed < HOLE_SETTLE:
                    break
                del self.holes[nxt]
            self.done = nxt
        # Holes above the first open one are noticed now, so that they settle together.
        for missing in range(self.done + 1, top):
            if missing not in self.applied:
                self.holes.setdefault(missing, now)

    def baseline(self) -> str | None:
        """For the cache snapshot: 'log:<done>' (a counter baseline is a plain int)."""
        return None if self.done is None else f"log:{self.done}"

    @classmethod
    def from_baseline(cls, value: object) -> LogPosition:
        if isinstance(value, str) and value.startswith("log:") and value[4:].isdigit():
            return cls(done=int(value[4:]))
        return cls()
