"""servers/limits.py: per-listener connection caps (the connection over the cap is closed
at once, counted and logged, one line a minute at most), idle timeouts that spare a
connection with a request in progress, the limits read from the configuration, and the
descriptor limit raised to fit the caps."""

from __future__ import annotations

import asyncio
import gc
import resource
import socket
import tracemalloc
from typing import Any

import pytest

from tests.unit.fakes import CONFIG, FakeApp
from tests.unit.fakes_listeners import LogVolume, exchange, run_server_with_app
from vmaild import config
from vmaild.servers import limits
from vmaild.servers.limits import Limits, fit_descriptor_limit, limits_of
from vmaild.values import ConfigError

tcp = lambda app: lambda: app.tcp_table("mailboxes")  # noqa: E731
GET, FOUND = b"get joe@ex.com\n", b"200 ex.com/joe/\n"


async def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def ask(sock: socket.socket) -> bytes:
    """One lookup over *sock*, without blocking the loop the server runs on."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, GET)
    return await asyncio.wait_for(loop.sock_recv(sock, 100), 2)


async def is_closed_soon(sock: socket.socket, within: float = 2.0) -> bool:
    """True if the server closes *sock* (EOF) within *within* seconds."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, 100), within) == b""
    except TimeoutError:
        return False


def test_connections_over_the_cap_are_closed_at_once_counted_and_logged() -> None:
    async def scenario(port: int, db: Any, app: FakeApp) -> None:
        app.ctx.limits.configure({"tcp:mailboxes": Limits(max_connections=3, idle_timeout=0)})
        with LogVolume() as volume:
            kept = [await connect(port) for _ in range(3)]
            for s in kept:
                assert await ask(s) == FOUND
            refused = [await connect(port) for _ in range(10)]
            for s in refused:
                assert await is_closed_soon(s, 1.0)  # closed, not left hanging
                s.close()
        refusals = app.metrics.connections_refused.labels("tcp:mailboxes")._value.get()
        assert refusals == 10
        assert volume.lines == [
            "tcp:mailboxes: 1 new connection refused: max_connections (3) reached"
        ]
        assert app.metrics.connections.labels("tcp:mailboxes")._value.get() == 3
        kept.pop().close()  # a place frees up
        await asyncio.sleep(0.1)
        assert await exchange(port, GET, len(FOUND)) == FOUND
        for s in kept:
            s.close()

    run_server_with_app(tcp, scenario)


def test_refusals_are_logged_once_a_minute_with_their_count() -> None:
    clock = [0.0]
    throttle_clock = lambda: clock[0]  # noqa: E731

    class Metrics:
        def __init__(self) -> None:
            self.connections_refused = object()

        def child(self, metric: object, *labels: str) -> Any:
            return type("C", (), {"inc": lambda self: None})()

    caps = limits.ConnectionLimits({"x": Limits(max_connections=1)})
    caps.admit("x", Metrics())  # type: ignore[arg-type]
    with LogVolume() as volume, pytest.MonkeyPatch.context() as mp:
        mp.setattr(limits.Throttle.__init__, "__defaults__", (60.0, throttle_clock))
        for t in (0.0, 1.0, 2.0, 61.0, 62.0):
            clock[0] = t
            assert not caps.admit("x", Metrics())  # type: ignore[arg-type]
    assert volume.lines == [
        "x: 1 new connection refused: max_connections (1) reached",
        "x: 3 new connections refused: max_connections (1) reached",
    ]


def test_idle_connections_are_closed_busy_and_active_ones_are_not() -> None:
    async def scenario(port: int, db: Any, app: FakeApp) -> None:
        app.ctx.limits.configure({"tcp:mailboxes": Limits(idle_timeout=0.3)})
        idle = await connect(port)
        active_r, active_w = await asyncio.open_connection("127.0.0.1", port)
        db.delay = 0.8  # a miss in progress is not idle, however long it takes
        slow = asyncio.create_task(exchange(port, b"get nobody@ex.com\n", 17))
        for _ in range(10):  # 1 s of a request every 0.1 s
            active_w.write(GET)
            assert await active_r.readexactly(len(FOUND)) == FOUND
            await asyncio.sleep(0.1)
        assert await slow == b"500 not%20found\n"
        assert await is_closed_soon(idle, 0.1)  # long closed by now
        idle.close()
        await asyncio.sleep(0.6)
        assert await active_r.read(10) == b""  # idle since its last request: closed too
        active_w.close()

    run_server_with_app(tcp, scenario)


