"""Failure limits: repeated failed logins for one account slow down its FAIL replies.

The first failure is answered at once (a typo costs nothing); from the second one in a row
each FAIL waits ``base`` seconds, doubling, at most ``cap`` (well under the 10 s a mail
client waits, and the 30 s authdaemond waits for authProg). A success resets the count, and
so does ``window`` seconds without a failure. The wait is an asyncio sleep in the request's
own task: other connections are never held up.

Memory is bounded: at most ``max_entries`` logins are tracked (least recently failed
dropped first), keyed by the lower-cased login name, so unknown names count too.

What this does not do: stop a guesser who spreads attempts over many parallel
connections (each reply is delayed, not serialised), and each delayed FAIL keeps one of
authdaemond's few workers busy. It makes one-connection guessing slow and is visible in
the ``vmaild_login_failures_limited`` metric.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


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
