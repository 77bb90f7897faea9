"""ReplyMemo: encoded replies kept by value, bounded."""

from __future__ import annotations

from vmaild.codec import tcp_table as codec
from vmaild.memo import ReplyMemo


def test_reply_memo_is_bounded_and_exact() -> None:
    memo = ReplyMemo(codec.reply_found, limit=2)
    assert memo("a b") == codec.reply_found("a b") == b"200 a%20b\n"
    memo("x")
    memo("y")  # full: cleared, then stored
    assert len(memo.replies) == 1 and memo("y") == b"200 y\n"
