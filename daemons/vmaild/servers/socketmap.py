"""The Postfix socketmap_table(5) listener: every map on one port (PROTOCOLS.md §2)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic
from typing import Any

from ..codec import socketmap as codec
from ..failures import TemporaryFailure
from ..logsafe import shown
from ..lookup import UnknownMap
from ..memo import ReplyMemo
from .base import ListenerContext, SequentialProtocol
from .interfaces import MapLookups

log = logging.getLogger("vmaild.socketmap")
# Characters of an unknown map name shown in the log (configured names have at most 64).
MAP_NAME_SHOWN = 80


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
        # (A scheduled turn always leaves something in the queue or pending.)
        if self.task is None and not self.queue and not self.pending:
            request = self.decoder.plain_request(data)
            if request is not None:
                lookups = self.lookups()
                hit, value = (
                    lookups.cached(*request) if request[0] in lookups.maps else (False, None)
                )
                if hit:
                    assert self.transport is not None
                    self.last_active = monotonic()
                    self.transport.write(_NOT_FOUND if value is None else found_reply(value))
                    return
        super().data_received(data)

    def decode(self, data: bytes) -> list[Any]:
        return self.decoder.feed(data)

    def answer_now(self, request: Any) -> bytes | None:
        if isinstance(request, codec.BadRequest):
            self.bad_request(request.reason)
            return codec.reply_permanent(request.reason)
        try:
            hit, value = self.lookups().cached(request.map, request.key)
        except UnknownMap:
            # PERM, not NOTFOUND: a misspelt map name in main.cf is a configuration error
            # that must defer mail, not reject it.
            # Logged like a bad request (once per connection, then counted): the name
            # comes from the client, and Postfix reconnects often enough (2.4).
            self.problem(
                "unknown map '%s' (not in the configuration)",
                shown(request.map, MAP_NAME_SHOWN),
                level=logging.ERROR,
            )
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
