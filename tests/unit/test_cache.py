"""Cache semantics with a fake clock: TTLs, negative answers, stale-on-error, single-flight."""

from __future__ import annotations

import asyncio

import pytest

from vmaild.cache import Cache, Outcome, TTLs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Boom(Exception):
    pass


def make(max_entries: int = 100) -> tuple[Cache, Clock]:
    clock = Clock()
    return Cache(TTLs(ttl=60, negative_ttl=10, stale_ttl=3600), max_entries, clock), clock


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def fetcher(values: list[object]):  # type: ignore[no-untyped-def]
    """A fetch that returns (or raises) the next item and counts its calls."""
    calls = {"n": 0}

    async def fetch() -> str | None:
        item = values[min(calls["n"], len(values) - 1)]
        calls["n"] += 1
        if isinstance(item, Exception):
            raise item
        return item  # type: ignore[return-value]

    return fetch, calls


def test_positive_ttl() -> None:
    cache, clock = make()
    fetch, calls = fetcher(["v1", "v2"])
    assert run(cache.get("m", "k", fetch)) == ("v1", Outcome.MISS)
    clock.now += 59.9
    assert run(cache.get("m", "k", fetch)) == ("v1", Outcome.HIT)
    clock.now += 0.2
    assert run(cache.get("m", "k", fetch)) == ("v2", Outcome.MISS)
    assert calls["n"] == 2


def test_negative_ttl() -> None:
    cache, clock = make()
    fetch, calls = fetcher([None, "now-exists"])
    assert run(cache.get("m", "k", fetch)) == (None, Outcome.NOTFOUND)
    clock.now += 9
    assert run(cache.get("m", "k", fetch)) == (None, Outcome.NOTFOUND)
    assert calls["n"] == 1
    clock.now += 2
    assert run(cache.get("m", "k", fetch)) == ("now-exists", Outcome.MISS)


def test_stale_while_database_fails_then_error_after_stale_ttl() -> None:
    cache, clock = make()
    fetch, _ = fetcher(["v1", Boom("db down")])
    run(cache.get("m", "k", fetch))
    clock.now += 61
    assert run(cache.get("m", "k", fetch)) == ("v1", Outcome.STALE)
    clock.now += 3600
    with pytest.raises(Boom):
        run(cache.get("m", "k", fetch))


def test_expired_not_found_is_never_served_stale() -> None:
    """A user created just before an outage must get a temporary error, not a bounce."""
    cache, clock = make()
    fetch, _ = fetcher([None, Boom("db down")])
    run(cache.get("m", "k", fetch))
    clock.now += 11
    with pytest.raises(Boom):
        run(cache.get("m", "k", fetch))


def test_stale_negative_serves_an_expired_not_found_while_the_database_fails() -> None:
    """Opt-in per map: an alias map's "not found" keeps Postfix going on to the mailbox
    map through an outage; it is given up after negative_ttl + stale_ttl like any entry."""
    cache, clock = make()
    cache.configure_map(
        "aliases", TTLs(ttl=60, negative_ttl=10, stale_ttl=3600, stale_negative=True)
    )
    fetch, calls = fetcher([None, Boom("db down")])
    run(cache.get("aliases", "k", fetch))
    clock.now += 11
    assert run(cache.get("aliases", "k", fetch)) == (None, Outcome.STALE)
    assert calls["n"] == 2  # the database was asked first: stale only on its failure
    clock.now += 3600
    with pytest.raises(Boom):
        run(cache.get("aliases", "k", fetch))


def test_stale_negative_never_hides_an_answer_the_database_gives() -> None:
    cache, clock = make()
    cache.configure_map(
        "aliases", TTLs(ttl=60, negative_ttl=10, stale_ttl=3600, stale_negative=True)
    )
    fetch, _ = fetcher([None, "new-alias"])
    run(cache.get("aliases", "k", fetch))
    clock.now += 11
    assert run(cache.get("aliases", "k", fetch)) == ("new-alias", Outcome.MISS)


def test_sweep_keeps_not_found_entries_a_stale_negative_map_can_still_serve() -> None:
    cache, clock = make()
    for name, stale_negative in (("aliases", True), ("plain", False)):
        cache.configure_map(
            name, TTLs(ttl=5, negative_ttl=10, stale_ttl=3600, stale_negative=stale_negative)
        )
        cache.store(name, "k", None)
    clock.now += 3607  # past ttl + stale_ttl, within negative_ttl + stale_ttl
    assert cache.sweep() == 1
    assert cache.peek("plain", "k") is None and cache.peek("aliases", "k") is not None
    clock.now += 5
    assert cache.sweep() == 1 and len(cache) == 0


def test_error_without_entry_raises() -> None:
    cache, _ = make()
    fetch, _ = fetcher([Boom("db down")])
    with pytest.raises(Boom):
        run(cache.get("m", "k", fetch))
    assert len(cache) == 0


