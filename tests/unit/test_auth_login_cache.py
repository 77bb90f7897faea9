"""vmaild.auth.login_cache: a changed hash never matches; bounds and expiry."""

from __future__ import annotations

from vmaild.auth.login_cache import BoundedTTL, VerifiedLogins


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_changed_hash_misses_at_once() -> None:
    cache = VerifiedLogins(3600, 100)
    d = cache.digest("old password")
    cache.add("joe@example.test", "$6$old", d)
    assert cache.check("joe@example.test", "$6$old", d)
    # The row now carries another hash (PASSWD, vmailctl, SQL): the entry is unreachable.
    assert not cache.check("joe@example.test", "$6$new", d)
    assert not cache.check("joe@example.test", "$6$new", cache.digest("new password"))


def test_keyed_on_the_password_and_the_address() -> None:
    cache = VerifiedLogins(3600, 100)
    cache.add("joe@example.test", "$6$h", cache.digest("right"))
    assert not cache.check("joe@example.test", "$6$h", cache.digest("wrong"))
    assert not cache.check("ann@example.test", "$6$h", cache.digest("right"))
    assert cache.check("JOE@example.test", "$6$h", cache.digest("right"))


def test_digests_are_keyed_per_process() -> None:
    a, b = VerifiedLogins(60, 10), VerifiedLogins(60, 10)
    assert a.digest("pw") == a.digest("pw")
    assert a.digest("pw") != b.digest("pw")
    assert b"pw" not in a.digest("pw")


def test_entries_expire_and_are_bounded() -> None:
    clock = Clock()
    cache = VerifiedLogins(10, 3, clock)
    for i in range(5):
        cache.add(f"u{i}", "h", b"d")
    assert len(cache) == 3
    assert not cache.check("u0", "h", b"d")
    assert cache.check("u4", "h", b"d")
    clock.now += 10
    assert not cache.check("u4", "h", b"d")


def test_bounded_ttl_is_lru() -> None:
    clock = Clock()
    m: BoundedTTL[str] = BoundedTTL(100, 2, clock)
    m.put("a", "A")
    m.put("b", "B")
    assert m.get("a") == "A"  # a is now the most recently used
    m.put("c", "C")
    assert m.get("b") is None
    assert m.get("a") == "A"
    m.pop("a")
    assert m.get("a") is None


def test_zero_size_or_ttl_stores_nothing() -> None:
    assert len(_filled(BoundedTTL(0, 10))) == 0
    assert len(_filled(BoundedTTL(10, 0))) == 0


def _filled(m: BoundedTTL[str]) -> BoundedTTL[str]:
    m.put("k", "v")
    return m
