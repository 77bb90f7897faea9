"""The tcp: and socketmap: listeners over real loopback sockets, with a fake database.

Every request is sent whole and in 1-byte pieces; pipelined requests must come back in
order even when a cache miss is followed by a hit.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from tests.unit.fakes import FakeApp, make_lookups
from vmaild.servers.base import start_listener
from vmaild.values import Listen

ROWS = {
    "joe@ex.com": [("ex.com/joe/",)],
    "100%@ex.com": [("pct",)],
    "a b@ex.com": [("value with spaces",)],
}


def run_server(
    factory_for: Callable[[FakeApp], Callable[[], asyncio.Protocol]],
    scenario: Callable[[int, object], Awaitable[None]],
    rows=ROWS,
) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        lookups, db, metrics = make_lookups(rows)
        app = FakeApp(lookups=lookups, metrics=metrics)
        server = await start_listener(Listen(host="127.0.0.1", port=0), factory_for(app))
        port = server.sockets[0].getsockname()[1]
        try:
            await scenario(port, db)
        finally:
            server.close()
            for conn in list(app.connections):
                conn.transport.close()

    asyncio.run(asyncio.wait_for(main(), 20))


async def exchange(
    port: int, data: bytes, expect_bytes: int, pieces: bool = False, half_close: bool = False
) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if pieces:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
    else:
        writer.write(data)
    if half_close:
        writer.write_eof()
    got = b""
    while len(got) < expect_bytes:
        chunk = await reader.read(65536)
        if not chunk:
            break
        got += chunk
    writer.close()
    return got


tcp = lambda app: lambda: app.tcp_table("mailboxes")  # noqa: E731
sockmap = lambda app: app.socketmap  # noqa: E731

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
    async def scenario(port: int, db) -> None:  # type: ignore[no-untyped-def]
        await exchange(port, b"get joe@ex.com\n", 16)  # now cached
        db.delay = 0.05  # misses are slow
        got = await exchange(port, b"get nobody@ex.com\nget joe@ex.com\nget x@y\n", 48)
        assert got == b"500 not%20found\n200 ex.com/joe/\n500 not%20found\n"

    run_server(tcp, scenario)


def test_tcp_database_down_is_400_and_connection_stays() -> None:
    async def scenario(port: int, db) -> None:  # type: ignore[no-untyped-def]
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
    async def scenario(port: int, db) -> None:  # type: ignore[no-untyped-def]
        db.down = True
        want = ns(b"TEMP temporary lookup failure")
        assert await exchange(port, ns(b"mailboxes joe@ex.com"), len(want)) == want

    run_server(sockmap, scenario)


@pytest.mark.parametrize("garbage", [b"x:abc,", b"5:abc", b"3:abcX", b"999999999:"])
def test_socketmap_bad_framing_closes(garbage: bytes) -> None:
    async def scenario(port: int, db: object) -> None:
        assert await exchange(port, garbage + b"more", 10**6) == b""

    run_server(sockmap, scenario)


def test_fast_path_replies_match_the_decoder_path() -> None:
    """A cached answer is the same bytes whether a chunk is a whole line (fast path) or
    the line arrives in pieces (decoder path)."""

    async def scenario(port: int, db: object) -> None:
        whole = b"get joe@ex.com\n"
        first = await exchange(port, whole, 16)  # miss: decoder + database
        fast = await exchange(port, whole, 16)  # hit: fast path
        pieces = await exchange(port, whole, 16, pieces=True)
        assert first == fast == pieces == b"200 ex.com/joe/\n"

    run_server(tcp, scenario)


def test_socketmap_fast_path_replies_match_the_decoder_path() -> None:
    async def scenario(port: int, db: object) -> None:
        req, want = ns(b"mailboxes joe@ex.com"), ns(b"OK ex.com/joe/")
        assert await exchange(port, req, len(want)) == want  # miss
        assert await exchange(port, req, len(want)) == want  # fast path
        assert await exchange(port, req, len(want), pieces=True) == want  # decoder path

    run_server(sockmap, scenario)


def test_reply_memo_is_bounded_and_exact() -> None:
    from vmaild.codec import tcp_table as codec
    from vmaild.memo import ReplyMemo

    memo = ReplyMemo(codec.reply_found, limit=2)
    assert memo("a b") == codec.reply_found("a b") == b"200 a%20b\n"
    memo("x")
    memo("y")  # full: cleared, then stored
    assert len(memo.replies) == 1 and memo("y") == b"200 y\n"
