"""Brute-force defence: failed logins counted by address, by login and by both, on every host.

The login core (contract.LoginGuard) asks :meth:`Guard.refusal` before any hashing, tells
:meth:`Guard.failed` about a wrong password (unknown names too: they are counted and
blocked like known ones, so a refusal never tells whether an account exists) and
:meth:`Guard.succeeded` about a success. A refusal is answered like a wrong password.

**What is counted.** Each failure counts under up to three subjects (guard_rules.py):

- ``address``: the client's address prefix (IPv4 /32, IPv6 /64: ``[auth] ipv4_prefix``,
  ``ipv6_prefix``), where the front door knows the address (SASL) and it is not in
  ``trusted_networks`` (default loopback: webmail on localhost speaks for many users);
- ``login``: the account's address the database returned, lower-cased (so every spelling
  the database treats as equal is one login), or the name as typed for unknown names;
- ``pair``: this login from this address prefix (known, untrusted addresses only).

Counts live in the database's ``login_failures`` table (guard_store.py: one atomic upsert
per failure), so every vmaild host on the database sees the same counts. A count restarts
once ``fail_window`` seconds passed since its last failure.

**What the counts do.** From the ``fail_delay_after``-th failure of any of its subjects, a
FAIL waits ``fail_delay``, doubling, at most ``fail_delay_max`` (``failed()`` returns it;
only a front door that can wait without holding anything shared waits). From the
``block_<kind>_after``-th failure a subject is blocked for ``block_time`` seconds:

- a known address is refused while its prefix or its (login, prefix) pair is blocked. A
  login-wide block alone never refuses a known address that is not itself blocked: the
  owner of a login attacked from elsewhere keeps logging in (their own failures still
  wait the delay);
- an unknown address (authpipe: Courier IMAP/POP3) is refused while the login is blocked;
- an attempt from a door that cannot wait (authpipe) that arrives before the delay earned
  by the login's last failure has passed is refused ("early"): the wait it cannot make;
- a trusted address is never refused.

A refused attempt is not counted (no write per refused attempt: a flood costs reads, and
a block seen once is remembered here for up to ``BLOCK_CACHE_SECONDS``, so not even those).

**Success.** Clears only the pair (this login from this prefix), and only when failures
are recorded for it (a read before told so): never a write per successful login. The
login-wide count is not cleared by its owner's success, which would hand an attacker
elsewhere a fresh allowance at each of the owner's logins; it expires with the window.

**The database down or the table missing** never refuses nor fails a login: the guard
counts in this process (guard_store.MemoryStore, the same rule) and tries the database
again after ``[database] retry_interval``; one log line when that starts, one when it ends.

**Log lines** (logger ``vmaild.guard``; ``fail2ban/filter.d/vmaild.conf`` matches the
first): ``login failed: client=203.0.113.7 service=smtp failures=3 delay=1s`` per failure
from a known, untrusted address; ``login failed from a trusted network: client=...`` for a
trusted one (no fail2ban match); ``login blocked: kind=pair client=... login=...
failures=5 for=900s`` once per block, by the host whose failure started it. Login names
not vouched for by the caller (``known``) are withheld: one may be a password typed into
the name field.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from ..config import Config
from ..db import Database
from ..logsafe import shown
from ..metrics import Metrics
from .contract import Client
from .guard_rules import ADDRESS, LOGIN, PAIR, Attempt, Rules, Subject, Tally
from .guard_store import TABLE, DbStore, MemoryStore, Store

log = logging.getLogger("vmaild.guard")
# How long a block read from the database is trusted without reading again (an admin
# deleting the row takes effect within this).
BLOCK_CACHE_SECONDS = 10.0


class Guard:
    """contract.LoginGuard. ``store`` replaces the database's (tests)."""

    def __init__(
        self,
        cfg: Config,
        db: Database | None,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        *,
        store: Store | None = None,
    ):
        ac = cfg.auth
        self.rules = Rules(ac)
        self.metrics = metrics
        self.clock = clock
        self.shared: Store | None = store
        if store is None and db is not None:
            self.shared = DbStore(self.rules, db)
        self.local = MemoryStore(self.rules, ac.fail_tracked)
        self.retry_interval = max(cfg.database.retry_interval, 1.0)
        self._max = ac.fail_tracked
        self._local_until = 0.0  # counting in this process until then
        self._local_logged = False
        # Active blocks seen: subject -> (blocked_until, trusted until).
        self._blocks: OrderedDict[Subject, tuple[float, float]] = OrderedDict()
        # Pairs with failures recorded: a success clears them (and only these).
        self._dirty: OrderedDict[Subject, None] = OrderedDict()
        metrics.guard_local.set(0)

    # -- contract.LoginGuard -----------------------------------------------------------------

    async def refusal(
        self, key: str, client: Client | None, *, can_wait: bool | None = None
    ) -> str | None:
        """None, or the kind that refuses ("address", "pair", "login", "early").
        ``can_wait``: whether the front door may delay its FAIL; by default, whether it
        knows the client's address (SASL yes, authpipe no)."""
        now = self.clock()
        attempt = self.rules.attempt(key, client)
        waits = attempt.known if can_wait is None else can_wait
        kind = self.rules.refusal(attempt, self._cached(attempt, now), now, True)
        if kind is None:
            tallies = await self._read(attempt.subjects(), now)
            self._remember(attempt, tallies, now)
            kind = self.rules.refusal(attempt, tallies, now, waits)
        if kind is not None:
            self.metrics.child(self.metrics.guard_refusals, kind).inc()
        return kind

    async def failed(
        self,
        key: str,
        client: Client | None,
        *,
        service: str = "",
        known: bool = False,
        can_wait: bool | None = None,
    ) -> float:
        """Count a failure; the delay for a front door that can wait. ``service`` and
        ``known`` (``key`` is an account's address, safe to log) only shape log lines."""
        now = self.clock()
        attempt = self.rules.attempt(key, client)
        subjects = attempt.subjects()
        recorded = await self._record(subjects, now)
        m = self.metrics
        for s in subjects:
            m.child(m.guard_failures, s.kind).inc()
        tallies = {s: t for s, (t, _) in recorded.items()}
        self._remember(attempt, tallies, now)
        for s, (t, started) in recorded.items():
            if started:
                m.child(m.guard_blocks, s.kind).inc()
                self._log_block(attempt, s, t, key, known)
        delay = self.rules.delay(tallies)
        if delay and (attempt.known if can_wait is None else can_wait):
            m.guard_delays.inc()
        if attempt.known:
            self._log_failure(attempt, tallies, delay, service)
        return delay

    async def succeeded(self, key: str, client: Client | None) -> None:
        attempt = self.rules.attempt(key, client)
        pair = attempt.pair
        if pair is None:
            return
        await self.local.clear([pair])
        if pair not in self._dirty:
            return
        del self._dirty[pair]
        self._blocks.pop(pair, None)
        if self._shared_now(self.clock()):
            assert self.shared is not None
            try:
                await self.shared.clear([pair])
            except Exception as e:  # noqa: BLE001 - never fail a login because of the guard
                self._fall_back(e, self.clock())

    # -- the store, or this process ----------------------------------------------------------

    def _shared_now(self, now: float) -> bool:
        return self.shared is not None and now >= self._local_until

    async def _read(self, subjects: Sequence[Subject], now: float) -> Mapping[Subject, Tally]:
        if self._shared_now(now):
            assert self.shared is not None
            try:
                found = await self.shared.read(subjects, now)
            except Exception as e:  # noqa: BLE001 - never refuse nor fail because of it
                self._fall_back(e, now)
            else:
                self._shared_again()
                return found
        return await self.local.read(subjects, now)

    async def _record(
        self, subjects: Sequence[Subject], now: float
    ) -> Mapping[Subject, tuple[Tally, bool]]:
        if self._shared_now(now):
            assert self.shared is not None
            try:
                found = await self.shared.record(subjects, now)
            except Exception as e:  # noqa: BLE001
                self._fall_back(e, now)
            else:
                self._shared_again()
                return found
        return await self.local.record(subjects, now)

    def _fall_back(self, error: Exception, now: float) -> None:
        self._local_until = now + self.retry_interval
        self.metrics.guard_local.set(1)
        if not self._local_logged:
            self._local_logged = True
            log.warning(
                "login guard: cannot use the database's %s table (%s); counting failed "
                "logins in this process only, trying the database every %gs",
                TABLE,
                shown(str(error)),
                self.retry_interval,
            )

    def _shared_again(self) -> None:
        if self._local_logged:
            self._local_logged = False
            self.metrics.guard_local.set(0)
            log.info("login guard: the database answers again; failed logins are shared again")

    # -- what this host remembers ------------------------------------------------------------

    def _cached(self, attempt: Attempt, now: float) -> dict[Subject, Tally]:
        out = {}
        for s in attempt.subjects():
            entry = self._blocks.get(s)
            if entry is None:
                continue
            until, trusted_until = entry
            if until > now and trusted_until > now:
                out[s] = Tally(0, 0.0, until)
            else:
                del self._blocks[s]
        return out

    def _remember(self, attempt: Attempt, tallies: Mapping[Subject, Tally], now: float) -> None:
        for s, t in tallies.items():
            if t.blocked(now):
                self._blocks[s] = (t.blocked_until, now + BLOCK_CACHE_SECONDS)
                self._blocks.move_to_end(s)
        pair = attempt.pair
        if pair is not None:
            if tallies.get(pair, Tally()).failures:
                self._dirty[pair] = None
                self._dirty.move_to_end(pair)
            else:
                self._dirty.pop(pair, None)
        while len(self._blocks) > self._max:
            self._blocks.popitem(last=False)
        while len(self._dirty) > self._max:
            self._dirty.popitem(last=False)

    # -- log lines ---------------------------------------------------------------------------

    def _log_failure(
        self, attempt: Attempt, tallies: Mapping[Subject, Tally], delay: float, service: str
    ) -> None:
        failures = max((t.failures for t in tallies.values()), default=0)
        line = "login failed from a trusted network" if attempt.trusted else "login failed"
        log.info(
            "%s: client=%s service=%s failures=%d delay=%gs",
            line,
            attempt.client,
            shown(service, 20) if service else "-",
            failures,
            delay,
        )

    def _log_block(
        self, attempt: Attempt, subject: Subject, tally: Tally, key: str, known: bool
    ) -> None:
        login = shown(key.lower(), 100) if known else "(withheld)"
        what = {
            ADDRESS: f"prefix={subject.name}",
            PAIR: f"login={login}",
            LOGIN: f"login={login}",
        }[subject.kind]
        client = f" client={attempt.client}" if attempt.client else ""
        log.warning(
            "login blocked: kind=%s%s %s failures=%d for=%gs",
            subject.kind,
            client,
            what,
            tally.failures,
            self.rules.block_time,
        )
