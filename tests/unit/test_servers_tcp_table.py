"""The tcp: listener over a real loopback socket, with a fake database.

Every request is sent whole and in 1-byte pieces; pipelined requests must come back in
order even when a cache miss is followed by a hit.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from tests.unit.fakes_listeners import exchange, run_server

tcp = lambda app: lambda: app.tcp_table("mailboxes")  # noqa: E731

TCP_CASES = [
    (b"get joe@ex.com\n", b"200 ex.com/joe/\n"),
    (b"get JOE@EX.COM\n", b"200 ex.com/joe/\n"),
    (b"get joe+tag@ex.com\n", b"200 ex.com/joe/\n"),
    (b"get nobody@ex.com\n", b"500 not%20found\n"),
    (b"get 100%25@ex.com\n", b"200 pct\n"),
    (b"get a%20b@ex.com\n", b"200 value%20with%20spaces\n"),
    (b"put k v\n", None),  # a 400, text chosen by the codec
    (b"get bad%zz\n", None),
]


@pytest.mark.parametrize("pieces", [False, True], ids=["whole", "1-byte"])
@pytest.mark.parametrize(("request_", "reply"), TCP_CASES)
def test_tcp_table_requests(request_: bytes, reply: bytes | None, pieces: bool) -> None:
    async def scenario(port: int, db: object) -> None:
        got = await exchange(port, request_, 1, pieces)
        got = got if got.endswith(b"\n") else got + await exchange(port, b"", 0)
        if reply is None:
            assert got.startswith(b"400 ") and got.endswith(b"\n")
        else:
            assert got == reply

    run_server(tcp, scenario)


def test_tcp_pipelined_miss_then_hit_keeps_order() -> None:
    async def scenario(port: int, db: Any) -> None:
        await exchange(port, b"get joe@ex.com\n", 16)  # now cached
        db.delay = 0.05  # misses are slow
        got = await exchange(port, b"get nobody@ex.com\nget joe@ex.com\nget x@y\n", 48)
        assert got == b"500 not%20found\n200 ex.com/joe/\n500 not%20found\n"

    run_server(tcp, scenario)


def test_tcp_database_down_is_400_and_connection_stays() -> None:
    async def scenario(port: int, db: Any) -> None:
        db.down = True
        db.rows["other@ex.com"] = [("x",)]
        got = await exchange(port, b"get joe@ex.com\nget other@ex.com\n", 2 * 31)
        assert got.count(b"400 temporary%20lookup%20failure\n") == 2

    run_server(tcp, scenario)


def test_tcp_oversized_request_gets_400_and_close() -> None:
    async def scenario(port: int, db: object) -> None:
        got = await exchange(port, b"get " + b"a" * 70000 + b"\n", 10**6)
        assert got.startswith(b"400 ") and got.count(b"\n") == 1

    run_server(tcp, scenario)


def test_tcp_accepts_64k_key() -> None:
    key = b"k" * 60000 + b"@ex.com"

    async def scenario(port: int, db: object) -> None:
        assert await exchange(port, b"get " + key + b"\n", 16) == b"500 not%20found\n"

    run_server(tcp, scenario)


def test_tcp_half_close_still_answers() -> None:
    async def scenario(port: int, db: object) -> None:
        got = await exchange(port, b"get joe@ex.com\n", 10**6, half_close=True)
        assert got == b"200 ex.com/joe/\n"

    run_server(tcp, scenario)


def test_tcp_many_requests_on_one_connection_and_many_idle_connections() -> None:
    async def scenario(port: int, db: object) -> None:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
        try:
            got = await exchange(port, b"get joe@ex.com\n" * 10000, 16 * 10000)
            assert got == b"200 ex.com/joe/\n" * 10000
        finally:
            for s in idle:
                s.close()

    run_server(tcp, scenario)


def test_tcp_fast_path_replies_match_the_decoder_path() -> None:
    """A cached answer is the same bytes whether a chunk is a whole line (fast path) or
    the line arrives in pieces (decoder path)."""

    async def scenario(port: int, db: object) -> None:
        whole = b"get joe@ex.com\n"
        first = await exchange(port, whole, 16)  # miss: decoder + database
        fast = await exchange(port, whole, 16)  # hit: fast path
        pieces = await exchange(port, whole, 16, pieces=True)
        assert first == fast == pieces == b"200 ex.com/joe/\n"

    run_server(tcp, scenario)
