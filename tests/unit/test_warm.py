"""Warm restarts (warm.py): what a restored cache answers, what is ignored and said in one
line, flushes removing the snapshot, and what never goes into it."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from tests.unit.fakes import CONFIG, make_lookups
from vmaild import config, snapshot, warm
from vmaild.daemon import App
from vmaild.db import DatabaseError
from vmaild.failures import TemporaryFailure
from vmaild.lookup import Lookups
from vmaild.warm import CacheKeeper


class Clock:
    """Wall and monotonic time moving together; the monotonic one restarts at 0 with the
    "machine" (``reboot``)."""

    def __init__(self) -> None:
        self.wall = 1_764_684_000.0
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def reboot(self, down_for: float) -> None:
        self.wall += down_for
        self.mono = 5.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(warm.time, "time", lambda: c.wall)
    return c


def conf(tmp_path: Path, extra: str = "") -> str:
    return CONFIG + f"\n[cache]\nsnapshot = {tmp_path}/cache.snapshot\n{extra}"


def lookups(tmp_path: Path, clock: Clock, extra: str = "") -> Lookups:
    rows = {"a@x": [("x/a/",)], "b@x": [("x/b/",)]}
    lk, _db, _m = make_lookups(rows, conf(tmp_path, extra))
    lk.cache.clock = lambda: clock.mono
    return lk


def save(keeper: CacheKeeper, lk: Lookups, text: str, changes: object = None) -> None:
    asyncio.run(keeper.save(lk.cache, config.parse(text), changes))


def restore(keeper: CacheKeeper, lk: Lookups, text: str) -> object:
    return keeper.restore(lk.cache, config.parse(text), set(lk.maps))


async def settle(lk: Lookups) -> None:
    await lk.lookup("mailboxes", "a@x")
    await lk.lookup("mailboxes", "nobody@x")


def test_restored_entries_keep_their_age_across_a_reboot(tmp_path: Path, clock: Clock) -> None:
    text = conf(tmp_path)
    lk = lookups(tmp_path, clock)
    asyncio.run(settle(lk))  # a@x found, nobody@x not found, fetched at the same moment
    clock.advance(20)
    keeper = CacheKeeper.for_config(config.parse(text))
    assert keeper is not None
    save(keeper, lk, text, changes=41)
    clock.reboot(down_for=30)  # 50 s old when it answers again

    after = lookups(tmp_path, clock)
    assert restore(keeper, after, text) == 41
    db = after.db
    assert after.cache.peek("mailboxes", "a@x") == ("x/a/", pytest.approx(50, abs=0.2))
    assert after.cached("mailboxes", "a@x") == (True, "x/a/")  # ttl 60: still fresh
    assert after.cached("mailboxes", "nobody@x") == (False, None)  # negative_ttl 10: not

    # The database is down: the found answer is served stale once expired, the not-found
    # one is never served stale (a mailbox created just before the outage).
    db.down = True  # type: ignore[attr-defined]
    clock.advance(15)

    async def answers() -> None:
        assert await after.lookup("mailboxes", "a@x") == "x/a/"
        with pytest.raises(TemporaryFailure):
            await after.lookup("mailboxes", "nobody@x")
        with pytest.raises(TemporaryFailure):
            await after.lookup("mailboxes", "b@x")  # never known

    asyncio.run(answers())
    assert after.metrics.lookup_stats.count("mailboxes", "stale") == 1


def test_entries_too_old_to_serve_are_left_out(tmp_path: Path, clock: Clock) -> None:
    text = conf(tmp_path, "ttl = 60\nstale_ttl = 100\n")
    lk = lookups(tmp_path, clock, "ttl = 60\nstale_ttl = 100\n")
    asyncio.run(lk.lookup("mailboxes", "a@x"))
    clock.advance(100)
    asyncio.run(lk.lookup("mailboxes", "b@x"))
    keeper = CacheKeeper(f"{tmp_path}/cache.snapshot", 60)
    save(keeper, lk, text)
    clock.advance(70)  # a@x is 170 s old: past ttl + stale_ttl; b@x 70 s
    after = lookups(tmp_path, clock, "ttl = 60\nstale_ttl = 100\n")
    restore(keeper, after, text)
    assert after.cache.peek("mailboxes", "a@x") is None
    assert after.cache.peek("mailboxes", "b@x") is not None


@pytest.mark.parametrize(
    ("spoil", "line"),
    [
        ("other config", "ignored: written for another configuration"),
        ("too old", "ignored: too old (written 3701 s ago"),
        ("damaged", "ignored: damaged (checksum mismatch)"),
        ("missing", "no cache snapshot at"),
    ],
)
def test_what_cannot_be_used_is_ignored_with_one_line(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture, spoil: str, line: str
) -> None:
    text = conf(tmp_path)
    lk = lookups(tmp_path, clock)
    asyncio.run(settle(lk))
    keeper = CacheKeeper(f"{tmp_path}/cache.snapshot", 60)
    save(keeper, lk, text)
    path = tmp_path / "cache.snapshot"
    if spoil == "other config":
        text = text.replace("SELECT maildir", "SELECT home")
    elif spoil == "too old":
        clock.advance(3701)  # the longest an entry is of use: ttl 60 + stale_ttl 3600
    elif spoil == "damaged":
        path.write_bytes(path.read_bytes().replace(b"x/a/", b"x/z/"))
    else:
        path.unlink()
    after = lookups(tmp_path, clock)
    caplog.set_level(logging.INFO, "vmaild")
    assert restore(keeper, after, text) is None
    assert len(after.cache) == 0
    assert len(caplog.records) == 1 and line in caplog.records[0].getMessage()
    # a fault is a warning; what follows a configuration change or a long stop is not
    warning = spoil == "damaged"
    assert (caplog.records[0].levelno == logging.WARNING) == warning


def test_a_flush_removes_the_snapshot_and_drops_a_write_in_progress(
    tmp_path: Path, clock: Clock
) -> None:
    text = conf(tmp_path)
    lk = lookups(tmp_path, clock)
    asyncio.run(settle(lk))
    keeper = CacheKeeper(f"{tmp_path}/cache.snapshot", 60)
    save(keeper, lk, text)
    keeper.invalidate()
    assert not (tmp_path / "cache.snapshot").exists()

    async def flushed_while_writing() -> bool:
        real_write = snapshot.write

        def slow_write(*args: object) -> bool:
            keeper.invalidate()  # the flush arrives while the file is being written
            return real_write(*args)  # type: ignore[arg-type]

        warm.snapshot.write = slow_write  # type: ignore[assignment]
        try:
            return await keeper.save(lk.cache, config.parse(text), None)
        finally:
            warm.snapshot.write = real_write  # type: ignore[assignment]

    assert asyncio.run(flushed_while_writing()) is False
    assert list(tmp_path.iterdir()) == []


def test_snapshots_are_off_without_the_directory(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "vmaild")
    text = CONFIG + "\n[cache]\nsnapshot = /nonexistent-vmaild/cache.snapshot\n"
    assert CacheKeeper.for_config(config.parse(text)) is None
    assert "cache snapshots off: no directory /nonexistent-vmaild" in caplog.text
    assert CacheKeeper.for_config(config.parse(CONFIG + "\n[cache]\nsnapshot =\n")) is None


# -- the daemon ---------------------------------------------------------------------------------


def test_the_login_cache_is_never_written(tmp_path: Path) -> None:
    text = conf(tmp_path) + f"\n[auth]\nlisten = unix:{tmp_path}/auth.sock\n"

    async def main() -> bytes:
        app = App(config.parse(text))
        try:
            auth = app.runtime.auth
            assert auth is not None and app.keeper is not None
            digest = auth.verified.digest("s3cret-password")
            auth.verified.add("carol@x", "$6$rounds=5000$salt$hashhash", digest)
            app.runtime.cache.store("mailboxes", "a@x", "x/a/")
            await app.keeper.save(*app._cache_state())
            return (tmp_path / "cache.snapshot").read_bytes()
        finally:
            app.runtime.close()

    data = asyncio.run(main())
    assert b"a@x" in data
    for secret in (b"carol", b"hashhash", b"s3cret"):
        assert secret not in data
    assert set(snapshot.decode(data).maps) == {"mailboxes"}


def test_a_change_made_while_stopped_flushes_the_restored_cache(tmp_path: Path) -> None:
    """The snapshot records the change counter; a different one at the first poll after
    the start flushes what was restored, as the poller does for any change."""
    text = conf(tmp_path, "check_interval = 0.01\n")

    class Counter:
        version = 2

        async def fetch(
            self, sql: str, params: object = (), *, write: bool = False
        ) -> list[tuple[int]]:
            if "vmaild_change_log" in sql:  # a version 2 schema: the counter only
                raise DatabaseError("(1146) no such table", 1146)
            return [(self.version,)]

    async def main() -> None:
        first = App(config.parse(text))
        first.runtime.cache.store("mailboxes", "a@x", "x/a/")
        first.watch.version = 1  # what the poller read last: the cache is consistent with it
        assert first.keeper is not None
        await first.keeper.save(*first._cache_state())
        first.runtime.close()

        second = App(config.parse(text))
        real_db, second.runtime.db = second.runtime.db, Counter()  # type: ignore[assignment]
        assert second.keeper is not None
        second.watch.version = second.keeper.restore(
            second.runtime.cache, second.config, set(second.runtime.lookups.maps)
        )
        assert second.watch.version == 1 and len(second.runtime.cache) == 1
        poller = asyncio.create_task(second.watch.poll_changes())
        deadline = time.monotonic() + 5
        while len(second.runtime.cache) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        poller.cancel()
        real_db.close()
        assert len(second.runtime.cache) == 0
        assert not (tmp_path / "cache.snapshot").exists()

    asyncio.run(main())


def test_stop_writes_and_start_restores(tmp_path: Path) -> None:
    text = conf(tmp_path, "check_interval = 0\nsnapshot_interval = 0\n")

    async def main() -> None:
        first = App(config.parse(text))
        await first.start()
        first.runtime.cache.store("mailboxes", "a@x", "x/a/")
        await first.stop()
        assert (tmp_path / "cache.snapshot").stat().st_mode & 0o777 == 0o600
        second = App(config.parse(text))
        await second.start()
        try:
            assert second.runtime.cache.peek("mailboxes", "a@x") is not None
        finally:
            await second.stop()

    asyncio.run(main())
