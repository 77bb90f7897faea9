"""The policy listener over a real loopback socket: framing, order, and closing without a
reply on bad input or internal errors (PROTOCOLS.md 3.3, 3.4)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.fakes import FakeApp
from tests.unit.fakes_policy import BASE, FakePolicyDB, User, make_service
from vmaild import config
from vmaild.servers.base import start_listener
from vmaild.values import Listen

REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"client_address=192.0.2.1\nclient_name=mail.example.net\nclient_port=40512\n"
    b"helo_name=mail.example.net\nsender=a@example.net\nrecipient=%s\n"
    b"recipient_count=0\nqueue_id=\ninstance=a5f.5f3b5d41.4a2.0\nsize=0\n"
    b"sasl_method=\nsasl_username=\nsasl_sender=\nccert_subject=\nencryption_keysize=0\n"
    b"policy_context=\n\n"
)


def rcpt(address: bytes) -> bytes:
    return REQUEST % address


class Stub:
    """A service answering from a function, recording every request."""

    def __init__(self, answer: Callable[[Any], Awaitable[str | None]] | None = None):
        self.requests: list[Any] = []
        self.answer = answer

    async def decide(self, request: Any) -> str | None:
        self.requests.append(request)
        if self.answer is not None:
            return await self.answer(request)
        return "DUNNO"


def make_app(service: Any, text: str = BASE) -> FakeApp:
    """The policy listener as the daemon builds it for the configuration ``text``."""
    return FakeApp(policy=service, policy_max_request=config.parse(text).policy.max_request_bytes)


async def serve(app: FakeApp) -> tuple[asyncio.Server, int]:
    server = await start_listener(Listen(host="127.0.0.1", port=0), app.policy_listener)
    return server, server.sockets[0].getsockname()[1]


async def exchange(
    app: Any, chunks: list[bytes], *, per_byte_delay: bool = False, half_close: bool = False
) -> bytes:
    """Send chunks (draining after each), then read until EOF or a quiet 0.3 s."""
    server, port = await serve(app)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            if per_byte_delay:
                await asyncio.sleep(0)
        if half_close:
            writer.write_eof()
        got = b""
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.3)
            except TimeoutError:
                break
            if not data:
                got += b"<EOF>"
                break
            got += data
        writer.close()
        return got
    finally:
        server.close()


def run(app: Any, chunks: list[bytes], **kw: Any) -> bytes:
    return asyncio.run(exchange(app, chunks, **kw))


def protocol_errors(app: Any) -> float:
    return sum(
        s.value
        for m in app.metrics.protocol_errors.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )


def real_app() -> Any:
    db = FakePolicyDB(users={"off@example.com": User(active=0), "on@example.com": User()})
    service, _ = make_service(db)
    return make_app(service)


def test_whole_request_exact_reply_connection_kept() -> None:
    app = real_app()
    # No <EOF>: "Unless there was an error, the server must not close the connection."
    assert run(app, [rcpt(b"on@example.com")]) == b"action=DUNNO\n\n"
    assert run(app, [rcpt(b"off@example.com")]) == b"action=550 5.2.1 Mailbox disabled\n\n"


def test_one_byte_pieces() -> None:
    app = real_app()
    data = rcpt(b"off@example.com") + rcpt(b"on@example.com")
    got = run(app, [data[i : i + 1] for i in range(len(data))], per_byte_delay=True)
    assert got == b"action=550 5.2.1 Mailbox disabled\n\naction=DUNNO\n\n"


def test_several_requests_answered_in_order() -> None:
    app = real_app()
    addresses = [b"off@example.com", b"on@example.com", b"x@y.example"] * 5
    got = run(app, [b"".join(rcpt(a) for a in addresses)])
    expected = {b"off@example.com": b"action=550 5.2.1 Mailbox disabled\n\n"}
    assert got == b"".join(expected.get(a, b"action=DUNNO\n\n") for a in addresses)


def test_order_is_kept_when_answers_take_different_times() -> None:
    async def slow_first(request: Any) -> str:
        await asyncio.sleep(0.05 if request.recipient == "slow@x" else 0)
        return f"WARN {request.recipient}"

    app = make_app(Stub(slow_first))
    got = run(app, [rcpt(b"slow@x") + rcpt(b"fast@x")])
    assert got == b"action=WARN slow@x\n\naction=WARN fast@x\n\n"


def test_attributes_any_order_unknown_duplicates_and_equals() -> None:
    stub = Stub()
    app = make_app(stub)
    data = (
        b"future_attribute=whatever\nrecipient=first@x\nsender=a=b==c@x\n"
        b"recipient=second@x\nempty=\nrequest=smtpd_access_policy\n\n"
    )
    assert run(app, [data]) == b"action=DUNNO\n\n"
    (req,) = stub.requests
    assert req.recipient == "first@x"  # the first value wins
    assert req.sender == "a=b==c@x"  # everything after the first '='
    assert req.get("empty") == ""
    assert req.get("future_attribute") == "whatever"


def test_other_request_type_gets_dunno() -> None:
    app = real_app()
    assert run(app, [b"request=junk_policy\nrecipient=off@example.com\n\n"]) == b"action=DUNNO\n\n"


@pytest.mark.parametrize(
    "data",
    [
        b"request=smtpd_access_policy\nthis line has no equals sign\n\n",
        b"request=smtpd_access_policy\n=no name\n\n",
        b"request=smtpd_access_policy\nsender=a\0b\n\n",
        b"request=smtpd_access_policy\nsender=\xff\xfe\n\n",
        b"\n",  # an empty request
        b"GET / HTTP/1.0\r\n\r\n",
        b"request=smtpd_access_policy\nsender=" + b"x" * 20000 + b"\n\n",  # oversized
        b"x" * 20000,  # oversized, no LF at all
        b"a=b\n" * 200 + b"\n",  # too many attributes
    ],
)
def test_bad_input_closes_without_reply(data: bytes) -> None:
    app = real_app()
    assert run(app, [data]) == b"<EOF>"
    assert protocol_errors(app) == 1


def test_good_requests_before_garbage_are_answered_first() -> None:
    app = real_app()
    got = run(
        app,
        [
            rcpt(b"off@example.com")
            + rcpt(b"on@example.com")
            + b"garbage\n\n"
            + rcpt(b"off@example.com")
        ],
    )
    assert got == b"action=550 5.2.1 Mailbox disabled\n\naction=DUNNO\n\n<EOF>"


def test_request_size_is_configurable() -> None:
    app = make_app(Stub(), BASE + "max_request_bytes = 1024\n")
    assert run(app, [b"request=smtpd_access_policy\nsender=" + b"x" * 1100 + b"\n\n"]) == b"<EOF>"
    assert (
        run(app, [b"request=smtpd_access_policy\nsender=" + b"x" * 900 + b"\n\n"])
        == b"action=DUNNO\n\n"
    )


async def _raise(request: Any) -> str:
    raise RuntimeError("bug")


async def _none(request: Any) -> None:
    return None


async def _all_digits(request: Any) -> str:
    return "550"


@pytest.mark.parametrize("answer", [_raise, _none, _all_digits])
def test_internal_error_closes_without_reply(answer: Any) -> None:
    app = make_app(Stub(answer))
    assert run(app, [rcpt(b"a@x") + rcpt(b"b@x")]) == b"<EOF>"


def test_eof_mid_request_is_dropped_quietly() -> None:
    app = real_app()
    got = run(
        app, [rcpt(b"off@example.com") + b"request=smtpd_access_policy\nsender="], half_close=True
    )
    assert got == b"action=550 5.2.1 Mailbox disabled\n\n<EOF>"
    assert protocol_errors(app) == 0


def test_service_is_taken_from_the_current_runtime() -> None:
    first, second = Stub(), Stub()
    app = make_app(first)

    async def go() -> bytes:
        server, port = await serve(app)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(rcpt(b"a@x"))
        one = await reader.readexactly(len(b"action=DUNNO\n\n"))
        app.policy = second  # what SIGHUP does
        writer.write(rcpt(b"b@x"))
        two = await reader.readexactly(len(b"action=DUNNO\n\n"))
        writer.close()
        server.close()
        return one + two

    assert asyncio.run(go()) == b"action=DUNNO\n\n" * 2
    assert [r.recipient for r in first.requests] == ["a@x"]
    assert [r.recipient for r in second.requests] == ["b@x"]


# -- fuzzing without sockets -----------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "wrote after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


REPLY = re.compile(rb"(action=[^\n\r\0]+\n\n)*")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.sampled_from(
                [
                    b"request=smtpd_access_policy\n",
                    b"recipient=a@b\n",
                    b"\n",
                    b"=",
                    b"sender=x=y\n",
                    b"\0",
                    b"\xff",
                    b"\r\n",
                ]
            ),
        ),
        max_size=30,
    )
)
def test_any_input_gets_well_formed_replies_or_a_close(chunks: list[bytes]) -> None:
    async def go() -> FakeTransport:
        app = make_app(Stub())
        proto = app.policy_listener()
        transport = FakeTransport()
        proto.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            if transport.closed:
                break
            proto.data_received(chunk)
            for _ in range(3):
                await asyncio.sleep(0)
        proto.connection_lost(None)
        return transport

    transport = asyncio.run(go())
    assert REPLY.fullmatch(transport.written), transport.written
