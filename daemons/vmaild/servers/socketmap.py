"""The Postfix socketmap_table(5) listener: every map on one port (PROTOCOLS.md §2)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..codec import socketmap as codec
from ..failures import TemporaryFailure
from ..lookup import UnknownMap
from ..memo import ReplyMemo
from .base import ListenerContext, SequentialProtocol
from .interfaces import MapLookups

log = logging.getLogger("vmaild.socketmap")


found_reply = ReplyMemo(codec.reply_found)
_NOT_FOUND = codec.reply_not_found()


class SocketmapProtocol(SequentialProtocol):
    listener = "socketmap"

    def __init__(self, ctx: ListenerContext, lookups: Callable[[], MapLookups]):
        super().__init__(ctx)
        self.lookups = lookups  # called per request: SIGHUP swaps the runtime under us
        self.decoder = codec.SocketmapDecoder()

    def data_received(self, data: bytes) -> None:
        # The fast path: one plain netstring, nothing pending, a fresh cache entry.
        if self.task is None and not self.queue:
            request = self.decoder.plain_request(data)
            if request is not None:
                lookups = self.lookups()
                hit, value = (
                    lookups.cached(*request) if request[0] in lookups.maps else (False, None)
                )
                if hit:
                    assert self.transport is not None
                    self.transport.write(_NOT_FOUND if value is None else found_reply(value))
                    return
        super().data_received(data)

    def decode(self, data: bytes) -> list[Any]:
        return self.decoder.feed(data)

    def answer_now(self, request: Any) -> bytes | None:
        if isinstance(request, codec.BadRequest):
            self.metrics.protocol_errors.labels(self.listener).inc()
            log.warning("socketmap: bad request: %s", request.reason)
            return codec.reply_permanent(request.reason)
        try:
            hit, value = self.lookups().cached(request.map, request.key)
        except UnknownMap:
            # PERM, not NOTFOUND: a misspelt map name in main.cf is a configuration error
            # that must defer mail, not reject it.
            log.error("socketmap: unknown map %r (not in the configuration)", request.map)
            return codec.reply_permanent("unknown map")
        if not hit:
            return None
        return found_reply(value) if value is not None else _NOT_FOUND

    async def answer(self, request: codec.Request) -> bytes | None:
        try:
            value = await self.lookups().lookup(request.map, request.key)
        except UnknownMap:
            return codec.reply_permanent("unknown map")
        except TemporaryFailure:
            return codec.reply_temporary("temporary lookup failure")
        return found_reply(value) if value is not None else _NOT_FOUND
