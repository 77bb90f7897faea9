"""The control socket: vmailctl says "flush" the moment it has changed the database.

A line protocol on a unix socket (mode 0660): ``flush`` -> ``ok <entries dropped>``,
``ping`` -> ``ok``; anything else -> ``error unknown command``. A flush reads the change
counter first, so that the change poller does not flush again for the same change
(``App.control_flush``).
"""

from __future__ import annotations

from typing import Any

from .base import ListenerContext, ProtocolError, SequentialProtocol
from .interfaces import CacheFlusher

MAX_LINE = 256


class ControlProtocol(SequentialProtocol):
    listener = "control"

    def __init__(self, ctx: ListenerContext, flush: CacheFlusher):
        super().__init__(ctx)
        self.flush = flush
        self.buffer = b""

    def decode(self, data: bytes) -> list[Any]:
        self.buffer += data
        lines = self.buffer.split(b"\n")
        self.buffer = lines.pop()
        if len(self.buffer) > MAX_LINE:
            raise ProtocolError("control line too long")
        return [line.strip().decode("ascii", "replace") for line in lines]

    def answer_now(self, request: Any) -> bytes | None:
        if request == "flush":
            return None  # answer() reads the change counter, then flushes
        if request == "ping":
            return b"ok\n"
        return b"error unknown command\n"

    async def answer(self, request: Any) -> bytes | None:
        dropped = await self.flush()
        return f"ok {dropped}\n".encode()
