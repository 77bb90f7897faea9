"""Which database host to use next: the read and write roles, outages and replica lag.

``[database] hosts`` is the list reads go to, in order; ``write_hosts`` (default: the same)
the list writes go to. A host whose connection failed is passed over for ``retry_interval``
seconds (shared by both roles: a server that is down is down for reads and writes), and
is tried last rather than never, so that something is still tried when all are down.

For reads, a host whose measured lag behind the writer is above ``max_lag`` goes after the
hosts within bound; when none is within bound the least lagged goes first. Lag never
makes a read fail: it only changes the order. A host whose lag is unknown (not measured
yet, or cannot be: no heartbeat table) counts as within bound.

The state is shared by the worker threads of the pool and the lag check's thread, so
every method takes the lock; each is a few dictionary operations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from .values import DatabaseHost

Clock = Callable[[], float]


class HostState:
    def __init__(
        self,
        reads: Sequence[DatabaseHost],
        writes: Sequence[DatabaseHost],
        *,
        retry_interval: float,
        max_lag: float = 0.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.reads = tuple(reads)
        self.writes = tuple(writes)
        self.retry_interval = retry_interval
        self.max_lag = max_lag
        self._clock = clock
        self._lock = threading.Lock()
        # Read by tests and by Database._down_until; written only under the lock.
        self.down_until: dict[DatabaseHost, float] = {}
        self._lag: dict[DatabaseHost, float] = {}

    # -- what happened ---------------------------------------------------------------------

    def mark_down(self, host: DatabaseHost) -> None:
        """The host failed: pass it over for ``retry_interval`` seconds."""
        with self._lock:
            self.down_until[host] = self._clock() + self.retry_interval

    def mark_up(self, host: DatabaseHost) -> bool:
        """A connection to the host worked; True if it had been marked down."""
        with self._lock:
            return self.down_until.pop(host, None) is not None

    def set_lag(self, host: DatabaseHost, seconds: float | None) -> None:
        """The host's measured lag behind the writer (None: unknown)."""
        with self._lock:
            if seconds is None:
                self._lag.pop(host, None)
            else:
                self._lag[host] = max(0.0, seconds)

    def lag(self, host: DatabaseHost) -> float | None:
        with self._lock:
            return self._lag.get(host)

    def is_down(self, host: DatabaseHost) -> bool:
        with self._lock:
            return self.down_until.get(host, 0.0) > self._clock()

    # -- the order to try hosts in ---------------------------------------------------------

    def order(self, write: bool = False) -> list[DatabaseHost]:
        """Every host of the role, the one to try first first."""
        with self._lock:
            now = self._clock()
            if write:
                return _down_last(self.writes, self.down_until, now)
            return _read_order(self.reads, self.down_until, self._lag, now, self.max_lag)

    def preferred(self, write: bool = False) -> DatabaseHost:
        """The host new work of the role should go to now."""
        return self.order(write)[0]


def _down_last(
    hosts: Sequence[DatabaseHost], down_until: dict[DatabaseHost, float], now: float
) -> list[DatabaseHost]:
    up = [h for h in hosts if down_until.get(h, 0.0) <= now]
    return up + [h for h in hosts if h not in up]


def _read_order(
    hosts: Sequence[DatabaseHost],
    down_until: dict[DatabaseHost, float],
    lags: dict[DatabaseHost, float],
    now: float,
    max_lag: float,
) -> list[DatabaseHost]:
    order = _down_last(hosts, down_until, now)
    up = [h for h in order if down_until.get(h, 0.0) <= now]
    down = order[len(up) :]
    if max_lag <= 0:
        return order
    within = [h for h in up if lags.get(h, 0.0) <= max_lag]
    # Beyond the bound: least lagged first; sorted() is stable, so equal lags keep the
    # configured order.
    beyond = sorted((h for h in up if h not in within), key=lambda h: lags[h])
    return within + beyond + down
