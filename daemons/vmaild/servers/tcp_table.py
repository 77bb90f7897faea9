"""A Postfix tcp_table(5) listener for one map (PROTOCOLS.md §1).

One port per map: Postfix sends only ``get <key>`` and the port says which map is meant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic
from typing import Any

from ..codec import tcp_table as codec
from ..failures import TemporaryFailure
from ..memo import ReplyMemo
from .base import ListenerContext, SequentialProtocol
from .interfaces import MapLookups

log = logging.getLogger("vmaild.tcp_table")


found_reply = ReplyMemo(codec.reply_found)
_NOT_FOUND = codec.reply_not_found()


class TcpTableProtocol(SequentialProtocol):
    def __init__(self, ctx: ListenerContext, lookups: Callable[[], MapLookups], map_name: str):
        super().__init__(ctx)
        self.lookups = lookups  # called per request: SIGHUP swaps the runtime under us
        self.map_name = map_name
        self.listener = f"tcp:{map_name}"
        self.decoder = codec.TcpTableDecoder()

    def data_received(self, data: bytes) -> None:
        # The fast path: one plain request, nothing pending, a fresh cache entry. Anything
        # else (escapes, several lines, a miss) goes through the decoder and the queue.
        # (A scheduled turn always leaves something in the queue or pending.)
        if self.task is None and not self.queue and not self.pending:
            key = self.decoder.plain_request(data)
            if key is not None:
                hit, value = self.lookups().cached(self.map_name, key)
                if hit:
                    assert self.transport is not None
                    self.last_active = monotonic()
                    self.transport.write(_NOT_FOUND if value is None else found_reply(value))
                    return
        super().data_received(data)

    def decode(self, data: bytes) -> list[Any]:
        if self.decoder.failed:
            return []  # after an overlong line: read nothing more
        try:
            return self.decoder.feed(data)
        except codec.TcpTableError as e:
            # The requests before the overlong line are answered, then the error (below).
            return [*e.decoded, e]

    def answer_now(self, request: Any) -> bytes | None:
        if isinstance(request, codec.Request):
            hit, value = self.lookups().cached(self.map_name, request.key)
            if not hit:
                return None
            return found_reply(value) if value is not None else _NOT_FOUND
        if isinstance(request, codec.BadRequest):
            self.bad_request(request.reason)
            return codec.reply_temporary(request.reason)
        # TcpTableError, an overlong line: it cannot be resynchronised. Postfix treats 400
        # as a temporary error and closes the connection itself.
        self.protocol_error("request too long", codec.reply_temporary("request too long"))
        return b""

    async def answer(self, request: codec.Request) -> bytes | None:
        try:
            value = await self.lookups().lookup(self.map_name, request.key)
        except TemporaryFailure:
            # 400: Postfix defers (451 4.3.0) and never treats it as "user unknown".
            return codec.reply_temporary("temporary lookup failure")
        return found_reply(value) if value is not None else _NOT_FOUND
