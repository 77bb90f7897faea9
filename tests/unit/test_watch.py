"""ChangeWatch on a version 2 schema (no change log): the change poller and the control
socket's flush (ChangeWatch.control_flush has the rule): one flush per change, never a
second one for a change vmailctl has already had flushed. Driven through the App and a
real control listener, as vmailctl reaches it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.unit.fakes import CONFIG
from vmaild import config, watch
from vmaild.daemon import App
from vmaild.db import DatabaseError
from vmaild.servers.base import start_listener
from vmaild.servers.control import ControlProtocol
from vmaild.values import Listen

INTERVAL = 0.01


class Changes:
    """The database as the poller and the control flush see it: the change counter.
    ``hold_next`` makes the next read take its value, then wait for the event."""

    def __init__(self, version: int = 1):
        self.version = version
        self.down = False
        self.reads = 0
        self.hold_next: asyncio.Event | None = None

    async def fetch(
        self, sql: str, params: tuple[Any, ...] = (), *, write: bool = False
    ) -> list[tuple[Any, ...]]:
        if "vmaild_change_log" in sql:  # a version 2 schema: the counter only
            raise DatabaseError("(1146) Table 'd.vmaild_change_log' doesn't exist", 1146)
        assert "vmaild_changes" in sql
        self.reads += 1
        if self.down:
            raise DatabaseError("(2003) Can't connect to MySQL server")
        value, hold, self.hold_next = self.version, self.hold_next, None
        if hold is not None:
            await hold.wait()
        return [(value,)]


class Daemon:
    def __init__(self, app: App, changes: Changes, port: int):
        self.app = app
        self.changes = changes
        self.port = port

    def flushes(self, reason: str) -> float:
        return float(self.app.metrics.cache_flushes.labels(reason)._value.get())

    def total_flushes(self) -> float:
        return self.flushes("control") + self.flushes("change")

    def warm(self, key: str) -> None:
        self.app.runtime.cache.store("mailboxes", key, f"{key}/")

    def cached(self, key: str) -> bool:
        return self.app.runtime.cache.peek("mailboxes", key) is not None

    async def polls(self, n: int) -> None:
        """Until the poller has read the counter ``n`` more times (and acted on the last)."""
        target = self.changes.reads + n
        while self.changes.reads < target:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)

    async def vmailctl_flush(self) -> str:
        """What vmailctl does after a change: ``flush`` on the control socket."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"flush\n")
        line = await reader.readline()
        writer.close()
        return line.decode().strip()


def run(scenario: Callable[[Daemon], Awaitable[None]], *, interval: float = INTERVAL) -> None:
    async def main() -> None:
        app = App(config.parse(CONFIG + f"\n[cache]\ncheck_interval = {interval}\n"))
        real_db, changes = app.runtime.db, Changes()
        app.runtime.db = changes  # type: ignore[assignment]
        server = await start_listener(
            Listen(host="127.0.0.1", port=0),
            lambda: ControlProtocol(app.listener_context, app.control_flush),
        )
        poller = asyncio.create_task(app.watch.poll_changes())
        try:
            await scenario(Daemon(app, changes, server.sockets[0].getsockname()[1]))
        finally:
            poller.cancel()
            server.close()
            for conn in list(app.connections):
                if conn.transport is not None:
                    conn.transport.close()
            real_db.close()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_change_vmailctl_had_flushed_is_not_flushed_again() -> None:
    async def scenario(d: Daemon) -> None:
        await d.polls(2)
        d.warm("before")
        d.changes.version = 2  # vmailctl commits: the triggers bump
        assert await d.vmailctl_flush() == "ok 1"  # then pokes the control socket
        assert d.flushes("control") == 1
        flushed = d.total_flushes()  # the poller may have seen the bump before the poke
        d.warm("after")
        await d.polls(5)
        assert d.total_flushes() == flushed and d.cached("after")

    run(scenario)


def test_a_change_after_the_control_flush_is_flushed() -> None:
    async def scenario(d: Daemon) -> None:
        await d.polls(2)
        d.changes.version = 2
        await d.vmailctl_flush()
        change_flushes = d.flushes("change")
        d.warm("after")
        d.changes.version = 3  # SQL typed by hand, no poke
        await d.polls(2)
        assert d.flushes("change") == change_flushes + 1 and not d.cached("after")

    run(scenario)


