"""What the listeners need from the daemon, and nothing more.

A listener never sees ``daemon.App``: it is built with a ``ListenerContext`` (base.py) and
the one thing its protocol answers from, passed as a *getter*. The getter is called for
every request, because SIGHUP swaps the whole runtime (cache, lookups, services) while
connections stay open: a request after a reload must be answered by the new runtime.

``daemon.py`` implements these; tests pass fakes (tests/unit/fakes.py). The dependency
points one way: daemon -> servers, never the reverse.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from ..auth.contract import LoginRequest, LoginResult
from ..codec.authpipe import Decoded as AuthRequest
from ..codec.policy import PolicyRequest


class MapLookups(Protocol):
    """The tcp: and socketmap: listeners' view of ``lookup.Lookups``."""

    @property
    def maps(self) -> Collection[str]:
        """The configured map names (socketmap: an unknown name is a PERM, PROTOCOLS.md §2)."""
        ...

    def cached(self, map_name: str, key: str) -> tuple[bool, str | None]:
        """(True, value-or-None) when a fresh cache entry answers at once; raises UnknownMap."""
        ...

    async def lookup(self, map_name: str, key: str) -> str | None:
        """The value, or None for "not found"; raises UnknownMap or TemporaryFailure."""
        ...


class AuthAnswerer(Protocol):
    """The auth listener's view of ``auth.service.AuthService``."""

    def answer_now(self, request: AuthRequest) -> bytes | None:
        """The reply when it needs no waiting, else None (then ``answer`` is awaited)."""
        ...

    async def answer(self, request: AuthRequest) -> bytes:
        """The reply; raises ``auth.service.TemporaryFailure`` for "close without a
        reply" (PROTOCOLS.md 4.4)."""
        ...


class Authenticator(Protocol):
    """The SASL listener's view of the login service (``auth.contract.Authenticator``):
    one call per login attempt, whatever the front door."""

    async def login(self, req: LoginRequest) -> LoginResult:
        """OK (with the account), FAIL (with the delay a front door that can wait
        observes before answering) or TEMPFAIL."""
        ...


class PolicyDecider(Protocol):
    """The policy listener's view of ``policy.service.PolicyService``."""

    async def decide(self, request: PolicyRequest) -> str | None:
        """The action for ``request``; None means "close without replying" (3.3)."""
        ...


class CacheFlusher(Protocol):
    """What the control socket's ``flush`` does: empty the current runtime's cache, after
    reading the change counter so that the poller does not flush again for the same change
    (``App.control_flush``, watch.py)."""

    async def __call__(self) -> int:
        """Flush, count it as a control flush and return the number of entries dropped."""
        ...


class ChangeNotified(Protocol):
    """What the control socket's ``changed`` does (``App.control_changed``, watch.py): wait for
    read host to apply ``gtid``, drop what the change log names; returns the reply line."""

    async def __call__(self, gtid: str | None, keys: tuple[str, ...] | None) -> str: ...
