"""Deadline-based polling.

Every readiness check in the harness goes through :func:`wait_until` so that
"is it up yet?" is always a real condition with a deadline and a clear error,
never a blind ``time.sleep``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Poll interval: short enough that start-up times stay close to the real
#: readiness time, long enough not to burn a CPU core while waiting.
POLL_INTERVAL = 0.01


class HarnessTimeout(TimeoutError):
    """A condition was not met before its deadline."""


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = POLL_INTERVAL,
    abort: Callable[[], str | None] | None = None,
) -> T:
    """Poll ``condition`` until it returns a truthy value, and return that value.

    ``abort`` is consulted on every round; when it returns a message (for
    example "mariadbd exited with status 1"), waiting stops at once with that
    message instead of running into the timeout. That turns a dead process
    into an immediate, explained failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if abort is not None:
            reason = abort()
            if reason:
                raise RuntimeError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() >= deadline:
            raise HarnessTimeout(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)
