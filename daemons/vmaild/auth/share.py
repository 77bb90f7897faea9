"""A bounded share of password hashing per account and per client address.

The hashing pool (hashing.py) has a few threads. Without a share, parallel attempts against
one account (or from one address) would fill it, and every other user's first login would
queue behind them. With it, at most ``per_account`` verifications for one account and
``per_client`` for one client address run at once; an attempt over its share is answered
FAIL at once, without hashing (it looks like a wrong password), and counted as a "busy"
refusal. Neither share may exceed the pool less one thread (at least 1): no single account
or address can occupy the whole pool. 0 turns a share off.

Attempts are admitted or refused synchronously, so nothing ever waits for a share.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Hashable

from .contract import Client


def effective_share(configured: int, workers: int) -> int:
    """The share applied: ``configured`` (0: none), at most ``workers - 1``, at least 1."""
    if configured <= 0:
        return 0
    return max(1, min(configured, workers - 1))


def client_slot(client: Client) -> Hashable:
    """What one client's share is counted on: the address, or an IPv6 address's /64."""
    if client.version == 6:
        return ("client", ipaddress.IPv6Network((int(client) >> 64 << 64, 64)))
    return ("client", client)


class HashShare:
    def __init__(self, per_account: int, per_client: int, workers: int):
        self.per_account = effective_share(per_account, workers)
        self.per_client = effective_share(per_client, workers)
        self._running: Counter[Hashable] = Counter()

    def __len__(self) -> int:
        return len(self._running)

    def admit(self, key: str, client: Client | None) -> bool:
        """Take a slot for one verification; False (nothing taken) if over a share."""
        slots: list[Hashable] = [("account", key)]
        if self.per_account and self._running[slots[0]] >= self.per_account:
            return False
        if client is not None:
            slots.append(client_slot(client))
            if self.per_client and self._running[slots[1]] >= self.per_client:
                return False
        for slot in slots:
            self._running[slot] += 1
        return True

    def release(self, key: str, client: Client | None) -> None:
        slots: list[Hashable] = [("account", key)]
        if client is not None:
            slots.append(client_slot(client))
        for slot in slots:
            self._running[slot] -= 1
            if self._running[slot] <= 0:
                del self._running[slot]
