"""servers/auth.py: one request per connection (reply then close, or close without one),
or a persistent relay connection opened with RELAY 1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from passlib.hash import sha512_crypt

from tests.unit.fakes import FakeApp
from tests.unit.fakes_auth import FakeDB, aio, make_service
from vmaild.codec import authpipe as codec
from vmaild.servers import auth as auth_server
from vmaild.servers.base import start_listener
from vmaild.values import Listen

SHA = sha512_crypt.using(rounds=1000)


async def serving(
    tmp_path: Path, body: Callable[[str, FakeDB, Any], Awaitable[None]], extra: str = ""
) -> None:
    service, db = make_service(tmp_path, "rehash = no\n" + extra)
    db.add("joe@example.test", SHA.hash("s3cret"))
    app = FakeApp(auth=service, metrics=service.metrics)
    path = str(tmp_path / "auth.sock")
    server = await start_listener(Listen(path=path), app.auth_listener)
    try:
        await body(path, db, app)
    finally:
        server.close()
        service.close()


async def exchange(path: str, *pieces: bytes, pause: float = 0.0) -> bytes:
    """Send the pieces, then read everything until the server closes."""
    reader, writer = await asyncio.open_unix_connection(path)
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        if pause:
            await asyncio.sleep(pause)
    data = await asyncio.wait_for(reader.read(), 10)  # to EOF: the server must close
    writer.close()
    return data


def auth_bytes(user: str, password: str, service: str = "imap") -> bytes:
    body = f"{service}\nlogin\n{user}\n{password}\n".encode()
    return b"AUTH %d\n" % len(body) + body


@aio
async def test_reply_then_close(tmp_path: Path) -> None:
    async def body(path: str, db: FakeDB, app: Any) -> None:
        reply = await exchange(path, auth_bytes("joe@example.test", "s3cret"))
        assert reply.startswith(b"UID=5000\n") and reply.endswith(
            b"ADDRESS=joe@example.test\nMAILDIR=example.test/joe/\n.\n"
        )
        assert await exchange(path, auth_bytes("joe@example.test", "nope")) == b"FAIL\n"
        pre = await exchange(path, b"PRE . login joe@example.test\n")
        assert pre == reply
        assert await exchange(path, b"ENUMERATE\n") == (
            f"joe@example.test\t5000\t5001\t{tmp_path}/vmail\texample.test/joe/\n.\n".encode()
        )

    await serving(tmp_path, body, "fail_delay = 0\n")


@aio
async def test_request_in_one_byte_pieces(tmp_path: Path) -> None:
    async def body(path: str, db: FakeDB, app: Any) -> None:
        data = auth_bytes("joe@example.test", "s3cret")
        reply = await exchange(path, *(data[i : i + 1] for i in range(len(data))), pause=0.001)
        assert reply.endswith(b"\n.\n")

    await serving(tmp_path, body)


@aio
async def test_cyrus_sasl_request_with_its_extra_lf(tmp_path: Path) -> None:
    # PROTOCOLS.md 5.1: n counts the password's LF, one more LF follows; the reply must be
    # followed by a close (libsasl reads to EOF).
    async def body(path: str, db: FakeDB, app: Any) -> None:
        reply = await exchange(path, auth_bytes("joe@example.test", "s3cret", "smtp") + b"\n")
        assert reply.endswith(b"\n.\n") and len(reply) < 8191

    await serving(tmp_path, body)


@aio
async def test_temporary_failure_closes_without_a_reply(tmp_path: Path) -> None:
    async def body(path: str, db: FakeDB, app: Any) -> None:
        db.down = True
        assert await exchange(path, auth_bytes("joe@example.test", "s3cret")) == b""
        assert await exchange(path, b"PRE . imap joe@example.test\n") == b""

    await serving(tmp_path, body)


@aio
async def test_a_bug_in_the_service_closes_without_a_reply(tmp_path: Path) -> None:
    async def body(path: str, db: FakeDB, app: Any) -> None:
        async def broken(request: object) -> bytes:
            raise KeyError("bug")

        app.auth.answer = broken
        assert await exchange(path, b"PRE . imap joe@example.test\n") == b""

    await serving(tmp_path, body)


@aio
async def test_garbage(tmp_path: Path) -> None:
    async def body(path: str, db: FakeDB, app: Any) -> None:
        # A complete request that makes no sense: FAIL. Lost framing: closed, no reply.
        assert await exchange(path, b"HELLO there\n") == b"FAIL\n"
        assert await exchange(path, b"AUTH twelve\n") == b""
        assert await exchange(path, b"PRE " + b"x" * 20000) == b""

    await serving(tmp_path, body)


@aio
async def test_only_the_first_request_is_answered(tmp_path: Path) -> None:
    async def body(path: str, db: FakeDB, app: Any) -> None:
        reply = await exchange(path, b"PRE . imap joe@example.test\nPRE . imap joe@example.test\n")
        assert reply.count(b"\n.\n") == 1

    await serving(tmp_path, body)


@aio
async def test_idle_connections_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_server, "IDLE_SECONDS", 0.1)

    async def body(path: str, db: FakeDB, app: Any) -> None:
        assert await exchange(path, b"PRE . imap jo") == b""
        assert not app.connections

    await serving(tmp_path, body)


@aio
async def test_the_current_runtimes_service_answers(tmp_path: Path) -> None:
    async def body(path: str, db: FakeDB, app: Any) -> None:
        other, other_db = make_service(tmp_path)
        other_db.add("ann@example.test", SHA.hash("pw"))
        app.auth = other  # what SIGHUP does
        assert (await exchange(path, b"PRE . imap ann@example.test\n")).endswith(b".\n")
        assert await exchange(path, b"PRE . imap joe@example.test\n") == b"FAIL\n"
        other.close()

    await serving(tmp_path, body)


# -- persistent connections (RELAY 1, what vmaild-authpipe opens) ---------------------------


async def read_reply(reader: asyncio.StreamReader, single_line: bool = False) -> bytes:
    """One reply, line by line as 4.4 ends it (no EOF needed, replies may be pipelined);
    b"" if the server closed first."""
    reply = b""
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        if not line.endswith(b"\n"):
            return b""
        reply += line
        if line == b".\n" or (reply == line and (single_line or line == b"FAIL\n")):
            return reply


async def relay_connection(
    path: str,
    first: bytes = b"",
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection opened as vmaild-authpipe opens it: RELAY 1 (``first`` right behind
    it), and its answer checked."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(codec.RELAY_HELLO + first)
    assert await read_reply(reader, single_line=True) == codec.RELAY_HELLO
    return reader, writer


@pytest.mark.parametrize("piece", [0, 1], ids=["whole", "one-byte-pieces"])
@aio
async def test_relay_connection_answers_every_request_in_order(tmp_path: Path, piece: int) -> None:
    requests = [
        auth_bytes("joe@example.test", "s3cret"),
        auth_bytes("joe@example.test", "x"),
        b"PRE . imap joe@example.test\n",
        b"PRE . imap nobody@example.test\n",
        b"HELLO\n",
        b"RELAY 1\n",
    ]
    expected_fail = [False, True, False, True, True, True]  # a second RELAY 1 is nonsense

    async def body(path: str, db: FakeDB, app: Any) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        data = codec.RELAY_HELLO + b"".join(requests)
        chunks = [data[i : i + 1] for i in range(len(data))] if piece else [data]
        for chunk in chunks:  # all pipelined: answered strictly in order
            writer.write(chunk)
        await writer.drain()
        assert await read_reply(reader, single_line=True) == codec.RELAY_HELLO
        for failed in expected_fail:
            reply = await read_reply(reader)
            assert (reply == b"FAIL\n") == failed and reply.endswith(b"\n")
        assert len(app.connections) == 1  # still open
        writer.close()

    await serving(tmp_path, body)


@aio
async def test_relay_connection_survives_requests_and_ends_on_a_temporary_failure(
    tmp_path: Path,
) -> None:
    async def body(path: str, db: FakeDB, app: Any) -> None:
        reader, writer = await relay_connection(path)
        for _ in range(3):
            writer.write(b"PRE . imap joe@example.test\n")
            assert (await read_reply(reader)).endswith(b"\n.\n")
        db.down = True  # no reply at all: the relay exits, authdaemond says "try later"
        writer.write(b"PRE . imap unknown@example.test\n")
        assert await read_reply(reader) == b""
        writer.close()

    await serving(tmp_path, body)


@aio
async def test_relay_connection_with_lost_framing_answers_what_came_first(tmp_path: Path) -> None:
    async def body(path: str, db: FakeDB, app: Any) -> None:
        reader, writer = await relay_connection(path, b"PRE . imap joe@example.test\nAUTH twelve\n")
        assert (await read_reply(reader)).endswith(b"\n.\n")
        assert await asyncio.wait_for(reader.read(), 10) == b""  # then closed
        writer.close()

    await serving(tmp_path, body)


@aio
async def test_relay_hello_after_a_request_is_not_a_relay_connection(tmp_path: Path) -> None:
    async def body(path: str, db: FakeDB, app: Any) -> None:
        reply = await exchange(path, b"PRE . imap joe@example.test\n" + codec.RELAY_HELLO)
        assert reply.endswith(b"\n.\n") and reply.count(b".\n") == 1  # answered, closed

    await serving(tmp_path, body)
