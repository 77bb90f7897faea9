"""The ``[sasl] listen`` socket: Postfix's ``smtpd_sasl_type = dovecot`` (PROTOCOLS.md 6).

Postfix opens one connection per smtpd process and keeps it across SMTP sessions; each
AUTH is tagged with an id, and the reply for that id may come whenever it is ready. So,
unlike the other listeners, requests on one connection are not answered in order: each
login runs as its own task, and a slow one (hashing, or the FAIL delay of the brute-force
defence) holds nothing but itself: not the connection's other requests, not other
connections, not the event loop.

Answers (6.3): OK with ``user=`` the account's address; FAIL with a reason for wrong
credentials (after ``LoginResult.delay``, capped so that the reply comes well within
Postfix's 10 s read timeout); and for a temporary failure (database down, nothing
verified to stand in) no reply at all but a closed connection: Postfix ignores FAIL's
``temp`` flag and answers 535, and reports "454 4.7.0 Temporary authentication failure"
only when the connection is lost (xsasl_dovecot_server.c, xsasl_dovecot_handle_reply()).
The connection is closed once the requests it is verifying otherwise are answered.

What a listener shares with the others (the caps, the idle sweep, the per-connection
problem log, the connection metrics) comes from ``SequentialProtocol``; its one-at-a-time
queue is not used.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable

from ..auth.contract import LoginRequest, LoginResult, Outcome, service_name
from ..codec import dovecot_auth as codec
from ..logsafe import shown
from .base import TURN_BYTES, ListenerContext, SequentialProtocol
from .interfaces import Authenticator

log = logging.getLogger("vmaild.sasl")

# Postfix waits AUTH_TIMEOUT (10 s) for each reply line, then drops the connection and
# answers 454 (6.3): a FAIL is sent at most this long after its request arrived.
MAX_REPLY_SECONDS = 8.0
_CUIDS = itertools.count(1)  # Dovecot's CUID: a connection number, unique per process


class SaslProtocol(SequentialProtocol):
    listener = "sasl"

    def __init__(
        self,
        ctx: ListenerContext,
        authenticator: Callable[[], Authenticator],
        mechanisms: Iterable[str] = codec.MECHANISMS,
    ):
        super().__init__(ctx)
        self._authenticator = authenticator  # called per login: SIGHUP swaps the service
        self.server = codec.DovecotAuthServer(mechanisms)
        self._logins: dict[int, asyncio.Task[None]] = {}
        self._draining = False  # after a temporary failure: close once nothing is verified

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.closing:  # admitted: the server speaks first (6.2)
            cookie = secrets.token_hex(16)
            self._write(self.server.handshake(os.getpid(), next(_CUIDS), cookie))

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self._logins.values():
            task.cancel()
        self._logins.clear()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self._draining:
            return  # dropped: the connection closes once the logins under way are answered
        self.pending = bytes(self.pending) + data if self.pending else data
        if self._turn is None:
            self._run_queue()

    def eof_received(self) -> bool | None:
        # The client is done sending: answer what is being verified, then close.
        self.closing = True
        self._close_when_done()
        return True

    @property
    def busy(self) -> bool:
        return bool(self._logins)

    def close_if_idle(self, idle_since: float) -> bool:
        # A request waiting for the client's CONT is in progress too: its SMTP client may
        # take up to smtpd_timeout (300 s) to answer the challenge. One Postfix abandoned
        # ends with its smtpd process (max_idle), which closes the connection.
        if not self.server.idle:
            return False
        return super().close_if_idle(idle_since)

    # -- one turn: decode at most TURN_BYTES, start the logins, send the replies -------------

    def _run_queue(self) -> None:
        self._turn = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._paused_writing or self._draining:
            self._update_reading()
            return
        pending = self.pending
        data, rest = bytes(pending[:TURN_BYTES]), pending[TURN_BYTES:]
        self.pending = rest if rest else b""
        try:
            events = self.server.feed(data)
        except codec.DovecotAuthError as e:
            self._handle(e.decoded, starting=False)
            self.protocol_error(str(e))
            return
        self._handle(events, starting=True)
        self._flush()
        if self.pending and not transport.is_closing():
            self._turn = asyncio.get_running_loop().call_soon(self._run_queue)
        self._close_when_done()
        self._update_reading()

    def _handle(self, events: list[codec.Event], *, starting: bool) -> None:
        for event in events:
            if isinstance(event, codec.Reply):
                if event.problem is not None:
                    self.bad_request(event.problem)
                self._out.append(event.data)
            elif starting:
                task = asyncio.get_running_loop().create_task(self._login(event))
                self._logins[event.id] = task

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._turn is None and self.pending:
            self._run_queue()
        else:
            self._update_reading()

    # -- one login -------------------------------------------------------------------------

    async def _login(self, creds: codec.Credentials) -> None:
        started = time.monotonic()
        request = LoginRequest(
            service=service_name(creds.service),
            login=creds.login,
            password=creds.password,
            client=creds.client,
            secured=creds.secured,
            front="sasl",
            can_wait=True,
        )
        try:
            result = await self._authenticator().login(request)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug fails this login, as a temporary failure
            log.exception("sasl: internal error")
            result = LoginResult(Outcome.TEMPFAIL)
        self._count(creds.mechanism, result.outcome.value)
        where = _where(creds)
        if result.outcome is Outcome.OK:
            user = result.account.address if result.account is not None else creds.login
            if log.isEnabledFor(logging.DEBUG):
                log.debug("sasl: %s login as %s%s: ok", creds.mechanism, shown(user, 100), where)
            self._reply(creds.id, self.server.ok(creds.id, user))
        elif result.outcome is Outcome.FAIL:
            # The name is not logged here: it may be a password typed into the user name
            # field (the login service logs the names that match an account).
            delay = min(result.delay, max(0.0, MAX_REPLY_SECONDS - (time.monotonic() - started)))
            log.info(
                "sasl: %s login%s failed%s",
                creds.mechanism,
                where,
                f"; reply delayed {delay:.3g}s" if delay > 0 else "",
            )
            if delay > 0:
                await asyncio.sleep(delay)  # this request's own task: nothing else waits
            self._reply(creds.id, self.server.fail(creds.id))
        else:
            log.warning(
                "sasl: %s login%s: temporary failure; closing the connection, so that "
                "Postfix answers 454 4.7.0",
                creds.mechanism,
                where,
            )
            self.server.forget(creds.id)
            self._draining = True
            self.pending = b""
            self._reply(creds.id, None)

    def _reply(self, request_id: int, data: bytes | None) -> None:
        self._logins.pop(request_id, None)
        self.last_active = time.monotonic()  # idle from the reply on
        if data is not None:
            self._write(data)
        self._close_when_done()
        self._update_reading()

    def _close_when_done(self) -> None:
        """After a temporary failure or the client's EOF: close once every login under
        way is answered (requests waiting for the client's CONT are abandoned)."""
        if self._logins or self.transport is None:
            return
        if self._draining or (self.closing and not self.pending):
            self._flush()
            self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _count(self, mechanism: str, result: str) -> None:
        m = self.metrics
        m.child(m.sasl_requests, mechanism, result).inc()


def _where(creds: codec.Credentials) -> str:
    """The client for a log line, e.g. `` from 192.0.2.5 (TLS)``: its address where
    Postfix sent one, and whether the session was under TLS."""
    address = f" from {creds.client}" if creds.client is not None else ""
    return address + (" (TLS)" if creds.secured else "")
