"""Failure limits: repeated failed logins for one account slow down guessing, in-process.

The first failure costs nothing (a typo); after the n-th failure in a row (n >= 2) the
account may not be tried again for ``base`` seconds, doubling, at most ``cap``. A success
resets the count, and so does ``window`` seconds without a failure.

:class:`LocalGuard` is this as the login core's default ``LoginGuard`` (contract.py): an
attempt inside that wait is refused before any hashing (answered like a wrong password),
and a front door that can wait (SASL, in its own connection) is told to hold its FAIL
reply that long. The authpipe door never waits: a waiting request would hold one of
authdaemond's few workers (issue 13, item 5).

Memory is bounded: at most ``max_entries`` keys are tracked (least recently failed dropped
first). Keys are what the login core gives (names.guard_key: the account's address), so
every spelling the database matches to an account counts as that account.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from .contract import Client


class FailureLimits:
    def __init__(
        self,
        base: float,
        cap: float,
        window: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.base = base
        self.cap = cap
        self.window = window
        self.max_entries = max(1, max_entries)
        self.clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def count(self, login: str) -> int:
        """Failures in a row still remembered for ``login``."""
        entry = self._failures.get(login.lower())
        if entry is None or self.clock() - entry[1] >= self.window:
            return 0
        return entry[0]

    def failed(self, login: str) -> float:
        """Record a failure; return how long to wait before answering FAIL."""
        key = login.lower()
        n = self.count(key) + 1
        self._failures[key] = (n, self.clock())
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_entries:
            self._failures.popitem(last=False)
        return self.delay_for(n)

    def delay_for(self, n: int) -> float:
        """The wait after the n-th failure in a row: 0, base, 2*base, 4*base ... <= cap."""
        if n < 2 or self.base <= 0:
            return 0.0
        return float(min(self.cap, self.base * 2 ** min(n - 2, 32)))

    def succeeded(self, login: str) -> None:
        self._failures.pop(login.lower(), None)

    def wait_left(self, login: str) -> float:
        """Seconds until ``login`` may be tried again (0: now)."""
        entry = self._failures.get(login.lower())
        if entry is None:
            return 0.0
        n, last = entry
        left = last + self.delay_for(n) - self.clock()
        return left if left > 0 and self.clock() - last < self.window else 0.0


class LocalGuard:
    """:class:`FailureLimits` as a ``contract.LoginGuard``: per key only (this host's
    memory, no client addresses), the login core's guard until a shared one is wired."""

    KIND = "login"

    def __init__(self, limits: FailureLimits):
        self.limits = limits

    async def refusal(self, key: str, client: Client | None, *, can_wait: bool) -> str | None:
        return self.KIND if self.limits.wait_left(key) > 0 else None

    async def failed(
        self, key: str, client: Client | None, *, service: str, known: bool, can_wait: bool
    ) -> float:
        return self.limits.failed(key)

    async def succeeded(self, key: str, client: Client | None) -> None:
        self.limits.succeeded(key)
