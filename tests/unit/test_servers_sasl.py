"""servers/sasl.py: Postfix's Dovecot SASL client against the listener on a real unix socket,
with a fake login service (what each request becomes, when each reply comes) and with the
real one over a fake database."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from passlib.hash import sha512_crypt  # type: ignore[import-untyped]

from tests.unit.fakes import FakeApp
from tests.unit.fakes_auth import aio, make_service
from vmaild.auth.accounts import Account
from vmaild.auth.contract import LoginRequest, LoginResult, Outcome
from vmaild.metrics import Metrics
from vmaild.servers import sasl as sasl_server
from vmaild.servers.base import start_listener
from vmaild.servers.limits import Limits
from vmaild.values import Listen

HELLO = b"VERSION\t1\t0\nCPID\t4242\n"


def plain(login: str, password: str) -> bytes:
    return base64.b64encode(f"\0{login}\0{password}".encode())


def auth(request_id: int, login: str, password: str, *params: str) -> bytes:
    """An AUTH PLAIN line as Postfix writes it (xsasl_dovecot_server_first())."""
    fields = ["AUTH", str(request_id), "PLAIN", "service=smtp", "nologin", "lip=127.0.0.1"]
    fields += [*params, "resp=" + plain(login, password).decode()]
    return "\t".join(fields).encode() + b"\n"


def account(address: str) -> Account:
    return Account(address=address, password="x", home="/h", maildir="", uid=5000, gid=5000)


class FakeLogins:
    """Answers by password: "ok" OK, "slow" FAIL after a gate opens, "delay:N" FAIL with
    delay N, "down" TEMPFAIL, anything else FAIL; records every request."""

    def __init__(self) -> None:
        self.requests: list[LoginRequest] = []
        self.gate = asyncio.Event()

    async def login(self, req: LoginRequest) -> LoginResult:
        self.requests.append(req)
        if req.password == "ok":
            return LoginResult(Outcome.OK, account=account(req.login.lower()))
        if req.password == "slow":
            await self.gate.wait()
        if req.password.startswith("delay:"):
            return LoginResult(Outcome.FAIL, delay=float(req.password[6:]))
        if req.password == "down":
            return LoginResult(Outcome.TEMPFAIL)
        return LoginResult(Outcome.FAIL)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), 10)

    async def handshake(self) -> list[bytes]:
        lines = []
        while not lines or lines[-1] != b"DONE\n":
            lines.append(await self.line())
        return lines

    def send(self, data: bytes) -> None:
        self.writer.write(data)


async def serving(
    tmp_path: Path, body: Callable[[Callable[[], Awaitable[Client]], FakeApp], Awaitable[None]]
) -> None:
    app = FakeApp(authenticator=FakeLogins(), metrics=Metrics())
    path = str(tmp_path / "sasl.sock")
    server = await start_listener(Listen(path=path), app.sasl_listener)

    async def connect() -> Client:
        client = Client(*await asyncio.open_unix_connection(path))
        await client.handshake()
        return client

    try:
        await body(connect, app)
    finally:
        server.close()
        for conn in list(app.connections):
            assert conn.transport is not None
            conn.transport.close()


@aio
async def test_handshake_and_ok(tmp_path: Path) -> None:
    async def body(connect: Callable[[], Awaitable[Client]], app: FakeApp) -> None:
        path = str(tmp_path / "sasl.sock")
        reader, writer = await asyncio.open_unix_connection(path)
        client = Client(reader, writer)
        # The server speaks first, without waiting for the client's VERSION (6.2, P-D2).
        lines = await client.handshake()
        assert lines[0] == b"VERSION\t1\t2\n"
        assert lines[1:3] == [b"MECH\tPLAIN\tplaintext\n", b"MECH\tLOGIN\tplaintext\n"]
        assert [line.split(b"\t")[0] for line in lines[3:]] == [
            b"SPID",
            b"CUID",
            b"COOKIE",
            b"DONE\n",
        ]
        client.send(HELLO + auth(1, "Joe@Example.test", "ok", "rip=192.0.2.7", "secured"))
        # user= is the account's address, as the database has it.
        assert await client.line() == b"OK\t1\tuser=joe@example.test\n"
        logins = app.authenticator
        assert isinstance(logins, FakeLogins)
        [req] = logins.requests
        assert (req.service, req.login, req.password) == ("smtp", "Joe@Example.test", "ok")
        assert str(req.client) == "192.0.2.7" and req.secured
        assert req.front == "sasl" and req.can_wait
        text = app.metrics.render().decode()
        assert 'vmaild_sasl_requests_total{mechanism="PLAIN",result="ok"} 1.0' in text
        writer.close()

    await serving(tmp_path, body)


@aio
async def test_login_mechanism_and_one_byte_pieces(tmp_path: Path) -> None:
    async def body(connect: Callable[[], Awaitable[Client]], app: FakeApp) -> None:
        client = await connect()
        data = HELLO + b"AUTH\t1\tLOGIN\tservice=smtp\trip=\n"
        for i in range(len(data)):
            client.send(data[i : i + 1])
            await client.writer.drain()
        assert await client.line() == b"CONT\t1\tVXNlcm5hbWU6\n"  # Username:
        client.send(b"CONT\t1\t" + base64.b64encode(b"joe@example.test") + b"\n")
        assert await client.line() == b"CONT\t1\tUGFzc3dvcmQ6\n"  # Password:
        client.send(b"CONT\t1\t" + base64.b64encode(b"wrong") + b"\n")
        assert await client.line() == b"FAIL\t1\treason=authentication failure\n"
        assert app.authenticator.requests[0].client is None  # type: ignore[union-attr]

    await serving(tmp_path, body)


@aio
async def test_a_slow_login_holds_only_itself(tmp_path: Path) -> None:
    """Request 1 waits (a FAIL delay, a slow hash): request 2 on the same connection and
    a request on another connection are answered first (order, not time, is checked)."""

    async def body(connect: Callable[[], Awaitable[Client]], app: FakeApp) -> None:
        logins = app.authenticator
        assert isinstance(logins, FakeLogins)
        one, two = await connect(), await connect()
        one.send(HELLO + auth(1, "a@x", "slow") + auth(2, "b@x", "ok"))
        assert await one.line() == b"OK\t2\tuser=b@x\n"
        two.send(HELLO + auth(1, "c@x", "ok"))
        assert await two.line() == b"OK\t1\tuser=c@x\n"
        logins.gate.set()
        assert await one.line() == b"FAIL\t1\treason=authentication failure\n"

    await serving(tmp_path, body)


@aio
async def test_fail_delay_is_waited_in_the_request_and_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sasl_server, "MAX_REPLY_SECONDS", 0.2)
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(sasl_server.asyncio, "sleep", sleep)

    async def body(connect: Callable[[], Awaitable[Client]], app: FakeApp) -> None:
        client = await connect()
        client.send(HELLO + auth(1, "a@x", "delay:0.05") + auth(2, "a@x", "delay:100"))
        replies = {await client.line(), await client.line()}
        assert replies == {
            b"FAIL\t1\treason=authentication failure\n",
            b"FAIL\t2\treason=authentication failure\n",
        }
        # Each request waited its own delay, never past what Postfix waits (10 s, 6.3).
        assert sorted(slept)[0] == 0.05 and 0 < sorted(slept)[1] <= 0.2

    await serving(tmp_path, body)


@aio
async def test_temporary_failure_closes_after_the_other_replies(tmp_path: Path) -> None:
    """Postfix answers 454 only to a lost connection (6.3): no FAIL for the temporary
    failure; a login still being verified on that connection is answered first."""

    async def body(connect: Callable[[], Awaitable[Client]], app: FakeApp) -> None:
        logins = app.authenticator
        assert isinstance(logins, FakeLogins)
        client = await connect()
        client.send(HELLO + auth(1, "a@x", "slow") + auth(2, "b@x", "down"))
        while len(logins.requests) < 2:
            await asyncio.sleep(0.001)
        logins.gate.set()
        rest = await asyncio.wait_for(client.reader.read(), 10)  # to EOF
        assert rest == b"FAIL\t1\treason=authentication failure\n"
        assert len(logins.requests) == 2
        # Another connection is served as before.
        other = await connect()
        other.send(HELLO + auth(1, "c@x", "ok"))
        assert await other.line() == b"OK\t1\tuser=c@x\n"
        text = app.metrics.render().decode()
        assert 'vmaild_sasl_requests_total{mechanism="PLAIN",result="tempfail"} 1.0' in text

    await serving(tmp_path, body)


@aio
async def test_bad_requests(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(connect: Callable[[], Awaitable[Client]], app: FakeApp) -> None:
        client = await connect()
        # A request the server cannot take: FAIL for its id, the connection goes on.
        client.send(HELLO + b"AUTH\t1\tPLAIN\tservice=smtp\tresp=AAA\n")
        assert await client.line() == b"FAIL\t1\treason=invalid base64 data\n"
        client.send(auth(2, "a@x", "ok"))
        assert await client.line() == b"OK\t2\tuser=a@x\n"
        # A broken line: closed, after one log line.
        client.send(b"AUTH\t2\n")
        assert await asyncio.wait_for(client.reader.read(), 10) == b""
        text = app.metrics.render().decode()
        assert 'vmaild_protocol_errors_total{listener="sasl"} 2.0' in text

    with caplog.at_level(logging.WARNING, logger="vmaild"):
        await serving(tmp_path, body)
    # The first problem in full, the rest counted when the connection closes (base.py).
    assert [r.getMessage() for r in caplog.records] == [
        "sasl: bad request: invalid base64 data",
        "sasl: 1 more problems on the connection just closed",
    ]


@aio
async def test_half_close_answers_then_closes(tmp_path: Path) -> None:
    async def body(connect: Callable[[], Awaitable[Client]], app: FakeApp) -> None:
        client = await connect()
        client.send(HELLO + auth(1, "a@x", "delay:0.01"))
        client.writer.write_eof()
        data = await asyncio.wait_for(client.reader.read(), 10)
        assert data == b"FAIL\t1\treason=authentication failure\n"
        while app.connections:
            await asyncio.sleep(0.001)

    await serving(tmp_path, body)


@aio
async def test_no_password_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(connect: Callable[[], Awaitable[Client]], app: FakeApp) -> None:
        client = await connect()
        client.send(HELLO + auth(1, "a@x", "delay:0", "rip=192.0.2.9"))
        assert (await client.line()).startswith(b"FAIL\t1\t")
        client.send(auth(2, "b@x", "ok", "rip=192.0.2.9", "secured"))
        assert (await client.line()).startswith(b"OK\t2\t")

    with caplog.at_level(logging.DEBUG, logger="vmaild"):
        await serving(tmp_path, body)
    lines = [r.getMessage() for r in caplog.records if r.name == "vmaild.sasl"]
    assert lines == [
        "sasl: PLAIN login from 192.0.2.9 failed",
        "sasl: PLAIN login as b@x from 192.0.2.9 (TLS): ok",
    ]
    assert not any("delay:0" in r.getMessage() or "ok\t" in r.getMessage() for r in caplog.records)


@aio
async def test_with_the_login_service(tmp_path: Path) -> None:
    """The real AuthService (its login() adapter) over a fake database."""
    service, db = make_service(tmp_path, "rehash = no\nfail_delay = 0\n")
    db.add("joe@example.test", sha512_crypt.using(rounds=1000).hash("s3cret"))
    app = FakeApp(authenticator=service, metrics=service.metrics)
    path = str(tmp_path / "sasl.sock")
    server = await start_listener(Listen(path=path), app.sasl_listener)
    try:
        client = Client(*await asyncio.open_unix_connection(path))
        await client.handshake()
        client.send(
            HELLO + auth(1, "joe@example.test", "s3cret") + auth(2, "joe@example.test", "x")
        )
        replies = {await client.line(), await client.line()}
        assert replies == {
            b"OK\t1\tuser=joe@example.test\n",
            b"FAIL\t2\treason=authentication failure\n",
        }
        text = service.metrics.render().decode()
        assert 'vmaild_logins_total{result="ok",service="smtp"} 1.0' in text
        client.writer.close()
    finally:
        server.close()
        service.close()


@aio
async def test_idle_sweep_spares_a_request_waiting_for_the_client(tmp_path: Path) -> None:
    async def body(connect: Callable[[], Awaitable[Client]], app: FakeApp) -> None:
        waiting, idle = await connect(), await connect()
        waiting.send(HELLO + b"AUTH\t1\tLOGIN\tservice=smtp\n")
        assert await waiting.line() == b"CONT\t1\tVXNlcm5hbWU6\n"
        idle.send(HELLO)
        app.ctx.limits.configure({"sasl": Limits(idle_timeout=0.001)})
        while app.ctx.limits.sweep(app.connections) == 0:  # idle's HELLO must age first
            await asyncio.sleep(0.001)
        assert await asyncio.wait_for(idle.reader.read(), 10) == b""
        assert app.ctx.limits.sweep(app.connections) == 0  # still in progress
        waiting.send(b"CONT\t1\t" + base64.b64encode(b"a@x") + b"\n")
        assert await waiting.line() == b"CONT\t1\tUGFzc3dvcmQ6\n"
        waiting.send(b"CONT\t1\t" + base64.b64encode(b"ok") + b"\n")
        assert await waiting.line() == b"OK\t1\tuser=a@x\n"

    await serving(tmp_path, body)
