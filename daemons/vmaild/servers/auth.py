"""The ``[auth] listen`` socket: one authpipe request per connection (PROTOCOLS.md 4, 5).

vmaild-authpipe connects once per request and forwards the bytes authdaemond gave it. We
answer and close, like authdaemond does to its own clients: the close is how the relay
(and Cyrus SASL's checkpw.c, which reads to EOF, 5.2) knows the reply is complete even for
a multi-line ENUMERATE. A temporary failure is a close without any reply.

Bytes after the first request are ignored: Cyrus SASL sends one LF after the counted AUTH
payload (5.1), and nothing else is expected.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..codec import authpipe as codec
from .base import SequentialProtocol

if TYPE_CHECKING:
    from ..daemon import App

log = logging.getLogger("vmaild.auth")

# A client that connects and never completes a request is dropped after this long
# (authdaemond gives authProg 10 s to write a request, 4.2).
IDLE_SECONDS = 30.0


class AuthProtocol(SequentialProtocol):
    listener = "auth"

    def __init__(self, app: App):
        super().__init__(app.metrics, app.connections)
        self.app = app
        self.decoder = codec.AuthpipeDecoder()
        self._have_request = False
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
        if self._have_request:
            return []
        try:
            requests = self.decoder.feed(data)
        except codec.AuthpipeError as e:
            # A request completed before the garbage is still answered; otherwise the
            # connection ends without a reply (base.py counts and logs it).
            if not e.decoded:
                raise
            requests = e.decoded
        if not requests:
            return []
        self._have_request = True
        self.closing = True  # close once the reply is written
        self._cancel_idle()
        return requests[:1]

    def _service(self) -> Any:
        # Looked up per request: SIGHUP swaps the runtime and with it the service.
        return self.app.runtime.services["auth"]

    def answer_now(self, request: Any) -> bytes | None:
        return self._service().answer_now(request)

    async def answer(self, request: Any) -> bytes | None:
        from ..auth.service import TemporaryFailure

        try:
            return await self._service().answer(request)
        except TemporaryFailure:
            return None  # close without a reply: authdaemond reports a temporary failure