def test_single_flight() -> None:
    cache, _ = make()
    calls = {"n": 0}
    release = asyncio.Event()

    async def slow_fetch() -> str:
        calls["n"] += 1
        await release.wait()
        return "v"

    async def scenario() -> list[tuple[str | None, Outcome]]:
        tasks = [asyncio.create_task(cache.get("m", "k", slow_fetch)) for _ in range(50)]
        await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(*tasks)

    results = run(scenario())
    assert calls["n"] == 1
    assert all(r == ("v", Outcome.MISS) for r in results)


def test_single_flight_shares_errors() -> None:
    cache, _ = make()
    calls = {"n": 0}

    async def failing() -> str:
        calls["n"] += 1
        await asyncio.sleep(0.01)
        raise Boom("down")

    async def scenario() -> list[object]:
        tasks = [asyncio.create_task(cache.get("m", "k", failing)) for _ in range(10)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(scenario())
    assert calls["n"] == 1 and all(isinstance(r, Boom) for r in results)


def test_max_entries_evicts_oldest() -> None:
    cache, clock = make(max_entries=3)
    for i in range(5):
        clock.now += 1
        cache.store("m", f"k{i}", "v")
    assert len(cache) == 3
    assert cache.peek("m", "k0") is None and cache.peek("m", "k1") is None
    assert cache.peek("m", "k4") is not None


def test_max_entries_across_maps() -> None:
    cache, clock = make(max_entries=2)
    cache.store("a", "k", "v")
    clock.now += 1
    cache.store("b", "k", "v")
    clock.now += 1
    cache.store("a", "k2", "v")
    assert cache.peek("a", "k") is None and cache.peek("b", "k") is not None


def test_zero_max_entries_caches_nothing() -> None:
    cache, _ = make(max_entries=0)
    fetch, calls = fetcher(["v"])
    run(cache.get("m", "k", fetch))
    run(cache.get("m", "k", fetch))
    assert calls["n"] == 2


def test_refresh_moves_entry_to_the_back() -> None:
    cache, clock = make(max_entries=2)
    cache.store("m", "a", "1")
    clock.now += 1
    cache.store("m", "b", "1")
    clock.now += 1
    cache.store("m", "a", "2")
    clock.now += 1
    cache.store("m", "c", "1")
    assert cache.peek("m", "b") is None and cache.peek("m", "a") is not None


def test_sweep_drops_only_unservable_entries() -> None:
    cache, clock = make()
    cache.store("m", "old", "v")
    clock.now += 3000
    cache.store("m", "new", "v")
    clock.now += 700
    assert cache.sweep() == 1
    assert cache.peek("m", "old") is None and cache.peek("m", "new") is not None


def test_fresh_fast_path() -> None:
    cache, clock = make()
    assert cache.fresh("m", "k") == (False, None)
    cache.store("m", "k", None)
    assert cache.fresh("m", "k") == (True, None)
    clock.now += 11
    assert cache.fresh("m", "k") == (False, None)
    cache.store("m", "k", "v")
    assert cache.fresh("m", "k") == (True, "v")


def test_per_map_ttls() -> None:
    cache, clock = make()
    cache.configure_map("short", TTLs(ttl=1, negative_ttl=1, stale_ttl=0))
    cache.store("short", "k", "v")
    cache.store("m", "k", "v")
    clock.now += 2
    assert cache.fresh("short", "k") == (False, None)
    assert cache.fresh("m", "k") == (True, "v")


def test_flush() -> None:
    cache, _ = make()
    cache.store("m", "k", "v")
    cache.flush()
    assert len(cache) == 0 and cache.peek("m", "k") is None


def test_a_fetch_in_flight_across_a_flush_answers_but_is_not_stored() -> None:
    """It may have read the database before the change the flush is for; a request made
    after the flush does not join it but fetches again."""
    cache, _ = make()
    answers = iter(["old", "new"])
    release = asyncio.Event()

    async def fetch() -> str:
        value = next(answers)
        if value == "old":
            await release.wait()
        return value

    async def scenario() -> tuple[object, object]:
        before = asyncio.create_task(cache.get("m", "k", fetch))
        await asyncio.sleep(0)
        cache.flush()
        after = asyncio.create_task(cache.get("m", "k", fetch))
        await asyncio.sleep(0)
        release.set()
        return await before, await after

    assert run(scenario()) == (("old", Outcome.MISS), ("new", Outcome.MISS))
    assert cache.peek("m", "k") == ("new", 0.0)
    assert cache._inflight == {}


def test_export_and_restore_keep_ages_and_order() -> None:
    cache, clock = make(max_entries=2)
    cache.store("m", "old", "1")
    clock.now += 5
    cache.store("m", "new", None)
    exported = cache.export()
    assert list(exported["m"]) == ["old", "new"]  # oldest first
    cache.store("m", "later", "3")  # the copy does not change with the cache
    assert list(exported["m"]) == ["old", "new"]

    again, clock2 = make(max_entries=2)
    clock2.now = clock.now  # the same clock: ages carry over as they are
    for key, (value, at) in exported["m"].items():
        again.restore("m", key, value, at)
    assert again.peek("m", "old") == ("1", 5) and again.peek("m", "new") == (None, 0)
    again.store("m", "third", "3")  # the oldest restored entry is the one evicted
    assert again.peek("m", "old") is None and again.peek("m", "new") is not None
