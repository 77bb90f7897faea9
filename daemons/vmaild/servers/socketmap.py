"""The Postfix socketmap_table(5) listener: every map on one port (PROTOCOLS.md §2)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..codec import socketmap as codec
from ..lookup import TemporaryFailure, UnknownMap
from .base import SequentialProtocol

if TYPE_CHECKING:
    from ..daemon import App

log = logging.getLogger("vmaild.socketmap")


class SocketmapProtocol(SequentialProtocol):
    listener = "socketmap"

    def __init__(self, app: App):
        super().__init__(app.metrics, app.connections)
        self.app = app
        self.decoder = codec.SocketmapDecoder()

    def decode(self, data: bytes) -> list[Any]:
        return self.decoder.feed(data)

    def answer_now(self, request: Any) -> bytes | None:
        if isinstance(request, codec.BadRequest):
            self.metrics.protocol_errors.labels(self.listener).inc()
            log.warning("socketmap: bad request: %s", request.reason)
            return codec.reply_perm(request.reason)
        try:
            hit, value = self.app.runtime.lookups.cached(request.map, request.key)
        except UnknownMap:
            # PERM, not NOTFOUND: a misspelt map name in main.cf is a configuration error
            # that must defer mail, not reject it.
            log.error("socketmap: unknown map %r (not in the configuration)", request.map)
            return codec.reply_perm("unknown map")
        if not hit:
            return None
        return codec.reply_ok(value) if value is not None else codec.reply_notfound()

    async def answer(self, request: codec.Request) -> bytes | None:
        try:
            value = await self.app.runtime.lookups.lookup(request.map, request.key)
        except UnknownMap:
            return codec.reply_perm("unknown map")
        except TemporaryFailure:
            return codec.reply_temp("temporary lookup failure")
        return codec.reply_ok(value) if value is not None else codec.reply_notfound()
