"""The socketmap: listener over a real loopback socket, with a fake database.

Every request is sent whole and in 1-byte pieces (PROTOCOLS.md 2: netstrings).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.fakes_listeners import exchange, run_server

sockmap = lambda app: app.socketmap  # noqa: E731


def ns(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b":" + payload + b","


SOCKETMAP_CASES = [
    (ns(b"mailboxes joe@ex.com"), ns(b"OK ex.com/joe/")),
    (ns(b"mailboxes Joe+X@Ex.Com"), ns(b"OK ex.com/joe/")),
    (ns(b"mailboxes a b@ex.com"), ns(b"OK value with spaces")),
    (ns(b"mailboxes nobody@ex.com"), ns(b"NOTFOUND ")),
    (ns(b"nosuchmap joe@ex.com"), ns(b"PERM unknown map")),
]


@pytest.mark.parametrize("pieces", [False, True], ids=["whole", "1-byte"])
@pytest.mark.parametrize(("request_", "reply"), SOCKETMAP_CASES)
def test_socketmap_requests(request_: bytes, reply: bytes, pieces: bool) -> None:
    async def scenario(port: int, db: object) -> None:
        assert await exchange(port, request_, len(reply), pieces) == reply

    run_server(sockmap, scenario)


def test_socketmap_two_requests_in_one_segment() -> None:
    async def scenario(port: int, db: object) -> None:
        want = ns(b"OK ex.com/joe/") + ns(b"NOTFOUND ")
        got = await exchange(port, ns(b"mailboxes joe@ex.com") + ns(b"mailboxes x@y"), len(want))
        assert got == want

    run_server(sockmap, scenario)


def test_socketmap_database_down_is_temp() -> None:
    async def scenario(port: int, db: Any) -> None:
        db.down = True
        want = ns(b"TEMP temporary lookup failure")
        assert await exchange(port, ns(b"mailboxes joe@ex.com"), len(want)) == want

    run_server(sockmap, scenario)


@pytest.mark.parametrize("garbage", [b"x:abc,", b"5:abc", b"3:abcX", b"999999999:"])
def test_socketmap_bad_framing_closes(garbage: bytes) -> None:
    async def scenario(port: int, db: object) -> None:
        assert await exchange(port, garbage + b"more", 10**6) == b""

    run_server(sockmap, scenario)


def test_socketmap_fast_path_replies_match_the_decoder_path() -> None:
    async def scenario(port: int, db: object) -> None:
        req, want = ns(b"mailboxes joe@ex.com"), ns(b"OK ex.com/joe/")
        assert await exchange(port, req, len(want)) == want  # miss
        assert await exchange(port, req, len(want)) == want  # fast path
        assert await exchange(port, req, len(want), pieces=True) == want  # decoder path

    run_server(sockmap, scenario)
