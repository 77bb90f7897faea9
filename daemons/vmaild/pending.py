"""Changes vmaild was told of that its read host has not applied yet (read-your-writes).

vmailctl sends, with its notification, the GTID of its commit and the keys it changed
(servers/control.py). Until the read host has applied that GTID, a lookup of one of those
keys that finds nothing there may be reading the state before the change (a mailbox just
created, not yet replicated): it must be answered with a temporary failure, never "not
found", so Postfix defers (4xx) instead of bouncing (5xx). Found answers are not touched:
the entries cached before the change keep answering until the change log, read on the
same host, says which ones to drop.

A GTID is applied when the read host's ``@@gtid_current_pos`` has reached its sequence
number in its replication domain (MariaDB GTIDs are ``domain-server-seq``; seq grows
within a domain whichever server wrote it). A pending change is forgotten after
``MAX_AGE`` seconds even if never applied (a commit lost with a crashed primary never
arrives): a key cannot be deferred for ever. At most ``MAX_ITEMS`` are kept; more are
merged into one that covers every key, up to the newest GTID.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .changes import Drop, Scope, affected, drops_for

MAX_AGE = 3600.0
MAX_ITEMS = 1000


def parse_gtids(text: str) -> dict[int, int] | None:
    """'0-1-42,1-2-7' -> {domain: seq}; None when it is not a GTID list."""
    result: dict[int, int] = {}
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        fields = part.split("-")
        if len(fields) != 3 or not all(f.isdigit() for f in fields):
            return None
        domain, seq = int(fields[0]), int(fields[2])
        result[domain] = max(seq, result.get(domain, 0))
    return result


def covers(position: str, gtid: str) -> bool:
    """Whether a server at GTID ``position`` has applied every GTID in ``gtid``."""
    have, want = parse_gtids(position) or {}, parse_gtids(gtid)
    if not want:
        return True
    return all(have.get(domain, -1) >= seq for domain, seq in want.items())


def valid_gtid(text: str) -> bool:
    parsed = parse_gtids(text)
    return bool(parsed) and len(text) <= 1024


@dataclass
class _Item:
    gtid: str
    drops: tuple[Drop, ...]
    since: float


class PendingChanges:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._items: list[_Item] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, gtid: str, keys: Iterable[str] | None) -> None:
        """``keys`` None: the change may touch any key."""
        drops = (Drop(Scope.ALL),) if keys is None else tuple(drops_for("", k) for k in keys)
        self._items.append(_Item(gtid, drops or (Drop(Scope.ALL),), self.clock()))
        if len(self._items) > MAX_ITEMS:
            newest = self._items[-1]
            merged = ",".join(i.gtid for i in self._items)
            self._items = [_Item(merged, (Drop(Scope.ALL),), newest.since)]

    def gtids(self) -> list[str]:
        return [i.gtid for i in self._items]

    def settle(self, position: str) -> int:
        """Forget what a read host at ``position`` has applied, and what is too old;
        returns how many are left."""
        now = self.clock()
        self._items = [
            i for i in self._items if not covers(position, i.gtid) and now - i.since < MAX_AGE
        ]
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def holds_back(self, key: str, delimiters: str) -> bool:
        """Whether "not found" for ``key`` may predate a change vmaild was told of."""
        if not self._items:
            return False
        now = self.clock()
        return any(
            now - i.since < MAX_AGE and any(affected(key, d, delimiters) for d in i.drops)
            for i in self._items
        )
