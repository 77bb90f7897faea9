"""The auth service: Courier authpipe requests in, reply bytes (or a temporary failure) out.

``vmaild-authpipe`` relays each request authdaemond gives it over ``[auth] listen``; the
listener (servers/auth.py) hands the decoded request to :meth:`AuthService.answer`. The
replies follow PROTOCOLS.md 4.4 byte for byte: account fields ending ``.\\n``, exactly
``FAIL\\n``, ``OK\\n`` for PASSWD, or the ENUMERATE listing. A temporary failure (database
down, an unusable row, a bug) is :class:`TemporaryFailure`: the listener then closes
without a reply, the relay exits without writing, and authdaemond reports a temporary
error, never "wrong password" (4.4, "Temporary failure").

AUTH (login, and CRAM-*) is decoded here and decided by the login core (logins.py), which
the Dovecot SASL door shares: this door only knows no client address and never waits
(``can_wait`` False: a waiting request would hold one of authdaemond's few workers). PRE
answers from the same account rows (rows.py; the last row seen while the database is
down); PASSWD's old password is checked by the core, guarded like a login. An account
answered for (PRE, or a login that succeeds) gets its missing Maildir created
(maildirs.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol, runtime_checkable

from .. import passwords
from ..codec import authpipe as codec
from ..config import Config
from ..db import Database, DatabaseError
from ..failures import TemporaryFailure
from ..logsafe import shown
from ..memo import ReplyMemo
from ..metrics import Metrics
from ..schema_fit import SchemaFit
from .accounts import Account
from .contract import (
    AppPasswordChecker,
    LoginGuard,
    LoginRecorder,
    LoginRequest,
    LoginResult,
    Outcome,
    service_name,
)
from .logins import Cram, LoginService
from .names import shown_login, withheld

log = logging.getLogger("vmaild.auth")
# Metric label of each request type (a fixed set, never request data).
_KINDS: dict[type, str] = {
    codec.Pre: "pre",
    codec.Auth: "auth",
    codec.Passwd: "passwd",
    codec.Enumerate: "enumerate",
}

# authtype -> the HMAC's hash (authsaslcram.c).
_CRAM = {"cram-md5": "md5", "cram-sha1": "sha1", "cram-sha256": "sha256"}
# Encoded account replies kept (cleared when full).
REPLY_MEMO = 10_000


class AuthService:
    """The authpipe front door. ``guard``, ``app_passwords`` and ``history`` are handed to
    the login core (logins.py), which the SASL door shares through :meth:`login`."""

    def __init__(
        self,
        cfg: Config,
        db: Database,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        fit: SchemaFit | None = None,
        guard: LoginGuard | None = None,
        app_passwords: AppPasswordChecker | None = None,
        history: LoginRecorder | None = None,
        app_shape: Callable[[str], bool] | None = None,
    ):
        self.cfg = cfg
        self.metrics = metrics
        self.core = LoginService(
            cfg,
            db,
            metrics,
            guard=guard,
            app_passwords=app_passwords,
            history=history,
            app_shape=app_shape,
            clock=clock,
            fit=fit,
        )
        self._history = history
        self._app_passwords = app_passwords
        # The core's parts this door uses too.
        self.rows = self.core.rows
        self.accounts = self.core.rows.source
        self.hasher = self.core.hasher
        self.verified = self.core.verified
        self.maildirs = self.core.maildirs
        # Encoded replies by the whole row: the same accounts log in over and over.
        self._reply = ReplyMemo(self._encode, REPLY_MEMO)

    @property
    def fit(self) -> SchemaFit | None:
        return self.rows.fit

    @fit.setter
    def fit(self, fit: SchemaFit | None) -> None:
        self.rows.fit = fit

    # -- entry points ----------------------------------------------------------------------

    def answer_now(self, request: codec.Decoded) -> bytes | None:
        """Replies that need no waiting (a malformed request gets FAIL, 4.4)."""
        if isinstance(request, codec.BadRequest):
            # Logged by the listener, once per connection (servers/base.py): a client
            # sending bad lines must not get one log line each.
            self._count("bad", "fail", 0.0)
            return codec.FAIL
        return None

    async def answer(self, request: codec.Decoded) -> bytes:
        """The reply bytes; raises TemporaryFailure for "no reply". Every request is
        counted by kind (pre: maildrop's and imapd's account lookups; auth; passwd;
        enumerate) and result, so lookups that never log in are visible too."""
        kind = _KINDS.get(type(request), "bad")
        started = time.perf_counter()
        result = "tempfail"
        try:
            reply = await self._answer(request)
            result = "fail" if reply == codec.FAIL else "ok"
            return reply
        finally:
            self._count(kind, result, time.perf_counter() - started)

    def _count(self, kind: str, result: str, seconds: float) -> None:
        m = self.metrics
        m.child(m.auth_requests, kind, result).inc()
        m.child(m.auth_request_seconds, kind).observe(seconds)

    async def _answer(self, request: codec.Decoded) -> bytes:
        if isinstance(request, codec.Auth):
            return await self.auth(request)
        if isinstance(request, codec.Pre):
            return await self.pre(request)
        if isinstance(request, codec.Passwd):
            return await self.passwd(request)
        if isinstance(request, codec.Enumerate):
            return await self.enumerate()
        return self.answer_now(request) or codec.FAIL

    @classmethod
    def for_config(
        cls, cfg: Config, db: Database, metrics: Metrics, *, fit: SchemaFit | None = None
    ) -> AuthService:
        """The service as the daemon runs it: the shared brute-force guard, app passwords
        and the login history, all on ``db`` (contract.py)."""
        from .app_passwords import AppPasswords
        from .app_secrets import looks_like_app_password
        from .guard import Guard
        from .history import LoginHistory

        return cls(
            cfg,
            db,
            metrics,
            fit=fit,
            guard=Guard(cfg, db, metrics),
            app_passwords=AppPasswords(cfg, db, metrics),
            history=LoginHistory(cfg, db),
            app_shape=looks_like_app_password,
        )

    def start(self) -> None:
        """Start the background work (the login history's writes); on the event loop."""
        if isinstance(self._history, _Startable):
            self._history.start()

    async def aclose(self) -> None:
        """Before :meth:`close`, on the event loop: write the pending login history and
        wait for app passwords' last-used updates under way."""
        for part in (self._history, self._app_passwords):
            if isinstance(part, _Closable):
                await part.close()

    def close(self) -> None:
        """Called on reload and stop, from a worker thread (so no task is touched here):
        hashing already under way finishes, new hashing is refused, and a request still
        in flight on this runtime gets a temporary failure."""
        self.core.close()

    async def login(self, req: LoginRequest) -> LoginResult:
        """One login attempt from any front door (contract.py): the login core's."""
        return await self.core.login(req)

    # -- PRE -------------------------------------------------------------------------------

    async def pre(self, req: codec.Pre) -> bytes:
        """Password-less lookup (maildrop -d, authtest without a password)."""
        account, _ = await self.rows.fetch(req.username)
        if account is None or not account.active:
            log.info(
                "lookup %s (service %s): %s",
                shown_login(req.username),
                shown(req.service),
                "unknown" if account is None else "disabled",
            )
            return codec.FAIL
        await self.maildirs.ensure(account)
        return self._reply(account)

    # -- AUTH ------------------------------------------------------------------------------

    async def auth(self, req: codec.Auth) -> bytes:
        """decode -> LoginRequest (no client address, never waits) -> the core -> encode."""
        service = service_name(req.service)
        authtype = req.authtype.lower()
        if authtype == "login":
            creds = req.login()
            if creds is None:
                return self._malformed(service, "malformed login data")
            result = await self.core.login(_request(service, *creds))
        elif authtype in _CRAM:
            parts = req.cram()
            if parts is None:
                return self._malformed(service, "malformed CRAM data")
            challenge, response = parts
            login, _, answer = response.rpartition(" ")
            if not login:
                return self._malformed(service, "malformed CRAM response")
            cram = Cram(challenge, answer, _CRAM[authtype])
            result = await self.core.login_cram(_request(service, login, ""), cram)
        else:
            # Unknown authtype (4.3): FAIL, and authdaemond tries its next module.
            return self._malformed(service, f"unsupported authtype {authtype[:20]!r}")
        if result.outcome is Outcome.TEMPFAIL:
            raise TemporaryFailure("login: temporary failure")
        if result.outcome is Outcome.FAIL or result.account is None:
            return codec.FAIL
        return self._reply(result.account)

    def _malformed(self, service: str, reason: str) -> bytes:
        self.core.count(self.metrics.service_label(service), "fail")
        log.info("login (none) (service %s) failed: %s", shown(service, 40), reason)
        return codec.FAIL

    # -- PASSWD ----------------------------------------------------------------------------

    async def passwd(self, req: codec.Passwd) -> bytes:
        """Change a password: the old one must verify; store a new hash (4.3).

        The old password is checked by the login core (guarded like a login: a refused
        or over-share attempt fails without hashing, a wrong one counts as a failure). The
        UPDATE is conditional on the hash the old password was verified against. If that
        hash changed meanwhile (typically our own rehash of the login just before), the
        check is made once more against the new one: the old password may well still be
        right, and a change must not fail because of an upgrade it never saw."""
        login, new = req.username, req.new
        if not new or len(new) > passwords.MAX_PASSWORD or any(ord(c) < 32 for c in new):
            return self._passwd_fail(login, "unacceptable new password")
        check = _request(service_name(req.service), login, req.old)
        new_hash: str | None = None
        for _attempt in range(2):
            result = await self.core.check_password(check)
            if result.outcome is Outcome.TEMPFAIL:
                raise TemporaryFailure("password change: temporary failure")
            account = result.account
            if result.outcome is Outcome.FAIL or account is None:
                return self._passwd_fail(login, "the old password did not verify", known=False)
            if new_hash is None:
                try:
                    new_hash = await self.hasher.hash(new)
                except RuntimeError as e:
                    raise TemporaryFailure(str(e)) from e
            if await self._update("passwd_query", account, new_hash) == 1:
                break
        else:
            return self._passwd_fail(login, "the password kept changing meanwhile")
        self.rows.seen.put(login.lower(), replace(account, password=new_hash))
        self.core.verified.add(account.address, new_hash, self.core.verified.digest(new))
        log.info("password changed for %s (service %s)", account.address, shown(req.service))
        return codec.OK

    def _passwd_fail(self, login: str, reason: str, known: bool = True) -> bytes:
        # A name the core did not verify may be a mistyped password: withheld (logins.py).
        name = shown_login(login) if known else withheld(login)
        log.info("password change for %s refused: %s", name, reason)
        return codec.FAIL

    async def _update(self, key: str, account: Account, new_hash: str) -> int:
        try:
            return await self.accounts.update_password(
                getattr(self.cfg.auth, key), account.address, account.password, new_hash
            )
        except DatabaseError as e:
            if not self.rows.misfit(key, e):
                log.warning("password update for %s failed: %s", account.address, e)
            raise TemporaryFailure(str(e)) from e

    # -- ENUMERATE -------------------------------------------------------------------------

    async def enumerate(self) -> bytes:
        try:
            accounts = await self.accounts.enumerate()
        except DatabaseError as e:
            if not self.rows.misfit("enumerate_query", e):
                log.warning("ENUMERATE: database unavailable: %s", e)
            raise TemporaryFailure(str(e)) from e
        return codec.reply_enumerate((a.address, a.uid, a.gid, a.home, a.maildir) for a in accounts)

    # -- helpers ---------------------------------------------------------------------------

    def _encode(self, account: Account) -> bytes:
        try:
            # 8190: one byte under what Cyrus SASL accepts, should a client talk to us
            # directly (PROTOCOLS.md 5.2); authdaemond takes 8191.
            return codec.reply_account(account.fields(), max_reply=codec.CYRUS_MAX_REPLY)
        except ValueError as e:
            log.error("account %s cannot be sent: %s", account.address, e)
            raise TemporaryFailure(str(e)) from e


def _request(service: str, login: str, password: str) -> LoginRequest:
    """This door's request: no client address, and it never waits (module docstring)."""
    return LoginRequest(service, login, password, front="authpipe", can_wait=False)


@runtime_checkable
class _Startable(Protocol):
    def start(self) -> object: ...


@runtime_checkable
class _Closable(Protocol):
    async def close(self) -> None: ...
