"""On a version 2 schema (no change log): the change poller and the control socket's
flush (watch.py: ChangeWatch.control_flush has the rule): one flush per change, never a
second one for a change vmailctl has already had flushed."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
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

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
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


def test_sasl_listener_and_the_login_service_it_needs(tmp_path: Any) -> None:
    """[sasl] listen alone builds the login service and the listener, fed by the getter
    (a reload swaps the service under open connections)."""
    from vmaild.servers.sasl import SaslProtocol

    sock = tmp_path / "auth"
    text = CONFIG + f"\n[sasl]\nlisten = unix:{sock}\nmechanisms = PLAIN\n"
    app = App(config.parse(text))
    try:
        assert app.runtime.auth is not None and app.current_auth() is app.runtime.auth
        listen, factory = app.wanted_listeners(app.config)["sasl"]
        assert listen == Listen(path=str(sock))
        protocol = factory()
        assert isinstance(protocol, SaslProtocol)
        assert protocol.server.mechanisms == ("PLAIN",)
        assert "auth" not in app.wanted_listeners(app.config)
    finally:
        app.runtime.close()
    # Neither [auth] nor [sasl] listen: no login service at all.
    app = App(config.parse(CONFIG))
    try:
        assert app.runtime.auth is None and "sasl" not in app.wanted_listeners(app.config)
    finally:
        app.runtime.close()


def test_a_socket_systemd_passed_is_served_and_its_file_outlives_vmaild(tmp_path: Any) -> None:
    """vmaild.socket's socket is used as it is (no new bind, no chmod) and left in place at
    stop; a socket vmaild bound itself is removed at stop, unless another file took its
    path meanwhile (then that file is someone else's)."""
    from vmaild.servers.inherited import InheritedSockets

    passed_path, own_path = str(tmp_path / "control"), str(tmp_path / "auth")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    systemd.bind(passed_path)
    os.chmod(passed_path, 0o600)  # SocketMode=: vmaild's own would be 0660
    systemd.listen(8)
    identity = os.stat(passed_path).st_ino
    text = CONFIG + f"\n[control]\nlisten = unix:{passed_path}\n[sasl]\nlisten = unix:{own_path}\n"

    async def scenario() -> None:
        app = App(config.parse(text), inherited=InheritedSockets([(systemd.dup(), "control")]))
        try:
            await app.sync_listeners(app.config)
            app.inherited.close_unclaimed()
            reader, writer = await asyncio.open_unix_connection(passed_path)
            writer.write(b"ping\n")
            assert await reader.readline() == b"ok\n"
            writer.close()
            st = os.stat(passed_path)
            assert (st.st_ino, stat.S_IMODE(st.st_mode)) == (identity, 0o600)
            assert stat.S_IMODE(os.stat(own_path).st_mode) == 0o660
        finally:
            await app.stop()

    asyncio.run(scenario())
    assert os.stat(passed_path).st_ino == identity
    assert not os.path.exists(own_path)

    async def replaced() -> None:
        app = App(config.parse(CONFIG + f"\n[control]\nlisten = unix:{own_path}\n"))
        await app.sync_listeners(app.config)
        os.rename(passed_path, own_path)  # another socket took the path (systemd's, say)
        await app.stop()

    asyncio.run(replaced())
    assert os.stat(own_path).st_ino == identity
    systemd.close()


def test_a_tcp_socket_systemd_passed_serves_the_metrics_endpoint() -> None:
    """host:port listeners match too (here [metrics]): the passed socket is used, so the
    port systemd holds is not bound a second time (which would fail: EADDRINUSE)."""
    from vmaild.servers.inherited import InheritedSockets

    systemd = socket.create_server(("127.0.0.1", 0))
    port = systemd.getsockname()[1]
    text = CONFIG + f"\n[metrics]\nlisten = 127.0.0.1:{port}\n"

    async def scenario() -> None:
        app = App(config.parse(text), inherited=InheritedSockets([(systemd.dup(), "metrics")]))
        try:
            await app.sync_listeners(app.config)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.")
            assert b"vmaild_" in await reader.read()
            writer.close()
        finally:
            await app.stop()

    asyncio.run(scenario())
    systemd.close()