def test_a_change_nobody_notified_is_flushed_once() -> None:
    async def scenario(d: Daemon) -> None:
        await d.polls(2)
        d.warm("before")
        d.changes.version = 2
        await d.polls(2)
        assert d.flushes("change") == 1 and not d.cached("before")
        d.warm("after")
        await d.polls(3)
        assert d.flushes("change") == 1 and d.cached("after")

    run(scenario)


def test_a_control_flush_that_cannot_read_the_counter_flushes_and_the_poller_too() -> None:
    """The database is down (or the read too slow): the flush happens all the same, and the
    poller, left with its old baseline, flushes once more when it sees the change."""

    async def scenario(d: Daemon) -> None:
        await d.polls(2)
        d.changes.version, d.changes.down = 2, True
        d.warm("before")
        assert await d.vmailctl_flush() == "ok 1"
        d.changes.down = False
        await d.polls(2)
        assert (d.flushes("control"), d.flushes("change")) == (1, 1)

    run(scenario)


def test_a_control_flush_does_not_wait_long_for_the_counter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watch, "CONTROL_VERSION_SECONDS", 0.05)

    async def scenario(d: Daemon) -> None:
        await d.polls(2)
        d.changes.version = 2
        d.changes.hold_next = asyncio.Event()  # the control flush's read hangs
        d.warm("before")
        assert await asyncio.wait_for(d.vmailctl_flush(), 2) == "ok 1"
        await d.polls(2)
        assert (d.flushes("control"), d.flushes("change")) == (1, 1)

    run(scenario, interval=0.3)


def test_a_poll_under_way_during_a_control_flush_is_set_aside() -> None:
    """The poll read the counter before vmailctl's change and answers after its flush:
    compared with the flush's baseline it would look like one more change (two, even)."""

    async def scenario(d: Daemon) -> None:
        await d.polls(2)
        release = d.changes.hold_next = asyncio.Event()
        await d.polls(1)  # the poll has read version 1
        d.changes.version = 2
        assert await d.vmailctl_flush() == "ok 0"
        d.warm("after")
        release.set()
        await d.polls(4)
        assert (d.flushes("control"), d.flushes("change")) == (1, 0) and d.cached("after")

    run(scenario)


def test_with_polling_off_a_control_flush_just_flushes() -> None:
    async def scenario(d: Daemon) -> None:
        d.warm("before")
        assert await d.vmailctl_flush() == "ok 1"
        assert d.changes.reads == 0 and not d.cached("before")

    run(scenario, interval=0)


# -- ChangeWatch on its own: a runtime getter and a callable, no App ---------------------------


def test_the_watch_needs_only_a_runtime_getter_and_a_callable() -> None:
    """Full flushes count and mark the snapshot stale; an empty cache is not a flush; the
    baselines a warm start and a reload leave."""
    from vmaild.metrics import Metrics
    from vmaild.runtime import Runtime

    metrics = Metrics()
    rt = Runtime.build(config.parse(CONFIG), metrics)
    stale: list[None] = []
    w = watch.ChangeWatch(lambda: rt, metrics, lambda: stale.append(None))
    try:
        assert w.flush_all("start: nothing cached", "start") == 0 and (w.flushes, stale) == (0, [])
        rt.cache.store("mailboxes", "a@x", "x/a/")
        assert w.flush_all("start: cached before", "start") == 1 and len(rt.cache) == 0
        assert (w.flushes, len(stale)) == (1, 1)
        assert metrics.cache_flushes.labels("start")._value.get() == 1
        w.restored("log:7")  # a change log position: the counter stays unread
        assert (w.feed.position.done, w.version) == (7, None)
        w.restored(3)  # a version 2 snapshot: the counter it was consistent with
        assert (w.feed.position.done, w.version) == (None, 3) and w.baseline() == 3
        w.reloaded()
        assert (w.version, w.flushes) == (None, 2)
    finally:
        rt.close()
