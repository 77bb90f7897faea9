"""The cache's key index and targeted drops: by address (with its +extension forms) and by
domain, without touching other entries; the index follows every removal."""

from __future__ import annotations

import asyncio

import pytest

from vmaild.cache import Cache, TTLs
from vmaild.cache_index import KeyIndex, domain_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(max_entries: int = 100) -> tuple[Cache, Clock]:
    clock = Clock()
    cache = Cache(TTLs(ttl=60, negative_ttl=10, stale_ttl=3600), max_entries, clock)
    cache.configure_map("mailboxes", cache.default_ttls, "+-")
    cache.configure_map("aliases", cache.default_ttls, "+")
    return cache, clock


def keys(cache: Cache) -> set[tuple[str, str]]:
    return {(m, k) for m, entries in cache.export().items() for k in entries}


@pytest.mark.parametrize(
    ("key", "domain"),
    [("a@d.test", "d.test"), ("@D.Test", "d.test"), ("d.test", "d.test"), ("a@b@c", "c")],
)
def test_domain_of(key: str, domain: str) -> None:
    assert domain_of(key) == domain


def test_index_add_discard() -> None:
    index = KeyIndex("+")
    for k in ("a@d", "a+x@d", "b@d", "@d", "d", "a@e"):
        index.add(k)
    assert sorted(index.of_domain("d")) == ["@d", "a+x@d", "a@d", "b@d", "d"]
    assert index.variants("a@d") == ["a+x@d"]
    index.discard("a+x@d")
    assert index.variants("a@d") == [] and "a+x@d" not in index.of_domain("d")
    for k in ("a@d", "b@d", "@d", "d"):
        index.discard(k)
    assert index.of_domain("d") == [] and index._domains.keys() == {"e"}


def test_drop_address_takes_its_extensions_in_every_map_and_nothing_else() -> None:
    cache, _ = make()
    for m in ("mailboxes", "aliases"):
        for k in ("a@d.test", "a+x@d.test", "a-y@d.test", "ab@d.test", "b@d.test", "d.test"):
            cache.store(m, k, "v")
    assert cache.drop_address("A@D.test") == 5  # mailboxes: a, a+x, a-y; aliases: a, a+x
    assert ("aliases", "a-y@d.test") in keys(cache)  # '-' is no delimiter there
    assert ("mailboxes", "ab@d.test") in keys(cache) and len(cache) == 7


def test_drop_domain_takes_every_key_of_the_domain() -> None:
    cache, _ = make()
    for k in ("a@d.test", "@d.test", "d.test", "a@e.test", "e.test", "a@sub.d.test"):
        cache.store("mailboxes", k, None)
    assert cache.drop_domain("D.TEST") == 3
    assert keys(cache) == {
        ("mailboxes", "a@e.test"),
        ("mailboxes", "e.test"),
        ("mailboxes", "a@sub.d.test"),
    }
    assert len(cache) == 3


def test_evictions_sweeps_and_flushes_keep_the_index_in_step() -> None:
    cache, clock = make(max_entries=3)
    for i in range(5):
        cache.store("mailboxes", f"u{i}@d.test", "v")
    index = cache._index["mailboxes"]
    assert sorted(index.of_domain("d.test")) == ["u2@d.test", "u3@d.test", "u4@d.test"]
    clock.now += 60 + 3600 + 1
    cache.store("mailboxes", "new@d.test", "v")
    cache.sweep()
    assert index.of_domain("d.test") == ["new@d.test"]
    cache.flush()
    cache.store("mailboxes", "x@d.test", "v")
    assert cache._index["mailboxes"].of_domain("d.test") == ["x@d.test"]
    cache.restore("aliases", "r@d.test", "v", clock.now)
    assert cache.drop_domain("d.test") == 2 and len(cache) == 0


def test_a_fetch_in_flight_for_a_dropped_key_is_not_stored() -> None:
    cache, _ = make()

    async def main() -> None:
        started, release = asyncio.Event(), asyncio.Event()

        async def slow() -> str | None:
            started.set()
            await release.wait()
            return "old"

        first = asyncio.create_task(cache.get("mailboxes", "a+x@d.test", slow))
        await started.wait()
        cache.drop_address("a@d.test")
        release.set()
        assert await first == ("old", "miss")  # the waiting request still gets it
        assert cache.peek("mailboxes", "a+x@d.test") is None  # but it is not kept
        assert not cache._dropped_flights

    asyncio.run(main())


def test_a_map_that_keeps_case_is_dropped_case_insensitively() -> None:
    cache, _ = make()
    cache.configure_map("cased", cache.default_ttls, "+", fold_case=False)
    for k in ("Joe@D.test", "JOE+x@d.TEST", "joe@d.test", "Joey@d.test"):
        cache.store("cased", k, "v")
    assert cache.drop_address("joe@d.test") == 3
    assert keys(cache) == {("cased", "Joey@d.test")}
