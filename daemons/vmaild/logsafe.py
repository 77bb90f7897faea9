"""Client data in log lines: escaped, cut short, and counted instead of repeated.

Whatever a client sends (a key, a map name, a login name, a policy attribute, a codec's
error reason quoting its input) reaches a log call only through :func:`shown`: a CR, LF or
terminal escape in it must not forge a log line or drive the terminal an admin reads the
journal on, and a 100 KB map name must not become a 100 KB line. :class:`Throttle` bounds
how often one source of trouble (a connection sending garbage, a listener over its cap)
may log: the first event in full, then one line per interval with a count.

A leaf of the package: it imports nothing from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Characters of client data shown in one log field; the rest is replaced by a marker.
DEFAULT_LIMIT = 200

_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(value: str | bytes, limit: int = DEFAULT_LIMIT) -> str:
    """*value* as one printable line for a log field.

    Control characters (CR, LF, ESC...), other non-printables (bidi overrides, line
    separators: whatever ``str.isprintable`` refuses) and backslashes are escaped as
    ``repr()`` does (``\\r``, ``\\x1b``, ``\\u202e``, ``\\\\``), bytes that are not UTF-8
    as ``\\xNN``; after about *limit* characters of output the rest is left out and a
    marker says how many characters were (``...[99800 more]``). Plain text comes back
    unchanged and uncopied.
    """
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    if len(text) <= limit and text.isprintable() and "\\" not in text:
        return text
    out: list[str] = []
    used = 0
    for i, ch in enumerate(text):
        if used >= limit:
            return "".join(out) + f"...[{len(text) - i} more]"
        piece = ch if ch.isprintable() and ch != "\\" else _escape(ch)
        out.append(piece)
        used += len(piece)
    return "".join(out)


class Throttle:
    """Decides when a repeated event is logged: the first at once, then at most one line
    per *interval* seconds carrying how many were not logged since.

    ``event()`` returns None when the event is to be counted silently, else the number of
    events since the last logged one (1 for the first: nothing was held back).
    ``pending()`` hands back (and forgets) the count held back, for a last summary line.
    """

    __slots__ = ("_clock", "_held", "_interval", "_next")

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._interval = interval
        self._clock = clock
        self._held = 0
        self._next: float | None = None  # when the next event may be logged

    def event(self) -> int | None:
        now = self._clock()
        if self._next is not None and now < self._next:
            self._held += 1
            return None
        self._next = now + self._interval
        count, self._held = self._held + 1, 0
        return count

    def pending(self) -> int:
        held, self._held = self._held, 0
        return held
