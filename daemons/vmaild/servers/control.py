"""The control socket: vmailctl says "flush" the moment it has changed the database.

A line protocol on a unix socket (mode 0660): ``flush`` -> ``ok <entries dropped>``,
``ping`` -> ``ok``; anything else -> ``error unknown command``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import ProtocolError, SequentialProtocol

if TYPE_CHECKING:
    from ..daemon import App

MAX_LINE = 256


class ControlProtocol(SequentialProtocol):
    listener = "control"

    def __init__(self, app: App):
        super().__init__(app.metrics, app.connections)
        self.app = app
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
            dropped = self.app.flush_cache("control")
            return f"ok {dropped}\n".encode()
        if request == "ping":
            return b"ok\n"
        return b"error unknown command\n"
