"""The control socket: vmailctl tells vmaild the moment it has changed the database.

A line protocol on a unix socket (mode 0660), PROTOCOLS.md "control socket":

- ``flush`` -> ``ok <entries dropped>``: empty the whole cache (what every vmailctl did
  before the change log, and still does after a schema change). It reads the change
  counter first, so that the poller does not flush again for it (``App.control_flush``,
  watch.py).
- ``changed <gtid> [<key> ...]`` -> ``ok <entries dropped>`` or ``ok <dropped> pending``:
  vmailctl committed a change to these keys (``*`` or none: unknown), with this GTID
  (``-``: none, no binary log). vmaild waits, bounded, for its read host to apply the
  GTID, then drops what the change log names (invalidation.py); ``pending`` says the wait
  ran out and the polls carry on.
- ``ping`` -> ``ok``; anything else -> ``error ...``. An old vmaild answers ``changed``
  with ``error unknown command``: vmailctl then says ``flush``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..pending import valid_gtid
from .base import ListenerContext, ProtocolError, SequentialProtocol
from .interfaces import CacheFlusher, ChangeNotified

MAX_LINE = 64 * 1024
MAX_KEYS = 1000
MAX_KEY = 255


@dataclass(frozen=True)
class Changed:
    gtid: str | None
    keys: tuple[str, ...] | None  # None: any key may have changed


def parse(line: str) -> str | Changed:
    """A request line -> "flush", "ping", a ``Changed``, or "error <why>"."""
    words = line.split()
    if not words:
        return "error empty request"
    command = words[0].lower()
    if command in ("flush", "ping") and len(words) == 1:
        return command
    if command != "changed" or len(words) < 2:
        return "error unknown command"
    gtid = words[1]
    if gtid != "-" and not valid_gtid(gtid):
        return "error bad gtid"
    keys = words[2:]
    if len(keys) > MAX_KEYS or any(len(k) > MAX_KEY for k in keys):
        return "error too many or too long keys"
    unknown = not keys or "*" in keys
    return Changed(None if gtid == "-" else gtid, None if unknown else tuple(keys))


class ControlProtocol(SequentialProtocol):
    listener = "control"

    def __init__(
        self, ctx: ListenerContext, flush: CacheFlusher, changed: ChangeNotified | None = None
    ):
        super().__init__(ctx)
        self.flush = flush
        self.changed = changed
        self.buffer = b""

    def decode(self, data: bytes) -> list[Any]:
        self.buffer += data
        lines = self.buffer.split(b"\n")
        self.buffer = lines.pop()
        if len(self.buffer) > MAX_LINE:
            raise ProtocolError("control line too long")
        return [parse(line.strip().decode("ascii", "replace")) for line in lines]

    def answer_now(self, request: Any) -> bytes | None:
        if request == "flush":
            return None  # answer() reads the change counter, then flushes
        if request == "ping":
            return b"ok\n"
        if isinstance(request, Changed):
            return None if self.changed is not None else b"error unknown command\n"
        return f"{request}\n".encode()

    async def answer(self, request: Any) -> bytes | None:
        if isinstance(request, Changed) and self.changed is not None:
            reply = await self.changed(request.gtid, request.keys)
            return f"{reply}\n".encode()
        dropped = await self.flush()
        return f"ok {dropped}\n".encode()
