"""Connection caps and idle timeouts, per listener.

Without them a few hundred idle connections exhausted the daemon's descriptors and every
listener then reset new clients, silently. Each listener has a cap (``max_connections``):
a connection over it is closed at once, counted in ``vmaild_connections_refused_total``
and logged (one line per minute per listener at most). Each has an idle timeout: a
connection that has sent nothing for that long and has no request in progress is closed.

The defaults never cut a live Postfix client (PROTOCOLS.md): its socketmap client closes
after 10 s idle / 100 s age itself (2.4), its policy client after 300 s idle / 1000 s age
(3.3); its tcp: client never closes an idle connection (1.4) and loses a retry plus a 1 s
sleep when the server did, so the timeout is an hour, longer than a Postfix process that
holds the connection lives idle in practice (``max_idle`` 100 s).

The daemon sets the limits from the configuration at start and on every reload
(:meth:`ConnectionLimits.configure`); open listeners pick the new values up at once.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..logsafe import Throttle
from ..metrics import Metrics
from ..sections import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, ListenerSection

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("vmaild.server")

# Descriptors kept free for everything that is not a client connection: listening
# sockets, the database pool, the metrics endpoint, Maildir and log files.
RESERVED_DESCRIPTORS = 64
# How often the idle sweep runs at most / at least (seconds).
_SWEEP_MIN, _SWEEP_MAX = 0.05, 30.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # seconds; 0 = never


class Connection(Protocol):
    """What the sweep needs from a connection (base.SequentialProtocol)."""

    listener: str
    last_active: float

    def close_if_idle(self, idle_since: float) -> bool:
        """Close the connection if it was last active before *idle_since* and has no
        request in progress; True if it did."""
        ...


class ConnectionLimits:
    """The caps, the open connections per listener and the idle sweep, for every
    listener of one daemon (held by its ListenerContext)."""

    def __init__(self, limits: Mapping[str, Limits] | None = None, default: Limits = Limits()):
        self._limits: dict[str, Limits] = dict(limits or {})
        self._default = default
        self.open: dict[str, int] = {}
        self._refusals: dict[str, Throttle] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_loop: asyncio.AbstractEventLoop | None = None

    def configure(self, limits: Mapping[str, Limits]) -> None:
        """Replace the limits (start, reload); listeners not named get the defaults."""
        self._limits = dict(limits)

    def get(self, listener: str) -> Limits:
        return self._limits.get(listener, self._default)

    # -- caps --------------------------------------------------------------------------------

    def admit(self, listener: str, metrics: Metrics) -> bool:
        """Count a new connection in, or refuse it (counted and logged) over the cap."""
        n = self.open.get(listener, 0)
        cap = self.get(listener).max_connections
        if n >= cap:
            metrics.child(metrics.connections_refused, listener).inc()
            throttle = self._refusals.setdefault(listener, Throttle())
            count = throttle.event()
            if count is not None:
                log.warning(
                    "%s: %d new connection%s refused: max_connections (%d) reached",
                    listener,
                    count,
                    "" if count == 1 else "s",
                    cap,
                )
            return False
        self.open[listener] = n + 1
        return True

    def release(self, listener: str) -> None:
        self.open[listener] = max(0, self.open.get(listener, 0) - 1)

    # -- idle timeouts -----------------------------------------------------------------------

    def watch(self, connections: Collection[Connection]) -> None:
        """Make sure the idle sweep runs over *connections* (called on each new one)."""
        loop = asyncio.get_running_loop()
        if self._sweep is None or self._sweep_loop is not loop:  # not yet, or a past loop's
            self._sweep_loop = loop
            self._schedule(connections)

    def _interval(self) -> float | None:
        timeouts = [x.idle_timeout for x in (self._default, *self._limits.values())]
        positive = [t for t in timeouts if t > 0]
        if not positive:
            return None
        return min(_SWEEP_MAX, max(_SWEEP_MIN, min(positive) / 4))

    def _schedule(self, connections: Collection[Connection]) -> None:
        interval = self._interval()
        if interval is None:
            self._sweep = None
            return
        loop = asyncio.get_running_loop()
        self._sweep = loop.call_later(interval, self.sweep, connections)

    def sweep(self, connections: Collection[Connection]) -> int:
        """Close every connection idle past its listener's timeout; the number closed.
        Runs again while connections are open."""
        self._sweep = None
        now = time.monotonic()
        closed = 0
        for conn in list(connections):
            timeout = self.get(conn.listener).idle_timeout
            if timeout > 0 and conn.close_if_idle(now - timeout):
                closed += 1
        if closed:
            log.info("closed %d idle connection%s", closed, "" if closed == 1 else "s")
        if connections:
            self._schedule(connections)
        return closed


def limits_of(cfg: Config) -> dict[str, Limits]:
    """Each configured listener's limits, under the name the daemon gives the listener
    (also its metric label): ``tcp:NAME``, ``socketmap``, ``policy``, ``auth``, ``sasl``,
    ``control``."""
    sections: dict[str, ListenerSection | None] = {
        f"tcp:{name}": m if m.tcp is not None else None for name, m in cfg.maps.items()
    }
    sections["socketmap"] = cfg.socketmap if cfg.socketmap.listen is not None else None
    sections["policy"] = cfg.policy if cfg.policy.listen is not None else None
    sections["auth"] = cfg.auth if cfg.auth.listen is not None else None
    sections["sasl"] = cfg.sasl if cfg.sasl.listen is not None else None
    sections["control"] = cfg.control if cfg.control.listen is not None else None
    return {
        name: Limits(section.max_connections, section.idle_timeout)
        for name, section in sections.items()
        if section is not None
    }


def fit_descriptor_limit(connections: int) -> str | None:
    """Raise the soft descriptor limit towards the hard one so that *connections* (the
    sum of the caps) plus a reserve fit; a warning to log when they still do not."""
    needed = connections + RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft >= needed:
        return None
    return (
        f"the listeners' max_connections add up to {connections}, but the descriptor limit "
        f"is {soft}: raise it (LimitNOFILE=) or lower max_connections, or new clients are "
        "reset once descriptors run out"
    )
