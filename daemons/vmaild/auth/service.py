"""The auth service: Courier authpipe requests in, reply bytes (or a temporary failure) out.

``vmaild-authpipe`` relays each request authdaemond gives it over ``[auth] listen``; the
listener (servers/auth.py) hands the decoded request to :meth:`AuthService.answer`. The
replies follow PROTOCOLS.md 4.4 byte for byte: account fields ending ``.\\n``, exactly
``FAIL\\n``, ``OK\\n`` for PASSWD, or the ENUMERATE listing. A temporary failure (database
down, an unusable row, a bug) is :class:`TemporaryFailure`: the listener then closes
without a reply, the relay exits without writing, and authdaemond reports a temporary
error, never "wrong password" (4.4, "Temporary failure").

AUTH, in order: fetch the row (always: it is cheap, and it is how a changed password is
seen at once); unknown or disabled -> FAIL; a login verified earlier against this very
stored hash -> OK without hashing; otherwise verify in the hashing pool. With the database
down, the last row seen stands in, but only a login verified earlier succeeds. An account
answered for (PRE, or a login that succeeds) gets its missing Maildir created (maildirs.py).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from .. import passwords
from ..codec import authpipe as codec
from ..config import Config
from ..db import Database, DatabaseError
from ..failures import TemporaryFailure
from ..logsafe import shown
from ..memo import ReplyMemo
from ..metrics import Metrics
from ..schema_fit import SchemaFit
from .accounts import Account, AccountError, AccountSource
from .contract import LoginRequest, LoginResult, Outcome
from .hashing import Hasher
from .limits import FailureLimits
from .login_cache import BoundedTTL, VerifiedLogins
from .maildirs import AccountMaildirs

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
# MySQL errors that mean "this schema cannot store a new hash": the seed's varchar(20)
# (1406 data too long), a missing column or table (1054, 1146), no UPDATE grant (1142).
_SCHEMA_ERRORS = frozenset({1406, 1054, 1146, 1142, 1265})
_UNKNOWN_PASSWD = "unknown or disabled account"
# Encoded account replies kept (cleared when full).
REPLY_MEMO = 10_000


class AuthService:
    def __init__(
        self,
        cfg: Config,
        db: Database,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        fit: SchemaFit | None = None,
    ):
        ac = cfg.auth
        self.cfg = cfg
        self.metrics = metrics
        self.fit = fit  # reports a query that does not fit the schema, once
        self.accounts = AccountSource(cfg, db)
        self.hasher = Hasher(ac.hash_workers, ac.password_scheme, ac.password_rounds, metrics)
        self.verified = VerifiedLogins(ac.login_cache_ttl, ac.login_cache_size, clock)
        # Rows last seen, for outages only: served up to ttl + stale_ttl after fetching.
        c = cfg.cache
        self.rows: BoundedTTL[Account] = BoundedTTL(
            c.ttl + c.stale_ttl, max(ac.login_cache_size, 1), clock
        )
        self.limits = FailureLimits(
            ac.fail_delay, ac.fail_delay_max, ac.fail_window, ac.fail_tracked, clock
        )
        self.rehash_enabled = ac.rehash
        self.maildirs = AccountMaildirs(cfg.mailbox, clock)
        self._sleep = sleep
        self._tasks: set[asyncio.Task[None]] = set()
        self._rehashing: set[str] = set()
        # Encoded replies by the whole row: the same accounts log in over and over.
        self._reply = ReplyMemo(self._encode, REPLY_MEMO)

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

    def close(self) -> None:
        """Called on reload and stop, from a worker thread (so no task is touched here):
        hashing already under way finishes, new hashing is refused, and a request still
        in flight on this runtime gets a temporary failure."""
        self.hasher.close()

    async def login(self, req: LoginRequest) -> LoginResult:
        """One login attempt from any front door (contract.py).

        A first adapter over the authpipe path's own logic; the login core replaces it."""
        service = self.metrics.service_label(req.service)
        try:
            reply = await self._login(service, req.service, req.login, req.password)
        except TemporaryFailure:
            self.metrics.child(self.metrics.logins, service, "tempfail").inc()
            return LoginResult(Outcome.TEMPFAIL)
        if reply == codec.FAIL:
            return LoginResult(Outcome.FAIL)
        return LoginResult(Outcome.OK, account=self.rows.get(req.login.lower()))

    # -- PRE -------------------------------------------------------------------------------

    async def pre(self, req: codec.Pre) -> bytes:
        """Password-less lookup (maildrop -d, authtest without a password)."""
        account, _ = await self._account(req.username)
        if account is None or not account.active:
            log.info(
                "lookup %s (service %s): %s",
                _shown(req.username),
                shown(req.service),
                "unknown" if account is None else "disabled",
            )
            return codec.FAIL
        await self.maildirs.ensure(account)
        return self._reply(account)

    # -- AUTH ------------------------------------------------------------------------------

    async def auth(self, req: codec.Auth) -> bytes:
        service = self.metrics.service_label(req.service)
        authtype = req.authtype.lower()
        try:
            if authtype == "login":
                creds = req.login()
                if creds is None:
                    return await self._fail(service, "", "malformed login data")
                return await self._login(service, req.service, *creds)
            if authtype in _CRAM:
                return await self._cram(service, req, _CRAM[authtype])
        except TemporaryFailure:
            self.metrics.child(self.metrics.logins, service, "tempfail").inc()
            raise
        # Unknown authtype (4.3): FAIL, and authdaemond tries its next module.
        return await self._fail(service, "", f"unsupported authtype {authtype[:20]!r}")

    async def _login(self, service: str, raw_service: str, login: str, password: str) -> bytes:
        account, fresh = await self._account(login)
        if account is None:
            return await self._fail(service, login, "unknown account", known=False)
        if not account.active:
            return await self._fail(service, login, "account disabled")
        digest = self.verified.digest(password)
        if self.verified.check(account.address, account.password, digest):
            return await self._succeed(service, login, account, "cached")
        if not fresh:
            # The database is down and this password was not verified against the last
            # hash seen: a temporary failure, never a verdict on stale data.
            log.warning(
                "login %s (service %s): database unavailable and login not cached",
                _shown(login),
                shown(raw_service),
            )
            raise TemporaryFailure("database unavailable")
        try:
            ok = await self.hasher.verify(password, account.password)
        except RuntimeError as e:  # the pool was shut down by a reload meanwhile
            raise TemporaryFailure(str(e)) from e
        if not ok:
            if passwords.parse(account.password).scheme is None and account.password:
                log.error("login %s: stored password is in no known scheme", _shown(login))
            return await self._fail(service, login, "wrong password")
        self.verified.add(account.address, account.password, digest)
        self._maybe_rehash(account, password, digest)
        return await self._succeed(service, login, account, "verified")

    async def _cram(self, service: str, req: codec.Auth, digestmod: str) -> bytes:
        """CRAM-* works only with a clear-text ({PLAIN}) stored password (4.3)."""
        parts = req.cram()
        if parts is None:
            return await self._fail(service, "", "malformed CRAM data")
        challenge, response = parts
        login, _, answer = response.rpartition(" ")
        if not login:
            return await self._fail(service, "", "malformed CRAM response")
        account, fresh = await self._account(login)
        if account is None or not account.active:
            return await self._fail(
                service, login, "unknown or disabled account", known=account is not None
            )
        if not fresh:
            raise TemporaryFailure("database unavailable")
        secret = passwords.clear_text(account.password)
        if secret is None:
            return await self._fail(service, login, "CRAM needs a clear-text password")
        expected = hmac.new(secret.encode(), challenge.encode(), digestmod).hexdigest()
        if not hmac.compare_digest(expected.encode(), answer.strip().lower().encode()):
            return await self._fail(service, login, "wrong CRAM response")
        return await self._succeed(service, login, account, "cram")

    # -- PASSWD ----------------------------------------------------------------------------

    async def passwd(self, req: codec.Passwd) -> bytes:
        """Change a password: the old one must verify; store a new hash (4.3).

        The UPDATE is conditional on the hash the old password was verified against. If
        that hash changed meanwhile (typically our own rehash of the login just before),
        the check is made once more against the new one: the old password may well still
        be right, and a change must not fail because of an upgrade it never saw."""
        login, new = req.username, req.new
        if not new or len(new) > passwords.MAX_PASSWORD or any(ord(c) < 32 for c in new):
            return await self._passwd_fail(login, "unacceptable new password")
        new_hash: str | None = None
        for _attempt in range(2):
            account, fresh = await self._account(login)
            if account is None or not account.active:
                return await self._passwd_fail(login, _UNKNOWN_PASSWD)
            if not fresh:
                raise TemporaryFailure("database unavailable")
            if not await self._verify_or_tempfail(req.old, account.password):
                return await self._passwd_fail(login, "wrong old password")
            if new_hash is None:
                try:
                    new_hash = await self.hasher.hash(new)
                except RuntimeError as e:
                    raise TemporaryFailure(str(e)) from e
            if await self._update("passwd_query", account, new_hash) == 1:
                break
        else:
            return await self._passwd_fail(login, "the password kept changing meanwhile")
        self.limits.succeeded(login)
        self.rows.put(login.lower(), replace(account, password=new_hash))
        self.verified.add(account.address, new_hash, self.verified.digest(new))
        log.info("password changed for %s (service %s)", account.address, shown(req.service))
        return codec.OK

    async def _passwd_fail(self, login: str, reason: str) -> bytes:
        delay = self.limits.failed(login)
        # An unknown name may be a mistyped password: withheld (see _fail).
        name = _withheld(login) if reason == _UNKNOWN_PASSWD else _shown(login)
        log.info("password change for %s refused: %s", name, reason)
        await self._delay(delay)
        return codec.FAIL

    # -- ENUMERATE -------------------------------------------------------------------------

    async def enumerate(self) -> bytes:
        try:
            accounts = await self.accounts.enumerate()
        except DatabaseError as e:
            if not self._misfit("enumerate_query", e):
                log.warning("ENUMERATE: database unavailable: %s", e)
            raise TemporaryFailure(str(e)) from e
        return codec.reply_enumerate((a.address, a.uid, a.gid, a.home, a.maildir) for a in accounts)

    # -- helpers ---------------------------------------------------------------------------

    async def _account(self, login: str) -> tuple[Account | None, bool]:
        """(account or None, fresh). Not fresh: the database failed and the last row seen
        stands in; with no such row, TemporaryFailure."""
        key = login.lower()
        try:
            account = await self.accounts.fetch(login)
        except DatabaseError as e:
            stale = self.rows.get(key)
            if stale is None:
                if not self._misfit("query", e):
                    log.warning("account %s: database unavailable: %s", _withheld(login), e)
                raise TemporaryFailure(str(e)) from e
            return stale, False
        except AccountError as e:
            log.error("account %s: %s (check [auth] query)", _shown(login), e)
            raise TemporaryFailure(str(e)) from e
        if account is None:
            self.rows.pop(key)
        else:
            self.rows.put(key, account)
        return account, True

    async def _verify_or_tempfail(self, password: str, stored: str) -> bool:
        try:
            return await self.hasher.verify(password, stored)
        except RuntimeError as e:
            raise TemporaryFailure(str(e)) from e

    def _misfit(self, key: str, e: DatabaseError) -> bool:
        """True if [auth] ``key`` does not fit the schema (schema_fit logs that once)."""
        return self.fit is not None and self.fit.report("auth", key, e)

    async def _update(self, key: str, account: Account, new_hash: str) -> int:
        try:
            return await self.accounts.update_password(
                getattr(self.cfg.auth, key), account.address, account.password, new_hash
            )
        except DatabaseError as e:
            if not self._misfit(key, e):
                log.warning("password update for %s failed: %s", account.address, e)
            raise TemporaryFailure(str(e)) from e

    async def _succeed(self, service: str, login: str, account: Account, how: str) -> bytes:
        self.limits.succeeded(login)
        self.metrics.child(self.metrics.logins, service, "ok").inc()
        if log.isEnabledFor(logging.DEBUG):  # _shown() costs more than the rest of a login
            log.debug(
                "login %s as %s (service %s): ok (%s)", _shown(login), account.address, service, how
            )
        await self.maildirs.ensure(account)
        return self._reply(account)

    async def _fail(self, service: str, login: str, reason: str, known: bool = True) -> bytes:
        """FAIL, counted, logged and delayed by the failure limit. A login name that
        matches no account (*known* false) is logged only at debug: it may well be a
        password typed into the user name field, which must not land in the mail log."""
        self.metrics.child(self.metrics.logins, service, "fail").inc()
        delay = self.limits.failed(login) if login else 0.0
        log.info(
            "login %s (service %s) failed: %s%s",
            _shown(login) if known else _withheld(login),
            service,
            reason,
            f"; reply delayed {delay:g}s" if delay else "",
        )
        if not known and log.isEnabledFor(logging.DEBUG):
            log.debug("the login name that matched no account: '%s'", _shown(login))
        await self._delay(delay)
        return codec.FAIL

    async def _delay(self, delay: float) -> None:
        if delay > 0:
            self.metrics.login_limited.inc()
            await self._sleep(delay)

    def _encode(self, account: Account) -> bytes:
        try:
            # 8190: one byte under what Cyrus SASL accepts, should a client talk to us
            # directly (PROTOCOLS.md 5.2); authdaemond takes 8191.
            return codec.reply_account(account.fields(), max_reply=codec.CYRUS_MAX_REPLY)
        except ValueError as e:
            log.error("account %s cannot be sent: %s", account.address, e)
            raise TemporaryFailure(str(e)) from e

    # -- rehash on login -------------------------------------------------------------------

    def _maybe_rehash(self, account: Account, password: str, digest: bytes) -> None:
        if not self.rehash_enabled or account.address in self._rehashing:
            return
        if not passwords.needs_update(account.password, self.hasher.scheme):
            return
        self._rehashing.add(account.address)
        task = asyncio.get_running_loop().create_task(self._rehash(account, password, digest))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _rehash(self, account: Account, password: str, digest: bytes) -> None:
        """Store a hash in the default scheme. In the background: the login has been
        answered already. The UPDATE is conditional on the hash just verified."""
        try:
            new_hash = await self.hasher.hash(password)
            changed = await self.accounts.update_password(
                self.cfg.auth.rehash_query, account.address, account.password, new_hash
            )
        except DatabaseError as e:
            if self._misfit("rehash_query", e):
                self.rehash_enabled = False
            elif e.errno in _SCHEMA_ERRORS:
                log.warning(
                    "rehash off until reload: cannot store new hashes (%s); "
                    "run 'vmailctl db migrate' or set [auth] rehash = no",
                    e,
                )
                self.rehash_enabled = False
            else:
                log.warning("rehash for %s failed: %s", account.address, e)
            return
        except RuntimeError:  # pool shut down by a reload
            return
        finally:
            self._rehashing.discard(account.address)
        if changed == 1:
            self.metrics.login_rehashes.inc()
            self.verified.add(account.address, new_hash, digest)
            old = passwords.parse(account.password).scheme
            log.info(
                "rehashed the password of %s: %s -> %s", account.address, old, self.hasher.scheme
            )


def _shown(login: str) -> str:
    """A login name for a log line: bounded, printable (it comes from the client)."""
    return shown(login, 100) if login else "(none)"


def _withheld(login: str) -> str:
    """A login name not (yet) matched to an account, for a line above debug: not shown,
    since it may be a password typed into the name field. Debug lines show it."""
    return "(a name matching no account)" if login else "(none)"
