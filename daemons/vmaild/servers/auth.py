"""The ``[auth] listen`` socket: authpipe requests (PROTOCOLS.md 4, 5).

Two ways to talk to it:

- **one request per connection** (the default, like authdaemond's own socket): we answer
  the first request and close. The close is how a client that reads to EOF (Cyrus SASL's
  checkpw.c, 5.2) knows the reply is complete, even for a multi-line ENUMERATE. Bytes
  after the first request are ignored: Cyrus SASL sends one LF after the counted AUTH
  payload (5.1).
- **persistent** (what vmaild-authpipe does): the connection opens with ``RELAY 1`` LF,
  answered ``RELAY 1`` LF; then every request is answered in order and the connection
  stays open. Each reply ends where the codec's ReplyReader says (4.4), so the relay needs
  no close to find the end, and a login costs no connect, accept or close.

Either way a temporary failure is a close without any reply: the relay exits without
writing, and authdaemond reports a temporary failure rather than a wrong password (4.4).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..codec import authpipe as codec
from ..failures import TemporaryFailure
from .base import ListenerContext, SequentialProtocol
from .interfaces import AuthAnswerer

log = logging.getLogger("vmaild.auth")

# A client that connects and never completes a request is dropped after this long
# (authdaemond gives authProg 10 s to write a request, 4.2).
IDLE_SECONDS = 30.0


class AuthProtocol(SequentialProtocol):
    listener = "auth"

    def __init__(self, ctx: ListenerContext, service: Callable[[], AuthAnswerer]):
        super().__init__(ctx)
        self._service = service  # called per request: SIGHUP swaps the service
        self.decoder = codec.AuthpipeDecoder()
        self._have_request = False
        self.persistent = False  # after RELAY 1: answer every request, stay open
        self._hello_answered = False
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._idle = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_idle()
        super().connection_lost(exc)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_timeout(self) -> None:
        self._idle = None
        if not self._have_request and self.transport is not None:
            log.warning("auth: no complete request within %gs; closing", IDLE_SECONDS)
            self.transport.close()

    def decode(self, data: bytes) -> list[Any]:
        if self._have_request and not self.persistent:
            return []
        try:
            requests = self.decoder.feed(data)
        except codec.AuthpipeError as e:
            # The framing is lost. base.py answers the requests completed before the
            # garbage, then closes; with nothing completed, it just closes. A one-request
            # connection only needs its first request, so that one is answered as usual.
            if self.persistent or not e.decoded or isinstance(e.decoded[0], codec.RelayHello):
                raise
            requests = e.decoded
        if not requests:
            return []
        if self.persistent:
            return requests
        self._have_request = True
        self._cancel_idle()
        if isinstance(requests[0], codec.RelayHello):
            self.persistent = True
            return requests
        self.closing = True  # one request per connection: close once it is answered
        return requests[:1]

    def answer_now(self, request: Any) -> bytes | None:
        if isinstance(request, codec.BadRequest):
            # Logged here, once per connection then counted (base.py); the service
            # counts it in vmaild_auth_requests_total and answers FAIL (4.4).
            self.bad_request(request.reason)
        elif isinstance(request, codec.RelayHello):
            # Only as a connection's first request (decode() made it persistent); later,
            # it is a request that makes no sense (4.4).
            if self._hello_answered:
                return codec.FAIL
            self._hello_answered = True
            return codec.RELAY_HELLO
        return self._service().answer_now(request)

    async def answer(self, request: Any) -> bytes | None:
        try:
            return await self._service().answer(request)
        except TemporaryFailure:
            return None  # close without a reply: authdaemond reports a temporary failure