def test_idle_timeout_zero_never_closes() -> None:
    async def scenario(port: int, db: Any, app: FakeApp) -> None:
        app.ctx.limits.configure({"tcp:mailboxes": Limits(idle_timeout=0)})
        app.ctx.limits._default = Limits(idle_timeout=0)
        s = await connect(port)
        assert not await is_closed_soon(s, 0.5)
        assert await ask(s) == FOUND
        s.close()

    run_server_with_app(tcp, scenario)


def test_limits_from_the_configuration() -> None:
    cfg = config.parse(
        CONFIG
        + "tcp = 127.0.0.1:10022\nmax_connections = 50\nidle_timeout = 7200\n"
        + "[socketmap]\nlisten = 127.0.0.1:10020\n"
        + "[policy]\nlisten = 127.0.0.1:10040\nidle_timeout = 0\n"
        + "[sasl]\nlisten = unix:/run/x/auth\nmax_connections = 200\n"
    )
    assert limits_of(cfg) == {
        "tcp:domains": Limits(50, 7200.0),
        "socketmap": Limits(1000, 3600.0),
        "policy": Limits(1000, 0.0),
        "sasl": Limits(200, 3600.0),
    }
    for bad in ("max_connections = 0", "idle_timeout = -1", "max_connections = many"):
        with pytest.raises(ConfigError, match=bad.split()[0]):
            config.parse(CONFIG + "[socketmap]\nlisten = 127.0.0.1:10020\n" + bad + "\n")


def test_the_defaults_outlast_postfix_own_connection_reuse() -> None:
    """PROTOCOLS.md: socketmap clients close after 10 s idle (2.4), policy clients after
    300 s idle and 1000 s age (3.3); tcp: clients never do (1.4), so an hour."""
    default = Limits()
    assert default.idle_timeout >= 3600 > 1000
    assert default.max_connections >= 1000  # > default_process_limit (100) x services


def test_descriptor_limit_is_raised_to_fit_the_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"soft": 1024, "hard": 4096}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (state["soft"], state["hard"]))

    def setrlimit(_: int, limits: tuple[int, int]) -> None:
        state["soft"] = limits[0]

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert fit_descriptor_limit(500) is None and state["soft"] == 1024
    assert (
        fit_descriptor_limit(3000) is None and state["soft"] == 3000 + limits.RESERVED_DESCRIPTORS
    )
    warning = fit_descriptor_limit(8000)
    assert state["soft"] == 4096
    assert warning is not None and "add up to 8000" in warning and "4096" in warning


def test_exhaustion_over_the_cap_nothing_grows_and_the_kept_are_served() -> None:
    """Thousands of clients past a small cap: each refused at once and counted, the
    connections in place answered all along, and after thousands of connect/close cycles
    (refused and admitted) the listener's bookkeeping and memory are where they were."""

    async def settled(app: FakeApp, open_: int) -> None:
        for _ in range(200):
            if len(app.connections) == open_ and app.ctx.limits.open == {"tcp:mailboxes": open_}:
                return
            await asyncio.sleep(0.01)
        raise AssertionError((len(app.connections), app.ctx.limits.open))

    async def scenario(port: int, db: Any, app: FakeApp) -> None:
        async def refused(count: int) -> None:
            for _ in range(count):
                s = await connect(port)
                assert await is_closed_soon(s, 1.0)
                s.close()

        async def admitted(count: int) -> None:
            for _ in range(count):
                s = await connect(port)
                assert await ask(s) == FOUND
                s.close()

        cap = 5
        app.ctx.limits.configure({"tcp:mailboxes": Limits(max_connections=cap, idle_timeout=0)})
        kept = [await connect(port) for _ in range(cap)]
        for s in kept:
            assert await ask(s) == FOUND
        with LogVolume() as volume:
            await refused(100)  # warm-up: whatever is allocated once is allocated
            kept.pop().close()
            await settled(app, cap - 1)
            await admitted(100)
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for _ in range(10):
                    await admitted(100)  # one place free: each is served, then goes
                    await settled(app, cap - 1)
                    kept.append(await connect(port))  # the cap reached again
                    await refused(200)
                    for s in kept:  # the connections in place are served all along
                        assert await ask(s) == FOUND
                    kept.pop().close()
                    await settled(app, cap - 1)
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
        # 3,000 connections served or refused (a few KB of noise): a leak of 50 bytes per
        # connection admitted would show.
        assert grown < 50_000, grown
        refusals = app.metrics.connections_refused.labels("tcp:mailboxes")._value.get()
        assert refusals == 100 + 10 * 200
        assert len(volume.lines) == 1  # one line a minute at most
        await settled(app, cap - 1)
        for s in kept:
            s.close()
        await settled(app, 0)

    run_server_with_app(tcp, scenario, timeout=60)
