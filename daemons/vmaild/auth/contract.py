"""The login service's contract: one login core, two front doors.

Courier's authpipe (``servers/auth.py``, through vmaild-authpipe and authdaemond) and
Postfix's Dovecot SASL protocol (``servers/sasl.py``) both turn a client's credentials into
a :class:`LoginRequest` and ask an :class:`Authenticator` for a :class:`LoginResult`. What
differs between the doors is only what they know (the client's address: SASL yes, authpipe
no) and whether they may wait before answering FAIL without holding anything shared (a
SASL request waits in its own smtpd's connection; an authpipe request holds one of
authdaemond's few workers, so it never waits).

The pieces the core consults are narrow protocols, so each lives in its own module and
tests pass fakes: the brute-force guard (``guard.py``), app passwords
(``app_passwords.py``) and the login history (``history.py``).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

from .accounts import Account

Client = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Services a login is for, as accounts, app passwords and history name them.
SERVICES = ("imap", "pop3", "smtp")


def service_name(raw: str) -> str:
    """The service a front door's name stands for: Courier's imapd sends "imap", pop3d
    "pop3", Cyrus SASL and Postfix "smtp"; anything else is kept lower-cased."""
    s = raw.strip().lower()
    if s in ("imaps", "imap4"):
        return "imap"
    if s in ("pop3s", "pop"):
        return "pop3"
    if s in ("submission", "submissions", "esmtp", "smtps"):
        return "smtp"
    return s


@dataclass(frozen=True, slots=True)
class LoginRequest:
    service: str  # service_name(): "imap", "pop3", "smtp", or what the client said
    login: str
    password: str = field(repr=False)
    client: Client | None = None  # the client's address, where the front door knows it
    secured: bool = False  # TLS or a local connection (Dovecot's "secured")
    front: str = "authpipe"  # "authpipe" | "sasl": for metrics and log lines
    can_wait: bool = False  # True: delaying the FAIL reply holds nothing shared


class Outcome(enum.Enum):
    OK = "ok"
    FAIL = "fail"  # wrong credentials, unknown, disabled, refused: all look the same
    TEMPFAIL = "tempfail"  # database down and nothing verified to stand in: try later


@dataclass(frozen=True, slots=True)
class LoginResult:
    outcome: Outcome
    account: Account | None = None  # set on OK
    # Seconds a front door that ``can_wait`` waits before sending FAIL (0 otherwise).
    delay: float = 0.0


class Authenticator(Protocol):
    """What a front door needs: one call per login attempt."""

    async def login(self, req: LoginRequest) -> LoginResult: ...


class LoginGuard(Protocol):
    """Brute-force defence (``guard.py``). ``key`` is the account's address when the
    database returned one (so every spelling the database treats as equal counts as one
    login), else the login as typed, lower-cased."""

    async def refusal(self, key: str, client: Client | None, *, can_wait: bool) -> str | None:
        """Before any hashing: None to go on, or the kind of block ("address", "login",
        "pair", or "early": a door that cannot wait came back within the delay) that
        refuses this attempt. A refusal is answered like a wrong password."""
        ...

    async def failed(
        self, key: str, client: Client | None, *, service: str, known: bool, can_wait: bool
    ) -> float:
        """Record a failed attempt; return the delay for a front door that can wait.
        ``known``: ``key`` is an account's address (else a typed name, withheld from logs)."""
        ...

    async def succeeded(self, key: str, client: Client | None) -> None:
        """A successful login: forget this login's failures from this client."""
        ...


class AppPasswordChecker(Protocol):
    """App passwords (``app_passwords.py``)."""

    async def matches(
        self, account: Account, service: str, client: Client | None, password: str
    ) -> bool:
        """True if ``password`` is an app password of ``account`` valid now for
        ``service`` (and ``client``, where known). Raises DatabaseError when the database
        cannot answer."""
        ...


class LoginRecorder(Protocol):
    """The login history (``history.py``): never blocks, never writes per login."""

    def record(self, address: str, service: str, client: Client | None) -> None: ...
