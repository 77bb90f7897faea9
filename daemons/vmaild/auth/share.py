"""A bounded share of password hashing per account and per client address.

The hashing pool (hashing.py) has a few threads. Without a share, parallel attempts against
one account (or from one address) would fill it, and every other user's first login would
queue behind them. With it, at most ``per_account`` verifications for one account and
``per_client`` for one client address run at once. Neither share may exceed the pool less
one thread (at least 1): no single account or address can occupy the whole pool. 0 turns a
share off. Trusted networks (``[auth] trusted_networks``: webmail on localhost speaks for
many users at once) have no client share.

Over its share, an attempt at a front door that can wait without holding anything shared
(SASL: the request waits in its own task) waits for a slot, at most ``wait`` seconds; one
at a door that cannot (authpipe: a waiting request holds one of authdaemond's workers) is
answered FAIL at once, without hashing, and counted as a "busy" refusal. So many users'
first logins from one address (a NAT, webmail) queue instead of failing, while a flood
against one account never takes authdaemond's workers.
"""

from __future__ import annotations

import asyncio
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
    def __init__(
        self,
        per_account: int,
        per_client: int,
        workers: int,
        trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
    ):
        self.per_account = effective_share(per_account, workers)
        self.per_client = effective_share(per_client, workers)
        self.trusted = trusted
        self._running: Counter[Hashable] = Counter()
        self._freed = asyncio.Event()  # set (and replaced) whenever a slot is released

    def counted_client(self, client: Client | None) -> Client | None:
        """The client a share is counted for: None for a trusted one."""
        if client is None or any(client in net for net in self.trusted):
            return None
        return client

    async def acquire(self, key: str, client: Client | None, wait: float) -> bool:
        """Take a slot, waiting at most ``wait`` seconds for one; False: none taken."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not self.admit(key, client):
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._freed.wait(), left)
            except TimeoutError:
                return False
        return True

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
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()
