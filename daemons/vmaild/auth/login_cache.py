"""What the auth service remembers: verified logins, and account rows for outages.

Verified logins are keyed on (address, the stored hash, a keyed digest of the password).
The account row is fetched on every login, so a password changed by PASSWD, vmailctl or
plain SQL changes the stored hash and the old entry can never match again: no TTL and no
invalidation message is needed for correctness. The digest is HMAC-SHA256 under a random
key made at start, so the cache holds nothing that could be tested offline against a
password list, and the key dies with the process.

Account rows are kept only as a stale-on-error fallback: while the database cannot
answer, PRE is answered from them, and AUTH succeeds only for a login verified earlier
(an unverified one is a temporary failure, never a judgement made on stale data).

Both are bounded LRU maps; an entry older than its TTL is gone.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class BoundedTTL(Generic[V]):
    """An LRU map of at most ``max_entries`` whose entries expire ``ttl`` seconds after
    they were stored."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._data: OrderedDict[Hashable, tuple[V, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def put(self, key: Hashable, value: V) -> None:
        if self.max_entries <= 0 or self.ttl <= 0:
            return
        self._data[key] = (value, self.clock())
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def get(self, key: Hashable) -> V | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if self.clock() - entry[1] >= self.ttl:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return entry[0]

    def pop(self, key: Hashable) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()


class VerifiedLogins:
    """Logins whose password was verified against a given stored hash."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic):
        self._key = secrets.token_bytes(32)
        self._entries: BoundedTTL[bool] = BoundedTTL(ttl, max_entries, clock)

    def __len__(self) -> int:
        return len(self._entries)

    def digest(self, password: str) -> bytes:
        return hmac.new(
            self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).digest()

    @staticmethod
    def _slot(address: str, stored_hash: str, digest: bytes) -> tuple[str, str, bytes]:
        return address.lower(), stored_hash, digest

    def add(self, address: str, stored_hash: str, digest: bytes) -> None:
        self._entries.put(self._slot(address, stored_hash, digest), True)

    def check(self, address: str, stored_hash: str, digest: bytes) -> bool:
        # A dict lookup compares the digest with ==, but only after hashing it: an entry
        # is found only by the exact 32-byte digest, and an attacker who can time the
        # lookup still has to produce a full HMAC preimage to learn anything.
        return self._entries.get(self._slot(address, stored_hash, digest)) is not None

    def clear(self) -> None:
        self._entries.clear()
