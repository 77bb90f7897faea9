"""The brute-force guard's rules as pure functions of counts and a time (guard.py says why).

No I/O here: :class:`Rules` turns a login attempt into the subjects it is counted under
(:func:`Rules.attempt`), and decides from the counts a store returned whether an attempt
is refused (:meth:`Rules.refusal`) and how long a FAIL waits (:meth:`Rules.delay`). The
stores (guard_store.py) apply the same counting rule in SQL and in memory.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from ..sections_logins import AuthConfig
from .contract import Client

ADDRESS = "address"  # a client address prefix
LOGIN = "login"  # a login: the account's address, or the name as typed
PAIR = "pair"  # one login from one address prefix
EARLY = "early"  # refusal kind: a door that cannot wait came back within the delay
KINDS = (ADDRESS, LOGIN, PAIR)

# Longest login key stored as is; longer ones (and ones that are not valid UTF-8, from
# surrogate escapes) are stored by digest, so every subject fits the varchar(255) column.
MAX_KEY = 200


@dataclass(frozen=True, slots=True, order=True)
class Subject:
    """One counter: its kind and what it counts (a prefix, a login, "prefix login")."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Tally:
    """A counter as read from a store: ``failures`` already 0 once the window passed."""

    failures: int = 0
    last_at: float = 0.0  # seconds since the epoch of the last failure
    blocked_until: float = 0.0  # seconds since the epoch; in the past: not blocked

    def blocked(self, now: float) -> bool:
        return self.blocked_until > now


@dataclass(frozen=True, slots=True)
class Attempt:
    """The subjects one attempt is counted under and checked against.

    ``address`` and ``pair`` are None when the client's address is unknown (authpipe) or
    trusted; ``known`` says whether the front door knew the address at all."""

    login: Subject
    address: Subject | None
    pair: Subject | None
    known: bool
    trusted: bool
    client: str  # the client's address as text for log lines, "" when unknown

    def subjects(self) -> tuple[Subject, ...]:
        """Address, login, pair: always in this order (the store locks rows in it)."""
        return tuple(s for s in (self.address, self.login, self.pair) if s is not None)


def login_key(key: str) -> str:
    """The stored form of a login key: lower-cased; by digest when long or not UTF-8."""
    key = key.lower()
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raw = key.encode("utf-8", "surrogateescape")
    else:
        if len(key) <= MAX_KEY:
            return key
        raw = key.encode("utf-8")
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class Rules:
    """Thresholds, window, delays and prefixes from ``[auth]`` (sections.AuthConfig)."""

    def __init__(self, ac: AuthConfig):
        self.window = ac.fail_window
        self.block_time = ac.block_time
        self.delay_base = ac.fail_delay
        self.delay_cap = ac.fail_delay_max
        self.delay_after = ac.fail_delay_after
        self.thresholds = {
            ADDRESS: ac.block_address_after,
            LOGIN: ac.block_login_after,
            PAIR: ac.block_pair_after,
        }
        self.ipv4_prefix = ac.ipv4_prefix
        self.ipv6_prefix = ac.ipv6_prefix
        self.trusted = tuple(ipaddress.ip_network(n, strict=False) for n in ac.trusted_networks)

    # -- subjects ----------------------------------------------------------------------------

    def attempt(self, key: str, client: Client | None) -> Attempt:
        login = Subject(LOGIN, login_key(key))
        if client is None:
            return Attempt(login, None, None, known=False, trusted=False, client="")
        addr = _unmapped(client)
        if any(addr in net for net in self.trusted):
            return Attempt(login, None, None, known=True, trusted=True, client=str(addr))
        prefix = self.prefix(addr)
        return Attempt(
            login,
            Subject(ADDRESS, prefix),
            Subject(PAIR, f"{prefix} {login.name}"),
            known=True,
            trusted=False,
            client=str(addr),
        )

    def prefix(self, addr: Client) -> str:
        """The address prefix counted as one client: ``203.0.113.7/32``, ``2001:db8::/64``
        (an IPv4-mapped IPv6 address counts as the IPv4 client it stands for)."""
        addr = _unmapped(addr)
        length = self.ipv4_prefix if addr.version == 4 else self.ipv6_prefix
        return str(ipaddress.ip_network(f"{addr}/{length}", strict=False))

    # -- decisions ---------------------------------------------------------------------------

    def threshold(self, kind: str) -> int:
        """Failures from which a kind blocks (0: never)."""
        return self.thresholds[kind]

    def delay_for(self, failures: int) -> float:
        """The wait after the n-th failure: 0 below ``fail_delay_after``, then base,
        2*base, 4*base ... at most ``fail_delay_max``."""
        if failures < self.delay_after or self.delay_base <= 0:
            return 0.0
        return float(
            min(self.delay_cap, self.delay_base * 2 ** min(failures - self.delay_after, 32))
        )

    def delay(self, tallies: Mapping[Subject, Tally]) -> float:
        """The delay after a failure: from the highest count the attempt was counted under."""
        return self.delay_for(max((t.failures for t in tallies.values()), default=0))

    def refusal(
        self, attempt: Attempt, tallies: Mapping[Subject, Tally], now: float, can_wait: bool
    ) -> str | None:
        """The kind of block that refuses this attempt, or None.

        - A known, untrusted address: refused if its prefix is blocked, or this login from
          this prefix (the pair). A login-wide block alone never refuses it: someone else
          attacking the same login elsewhere must not lock its owner out (it only adds delay).
        - A trusted address: never refused (its failures still count for the login).
        - An unknown address (authpipe): refused if the login is blocked.
        - A door that cannot wait: refused ("early") if it comes back before the delay
          earned by the last failure has passed, the wait it could not make.
        """
        empty = Tally()
        if attempt.address is not None and attempt.pair is not None:
            if tallies.get(attempt.address, empty).blocked(now):
                return ADDRESS
            if tallies.get(attempt.pair, empty).blocked(now):
                return PAIR
        elif not attempt.known and tallies.get(attempt.login, empty).blocked(now):
            return LOGIN
        if not can_wait:
            for subject in attempt.subjects():
                t = tallies.get(subject, empty)
                if t.failures and now < t.last_at + self.delay_for(t.failures):
                    return EARLY
        return None

    def counted(self, tally: Tally, now: float) -> Tally:
        """``tally`` with its failures forgotten once ``window`` has passed since the last."""
        if tally.failures and tally.last_at <= now - self.window:
            return Tally(0, tally.last_at, tally.blocked_until)
        return tally


def _unmapped(addr: Client) -> Client:
    """An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) is the IPv4 client it stands for."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr
