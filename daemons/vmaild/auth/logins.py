"""The login core: one :class:`LoginService` behind both front doors (contract.py).

The authpipe door (service.py: Courier's authdaemond through vmaild-authpipe) and the
Dovecot SASL door (Postfix) each turn credentials into a ``LoginRequest`` and call
:meth:`LoginService.login`. Every attempt goes through the same steps, in this order:

1. fetch the account row (rows.py; database down: the last row seen, not ``fresh``);
2. the guard key (names.guard_key: the returned account's address lower-cased, else the
   name as typed), and ``guard.refusal``: refused -> FAIL without hashing;
3. unknown or disabled account, or a spelling other than the address up to ASCII case
   (names.py) -> FAIL after a verification against a dummy hash, so that it costs what a
   wrong password costs (no enumeration by timing); a wrong spelling counts against the
   account returned;
4. ``account.access_for(service)``: "off" -> FAIL at dummy cost; "app": app passwords only;
5. a login verified earlier against this very stored hash -> OK without hashing;
   the database down and nothing verified: TEMPFAIL, never a verdict on stale data;
6. app passwords, when a checker is wired and the password has their shape
   (``app_passwords.matches``); an "app"-only service ends here (FAIL at dummy cost);
7. the main hash, verified in the hashing pool within the account's and the client's
   share (share.py): over a share -> FAIL at once, without hashing ("busy");
8. OK: ``guard.succeeded``, ``history.record``, the Maildir, a rehash if due;
   FAIL: ``guard.failed``, whose delay is returned only to a door that ``can_wait``; the
   same wrong password for the same key again (within ``fail_window``) is no new guess
   and is not told to the guard (a client retrying a saved password, PLAIN then LOGIN).

CRAM (authpipe only) takes the same path with an HMAC against a clear-text password in
place of steps 5-7, and no dummy hashing (neither outcome hashes). PASSWD's check of the
old password (:meth:`check_password`) takes steps 1-7 with the main password only.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import passwords
from ..config import Config
from ..db import Database, DatabaseError
from ..failures import TemporaryFailure
from ..logsafe import Throttle
from ..metrics import Metrics
from ..schema_fit import SchemaFit
from .accounts import Account
from .contract import (
    AppPasswordChecker,
    Client,
    LoginGuard,
    LoginRecorder,
    LoginRequest,
    LoginResult,
    Outcome,
)
from .hashing import Hasher
from .limits import FailureLimits, LocalGuard
from .login_cache import BoundedTTL, VerifiedLogins
from .maildirs import AccountMaildirs
from .names import guard_key, same_spelling, shown_login, withheld
from .rehash import Rehasher
from .rows import AccountRows
from .share import HashShare

log = logging.getLogger("vmaild.auth")
# Refusal kinds that become metric labels; a guard's other answers are "other".
REFUSAL_KINDS = frozenset({"address", "login", "pair", "early", "busy"})
# Refusals come fast under attack: one log line per kind this often, with a count.
REFUSAL_LOG_SECONDS = 10.0
# How long a door that can wait (SASL) waits for a hashing slot over its share: well
# within the 10 s Postfix gives a login, with the FAIL delay on top.
SHARE_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Cram:
    """A CRAM-* response (PROTOCOLS.md 4.3): HMAC(clear-text password, challenge)."""

    challenge: str
    answer: str
    digestmod: str

    def matches(self, stored: str) -> bool | None:
        """None: the stored password is not clear text, CRAM cannot check it."""
        secret = passwords.clear_text(stored)
        if secret is None:
            return None
        expected = hmac.new(secret.encode(), self.challenge.encode(), self.digestmod).hexdigest()
        return hmac.compare_digest(expected.encode(), self.answer.strip().lower().encode())


@dataclass(frozen=True, slots=True)
class _Attempt:
    req: LoginRequest
    label: str  # the metric's service label
    cram: Cram | None = None
    login: bool = True  # False: PASSWD's check (main password, no metrics or side effects)


class LoginService:
    """contract.Authenticator. ``guard`` None: :class:`LocalGuard` on ``[auth] fail_*``;
    ``app_passwords``/``history`` None: none. ``app_shape`` tells an app password from a
    main one (None: every password is offered to ``app_passwords`` first)."""

    def __init__(
        self,
        cfg: Config,
        db: Database,
        metrics: Metrics,
        *,
        guard: LoginGuard | None = None,
        app_passwords: AppPasswordChecker | None = None,
        history: LoginRecorder | None = None,
        app_shape: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        fit: SchemaFit | None = None,
    ):
        ac = cfg.auth
        self.metrics = metrics
        self.rows = AccountRows(cfg, db, clock, fit)
        self.hasher = Hasher(ac.hash_workers, ac.password_scheme, ac.password_rounds, metrics)
        self.share = HashShare(
            ac.hash_share_account,
            ac.hash_share_client,
            self.hasher.workers,
            tuple(ipaddress.ip_network(n, strict=False) for n in ac.trusted_networks),
        )
        self.verified = VerifiedLogins(ac.login_cache_ttl, ac.login_cache_size, clock)
        # (guard key, password digest) of failures told to the guard: the same wrong
        # password again is no new guess (a client retrying a stale saved password, or
        # trying PLAIN and then LOGIN), so it is not counted again.
        self.counted: BoundedTTL[bool] = BoundedTTL(ac.fail_window, ac.fail_tracked, clock)
        self.guard: LoginGuard = guard or LocalGuard(
            FailureLimits(ac.fail_delay, ac.fail_delay_max, ac.fail_window, ac.fail_tracked, clock)
        )
        self.app_passwords = app_passwords
        self.app_shape = app_shape
        self.history = history
        self.rehash = Rehasher(cfg, self.rows, self.hasher, self.verified, metrics)
        self.maildirs = AccountMaildirs(cfg.mailbox, clock)
        # A refused attempt at a door that can wait waits this long (nothing shared held).
        self.refusal_delay = ac.fail_delay_max
        self._dummy: asyncio.Future[str] | None = None
        # Verifications under way by (key, stored hash, password digest): see _verify.
        self._inflight: dict[tuple[str, str, bytes], asyncio.Future[bool | None]] = {}
        self._refusal_log = {
            kind: Throttle(REFUSAL_LOG_SECONDS, clock) for kind in (*REFUSAL_KINDS, "other")
        }

    # -- entry points ----------------------------------------------------------------------

    async def login(self, req: LoginRequest) -> LoginResult:
        return await self._run(_Attempt(req, self.metrics.service_label(req.service)))

    async def login_cram(self, req: LoginRequest, cram: Cram) -> LoginResult:
        """A CRAM-* login: ``req.password`` is unused."""
        return await self._run(_Attempt(req, self.metrics.service_label(req.service), cram))

    async def check_password(self, req: LoginRequest) -> LoginResult:
        """PASSWD: is ``req.password`` the account's main password? Guarded like a login,
        but neither counted as one nor followed by its side effects."""
        return await self._run(_Attempt(req, "", login=False))

    def count(self, label: str, result: str) -> None:
        self.metrics.child(self.metrics.logins, label, result).inc()

    def close(self) -> None:
        self.hasher.close()

    # -- the steps -------------------------------------------------------------------------

    async def _run(self, at: _Attempt) -> LoginResult:
        try:
            return await self._decide(at)
        except TemporaryFailure:
            if at.login:
                self.count(at.label, "tempfail")
            return LoginResult(Outcome.TEMPFAIL)

    async def _decide(self, at: _Attempt) -> LoginResult:
        req = at.req
        account, fresh = await self.rows.fetch(req.login)
        key = guard_key(account, req.login)
        kind = await self._refusal(key, req.client, req.can_wait)
        if kind is not None:
            return self._refused(at, kind, account is not None)
        if account is None or not account.active or not same_spelling(req.login, account.address):
            if account is None:
                reason = "unknown account"
            elif not account.active:
                reason = "account disabled"
            else:
                reason = f"spelled otherwise than {account.address}"
            return await self._fail_at_dummy_cost(at, key, reason, known=account is not None)
        access = "on" if not at.login else account.access_for(req.service)
        if access == "off":
            return await self._fail_at_dummy_cost(at, key, f"{req.service} is off")
        if at.cram is not None:
            return await self._cram(at, key, account, access, fresh)
        password = req.password
        digest = self.verified.digest(password)
        if access == "on" and self.verified.check(account.address, account.password, digest):
            return await self._succeeded(at, key, account, "cached")
        if not fresh:
            # The database is down and this password was not verified against the last
            # hash seen: a temporary failure, never a verdict on stale data.
            log.warning(
                "login %s (service %s): database unavailable and login not cached",
                shown_login(req.login),
                req.service,
            )
            raise TemporaryFailure("database unavailable")
        if at.login and await self._app_password(account, req):
            return await self._succeeded(at, key, account, "app password")
        if access != "on":
            return await self._fail_at_dummy_cost(at, key, "needs an app password")
        ok = await self._verify(key, req, password, account.password)
        if ok is None:
            return self._refused(at, "busy", True)
        if not ok:
            if passwords.parse(account.password).scheme is None and account.password:
                log.error("login %s: stored password is in no known scheme", account.address)
            return await self._failed(at, key, "wrong password", known=True)
        self.verified.add(account.address, account.password, digest)
        if at.login:
            self.rehash.maybe(account, password, digest)
        return await self._succeeded(at, key, account, "verified")

    async def _cram(
        self, at: _Attempt, key: str, account: Account, access: str, fresh: bool
    ) -> LoginResult:
        assert at.cram is not None
        if access != "on":  # an app password is stored hashed: CRAM cannot use it
            return await self._failed(at, key, "needs an app password", known=True)
        if not fresh:
            raise TemporaryFailure("database unavailable")
        ok = at.cram.matches(account.password)
        if ok is None:
            return await self._failed(at, key, "CRAM needs a clear-text password", known=True)
        if not ok:
            return await self._failed(at, key, "wrong CRAM response", known=True)
        return await self._succeeded(at, key, account, "cram")

    async def _app_password(self, account: Account, req: LoginRequest) -> bool:
        """The app-password hook: asked only when a checker is wired and the password
        has the shape of an app password."""
        if self.app_passwords is None:
            return False
        if self.app_shape is not None and not self.app_shape(req.password):
            return False
        try:
            return await self.app_passwords.matches(account, req.service, req.client, req.password)
        except DatabaseError as e:
            log.warning("app passwords of %s: database unavailable: %s", account.address, e)
            raise TemporaryFailure(str(e)) from e

    # -- hashing ---------------------------------------------------------------------------

    async def _verify(self, key: str, req: LoginRequest, password: str, stored: str) -> bool | None:
        """The verification, within the shares; None: over a share, nothing hashed.

        The same password for the same stored hash already being verified is not hashed
        again: the attempt waits for that verification's answer (a mail client opening
        several connections at once after a restart or a password change would otherwise
        find its account's share taken by its own logins, and fail)."""
        if passwords.is_cheap(stored):  # inline, microseconds: no pool slot taken
            return await self.hasher.verify(password, stored)
        slot = (key, stored, self.verified.digest(password))
        running = self._inflight.get(slot)
        if running is None:
            running = asyncio.ensure_future(self._verify_shared(key, req, password, stored))
            self._inflight[slot] = running
            running.add_done_callback(lambda _: self._inflight.pop(slot, None))
        return await asyncio.shield(running)

    async def _verify_shared(
        self, key: str, req: LoginRequest, password: str, stored: str
    ) -> bool | None:
        """A door that can wait waits for a slot over its share (share.py), at most
        SHARE_WAIT seconds; one that cannot gets None at once."""
        client = self.share.counted_client(req.client)
        if not await self.share.acquire(key, client, SHARE_WAIT if req.can_wait else 0.0):
            return None
        try:
            return await self.hasher.verify(password, stored)
        except RuntimeError as e:  # the pool was shut down by a reload meanwhile
            raise TemporaryFailure(str(e)) from e
        finally:
            self.share.release(key, client)

    async def dummy_hash(self) -> str:
        """A hash in the configured scheme and rounds of a random password, made once, in
        the hashing pool, on first use."""
        if self._dummy is None:
            self._dummy = asyncio.ensure_future(self.hasher.hash(secrets.token_urlsafe(18)))
        try:
            return await asyncio.shield(self._dummy)
        except RuntimeError as e:
            self._dummy = None
            raise TemporaryFailure(str(e)) from e

    async def _fail_at_dummy_cost(
        self, at: _Attempt, key: str, reason: str, known: bool = True
    ) -> LoginResult:
        if at.cram is None:  # CRAM hashes nothing, whatever the account
            if await self._verify(key, at.req, at.req.password, await self.dummy_hash()) is None:
                return self._refused(at, "busy", known)
        return await self._failed(at, key, reason, known)

    # -- outcomes --------------------------------------------------------------------------

    async def _refusal(self, key: str, client: Client | None, can_wait: bool) -> str | None:
        try:
            return await self.guard.refusal(key, client, can_wait=can_wait)
        except DatabaseError as e:  # a shared guard's database: no reason to refuse logins
            log.warning("login guard unavailable, attempt let through: %s", e)
            return None

    def _refused(self, at: _Attempt, kind: str, known: bool) -> LoginResult:
        """Refused before any verdict on the password: answered like a wrong password,
        not counted as a failure."""
        label = kind if kind in REFUSAL_KINDS else "other"
        self.metrics.child(self.metrics.login_refusals, label).inc()
        if at.login:
            self.count(at.label, "fail")
        count = self._refusal_log[label].event()
        if count is not None:
            log.info(
                "login %s (service %s) refused: %s%s",
                shown_login(at.req.login) if known else withheld(at.req.login),
                at.req.service,
                "too many verifications at once" if kind == "busy" else f"{label} blocked",
                f" ({count - 1} more refused since the last such line)" if count > 1 else "",
            )
        return LoginResult(Outcome.FAIL, delay=self.refusal_delay if at.req.can_wait else 0.0)

    async def _failed(self, at: _Attempt, key: str, reason: str, known: bool) -> LoginResult:
        """FAIL, counted, logged, and told to the guard. A login name that matches no
        account (*known* false) is logged only at debug: it may well be a password typed
        into the user name field, which must not land in the mail log."""
        req = at.req
        if at.login:
            self.count(at.label, "fail")
        again = False
        if at.cram is None:  # a CRAM response differs with every challenge
            slot = (key, self.verified.digest(req.password))
            again = self.counted.get(slot) is not None
            self.counted.put(slot, True)
        delay = 0.0
        if req.login and not again:
            try:
                delay = await self.guard.failed(
                    key, req.client, service=req.service, known=known, can_wait=req.can_wait
                )
            except DatabaseError as e:
                log.warning("login guard unavailable, failure not recorded: %s", e)
        waits = delay > 0 and req.can_wait
        log.info(
            "login %s (service %s) failed: %s%s%s",
            shown_login(req.login) if known else withheld(req.login),
            req.service,
            reason,
            " (the same password again: not counted)" if again else "",
            f"; reply delayed {delay:g}s" if waits else "",
        )
        if not known and log.isEnabledFor(logging.DEBUG):
            log.debug("the login name that matched no account: '%s'", shown_login(req.login))
        if not waits:
            return LoginResult(Outcome.FAIL)
        self.metrics.login_limited.inc()
        return LoginResult(Outcome.FAIL, delay=delay)

    async def _succeeded(self, at: _Attempt, key: str, account: Account, how: str) -> LoginResult:
        req = at.req
        try:
            await self.guard.succeeded(key, req.client)
        except DatabaseError as e:
            log.warning("login guard unavailable, success not recorded: %s", e)
        if at.login:
            if self.history is not None:
                self.history.record(account.address, req.service, req.client)
            self.count(at.label, "ok")
            if log.isEnabledFor(logging.DEBUG):  # shown_login() costs more than the rest
                log.debug(
                    "login %s as %s (service %s): ok (%s)",
                    shown_login(req.login),
                    account.address,
                    req.service,
                    how,
                )
            await self.maildirs.ensure(account)
        return LoginResult(Outcome.OK, account=account)
