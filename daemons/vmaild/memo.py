"""Encoded replies remembered by what they encode: one small bounded memo for every
listener whose replies are worth more than a dictionary lookup to rebuild."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class ReplyMemo(Generic[K]):
    """``encode(value)``, remembered. Quoting and framing cost more than the cache lookup
    itself, and the same values (a domain, a mailbox path, an account row) are answered
    over and over. Bounded: cleared when full rather than tracked per entry. An ``encode``
    that raises stores nothing."""

    def __init__(self, encode: Callable[[K], bytes], limit: int = 65536):
        self.encode = encode
        self.limit = limit
        self.replies: dict[K, bytes] = {}

    def __call__(self, value: K) -> bytes:
        reply = self.replies.get(value)
        if reply is None:
            if len(self.replies) >= self.limit:
                self.replies.clear()
            reply = self.replies[value] = self.encode(value)
        return reply
