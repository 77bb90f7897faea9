"""The control socket: ``flush``, ``ping`` and ``changed GTID KEYS`` (table-driven), over a
real socket whole and in 1-byte pieces; an old-style ``flush`` still flushes."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.fakes_listeners import exchange
from vmaild.metrics import Metrics
from vmaild.servers.base import ListenerContext, start_listener
from vmaild.servers.control import Changed, ControlProtocol, parse
from vmaild.values import Listen

CASES = [
    ("flush", "flush"),
    ("FLUSH", "flush"),
    ("ping", "ping"),
    ("changed - a@d.test", Changed(None, ("a@d.test",))),
    (
        "changed 0-1-42 a@d.test @d.test d.test",
        Changed("0-1-42", ("a@d.test", "@d.test", "d.test")),
    ),
    ("changed 0-1-42,1-2-7 *", Changed("0-1-42,1-2-7", None)),
    ("changed 0-1-42", Changed("0-1-42", None)),
    ("changed - a@d.test *", Changed(None, None)),
    ("changed", "error unknown command"),
    ("changed 0-1 a@d", "error bad gtid"),
    ("changed x-y-z a@d", "error bad gtid"),
    ("changed - " + "k" * 256, "error too many or too long keys"),
    ("changed - " + " ".join(["k"] * 1001), "error too many or too long keys"),
    ("flush now", "error unknown command"),
    ("", "error empty request"),
    ("bogus", "error unknown command"),
]


@pytest.mark.parametrize(("line", "expected"), CASES)
def test_parse(line: str, expected: object) -> None:
    assert parse(line) == expected


@given(st.text(max_size=300))
@settings(max_examples=300, derandomize=True)
def test_parse_never_raises(line: str) -> None:
    got = parse(line)
    assert isinstance(got, Changed) or got in ("flush", "ping") or got.startswith("error ")


def serve(scenario):  # type: ignore[no-untyped-def]
    calls: list[object] = []

    async def flush() -> int:
        calls.append("flush")
        return 7

    async def changed(gtid: str | None, keys: tuple[str, ...] | None) -> str:
        calls.append((gtid, keys))
        return "ok 2 pending" if gtid == "0-1-99" else "ok 2"

    async def main() -> None:
        ctx = ListenerContext(Metrics())
        server = await start_listener(
            Listen(host="127.0.0.1", port=0), lambda: ControlProtocol(ctx, flush, changed)
        )
        try:
            await scenario(server.sockets[0].getsockname()[1], calls)
        finally:
            server.close()
            for conn in list(ctx.connections):
                conn.transport.close()

    asyncio.run(asyncio.wait_for(main(), 20))


@pytest.mark.parametrize("pieces", [False, True], ids=["whole", "1-byte"])
@pytest.mark.parametrize(
    ("request_", "reply", "call"),
    [
        (b"flush\n", b"ok 7\n", "flush"),
        (b"ping\n", b"ok\n", None),
        (b"changed 0-1-42 a@d.test b@d.test\n", b"ok 2\n", ("0-1-42", ("a@d.test", "b@d.test"))),
        (b"changed 0-1-99 *\r\n", b"ok 2 pending\n", ("0-1-99", None)),
        (b"changed - a@d.test\n", b"ok 2\n", (None, ("a@d.test",))),
        (b"changed bad a@d\n", b"error bad gtid\n", None),
    ],
)
def test_over_a_socket(request_: bytes, reply: bytes, call: object, pieces: bool) -> None:
    async def scenario(port: int, calls: list[object]) -> None:
        assert await exchange(port, request_, len(reply), pieces=pieces) == reply
        assert calls == ([call] if call else [])

    serve(scenario)


def test_a_vmaild_without_the_change_feed_refuses_changed() -> None:
    """What an old vmaild answers; vmailctl then says ``flush`` (ctl/daemon.notify)."""

    async def flush() -> int:
        return 0

    proto = ControlProtocol(ListenerContext(Metrics()), flush)
    assert proto.answer_now(parse("changed - a@b")) == b"error unknown command\n"
    assert proto.answer_now("flush") is None
