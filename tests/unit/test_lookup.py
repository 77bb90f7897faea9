"""Map lookups: address rules, row joining, and errors that never become "not found"."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.fakes import make_lookups
from vmaild import config
from vmaild.cache import Cache, TTLs
from vmaild.db import DatabaseError
from vmaild.failures import TemporaryFailure
from vmaild.lookup import Lookups, UnknownMap, join_rows
from vmaild.metrics import Metrics


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], None),
        ([("a@x",)], "a@x"),
        ([("a@x",), ("b@y",)], "a@x,b@y"),
        ([("a@x", "b@y")], "a@x,b@y"),
        ([(None,)], None),
        ([("",)], None),  # empty string is "not found", never `200 `
        ([(None,), ("b",)], "b"),
        ([(b"bytes",)], "bytes"),
        ([(5000,)], "5000"),
    ],
)
def test_join_rows(rows, expected) -> None:  # type: ignore[no-untyped-def]
    assert join_rows(rows) == expected


def test_extension_then_catchall_in_postfix_order() -> None:
    lookups, db, _ = make_lookups({"@ex.com": [("catch@ex.com",)]})
    assert asyncio.run(lookups.lookup("aliases", "Joe+Tag@EX.com")) == "catch@ex.com"
    assert [p for _, p in db.queries] == [("joe+tag@ex.com",), ("joe@ex.com",), ("@ex.com",)]


def test_full_address_wins_over_stripped() -> None:
    lookups, db, _ = make_lookups({"joe+tag@ex.com": [("special",)], "joe@ex.com": [("j",)]})
    assert asyncio.run(lookups.lookup("aliases", "joe+tag@ex.com")) == "special"
    assert len(db.queries) == 1


def test_no_catchall_on_maps_without_it() -> None:
    lookups, db, _ = make_lookups({"@ex.com": [("catch",)]})
    assert asyncio.run(lookups.lookup("mailboxes", "joe@ex.com")) is None
    assert [p for _, p in db.queries] == [("joe@ex.com",)]


def test_database_error_is_temporary_never_not_found() -> None:
    lookups, db, metrics = make_lookups({"joe@ex.com": [("x",)]})
    db.down = True
    with pytest.raises(TemporaryFailure):
        asyncio.run(lookups.lookup("mailboxes", "joe@ex.com"))
    assert metrics.lookup_errors.labels("mailboxes")._value.get() == 1


def test_error_on_a_later_candidate_is_still_an_error() -> None:
    """user+ext not found, then the database fails on user@domain: that is no answer."""
    lookups, db, _ = make_lookups()
    calls = {"n": 0}
    orig = db.fetch

    async def fail_second(sql, params=(), **_):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            db.down = True
        return await orig(sql, params)

    db.fetch = fail_second  # type: ignore[method-assign]
    with pytest.raises(TemporaryFailure):
        asyncio.run(lookups.lookup("aliases", "joe+x@ex.com"))


def test_stale_answer_while_database_down() -> None:
    lookups, db, _ = make_lookups({"joe@ex.com": [("ex.com/joe/",)]})
    assert asyncio.run(lookups.lookup("mailboxes", "joe@ex.com")) == "ex.com/joe/"
    clock = {"t": lookups.cache.clock() + 61}
    lookups.cache.clock = lambda: clock["t"]
    db.down = True
    assert asyncio.run(lookups.lookup("mailboxes", "joe@ex.com")) == "ex.com/joe/"


def test_unknown_map() -> None:
    lookups, _, _ = make_lookups()
    with pytest.raises(UnknownMap):
        asyncio.run(lookups.lookup("nope", "k"))
    with pytest.raises(UnknownMap):
        lookups.cached("nope", "k")


def test_fast_path_records_metrics() -> None:
    lookups, _, metrics = make_lookups({"joe@ex.com": [("v",)]})
    assert lookups.cached("mailboxes", "joe@ex.com") == (False, None)
    asyncio.run(lookups.lookup("mailboxes", "joe@ex.com"))
    assert lookups.cached("mailboxes", "JOE@ex.com") == (True, "v")
    assert metrics.lookup_stats.count("mailboxes", "hit") == 1
    assert metrics.lookup_stats.count("mailboxes", "miss") == 1


def test_suppressed_query_is_not_found_without_a_query() -> None:
    text = (
        "[database]\nhosts = h\nuser = u\ndbname = d\n"
        "[map bydomain]\nquery = SELECT x FROM t WHERE d='%d'\n"
    )
    lookups, db, _ = make_lookups(text=text)
    assert asyncio.run(lookups.lookup("bydomain", "nodomain")) is None
    assert db.queries == []


CHAIN = """\
[database]
hosts = h
user = u
dbname = d

[map aliases]
query = SELECT destination FROM forwardings WHERE source='%s'
catchall = yes
chain = email2email

[map email2email]
query = SELECT email FROM users WHERE email='%s'
"""


class TwoTables:
    """forwardings: only the catch-all; users: joe."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, str]] = []

    async def fetch(
        self, sql: str, params: tuple[str, ...] = (), *, write: bool = False
    ) -> list[tuple[str]]:
        table = "users" if "FROM users" in sql else "forwardings"
        self.queries.append((table, params[0]))
        if table == "forwardings" and params[0] == "@ex.com":
            return [("catch@ex.com",)]
        if table == "users" and params[0] == "joe@ex.com":
            return [("joe@ex.com",)]
        return []


def test_chain_tries_every_table_per_key_form_like_postfix() -> None:
    """The seed's virtual_alias_maps = forwardings, email2email: an existing mailbox must
    not fall into the catch-all (Postfix tries each key form across the whole list)."""
    from vmaild import config as config_mod
    from vmaild.cache import Cache, TTLs
    from vmaild.lookup import Lookups
    from vmaild.metrics import Metrics

    cfg = config_mod.parse(CHAIN)
    db = TwoTables()
    lookups = Lookups(cfg, db, Cache(TTLs(60, 10, 3600), 100), Metrics())  # type: ignore[arg-type]
    assert asyncio.run(lookups.lookup("aliases", "joe+x@ex.com")) == "joe@ex.com"
    assert db.queries == [
        ("forwardings", "joe+x@ex.com"),
        ("users", "joe+x@ex.com"),
        ("forwardings", "joe@ex.com"),
        ("users", "joe@ex.com"),
    ]
    assert asyncio.run(lookups.lookup("aliases", "nobody@ex.com")) == "catch@ex.com"


def test_chain_must_name_another_map() -> None:
    from vmaild import config as config_mod
    from vmaild.values import ConfigError

    with pytest.raises(ConfigError, match=r"\[map aliases\] chain: 'nope' is not"):
        config_mod.parse(CHAIN.replace("chain = email2email", "chain = nope"))


def test_not_found_for_a_notified_key_the_read_host_lacks_is_a_temporary_failure() -> None:
    """Read-your-writes (pending.py): vmailctl created new@ex.com, the read host has not
    applied the commit: its "not found" (fresh from the database, or a cached negative
    entry) is a 4xx, never a 5xx. Found answers and other keys are untouched."""
    from vmaild.pending import PendingChanges

    lookups, db, metrics = make_lookups({"old@ex.com": [("ex.com/old/",)]})
    assert asyncio.run(lookups.lookup("mailboxes", "new@ex.com")) is None  # cached negative
    lookups.pending = PendingChanges()
    lookups.pending.add("0-1-9", ["new@ex.com", "old@ex.com"])
    assert lookups.cached("mailboxes", "new@ex.com") == (False, None)  # not from the cache
    for key in ("new@ex.com", "NEW+tag@ex.com"):
        with pytest.raises(TemporaryFailure):
            asyncio.run(lookups.lookup("mailboxes", key))
    assert asyncio.run(lookups.lookup("mailboxes", "old@ex.com")) == "ex.com/old/"
    assert asyncio.run(lookups.lookup("mailboxes", "other@ex.com")) is None
    lookups.pending.settle("0-1-9")
    assert lookups.cached("mailboxes", "new@ex.com") == (True, None)


def _replicated(confirm: str = "auto") -> config.Config:
    return config.parse(
        "[database]\nhosts = replica1\nwrite_hosts = primary\nuser = u\ndbname = d\n"
        f"[cache]\nconfirm_not_found = {confirm}\n"
        "[map mailboxes]\nquery = SELECT maildir FROM users WHERE email='%s'\n"
    )


class _Roles:
    """A replica that has not applied a mailbox the primary has."""

    def __init__(self, writer_down: bool = False) -> None:
        self.writer_down = writer_down
        self.asked: list[bool] = []

    async def fetch(
        self, sql: str, params: tuple[str, ...] = (), *, write: bool = False
    ) -> list[tuple[str]]:
        self.asked.append(write)
        if write and self.writer_down:
            raise DatabaseError("(2003) no writer answered")
        if write and params[0] == "new@ex.com":
            return [("ex.com/new/",)]
        return []


@pytest.mark.parametrize(
    ("confirm", "writer_down", "expected", "asked", "result"),
    [
        # A mailbox the replica has not applied yet: found on the writer, never refused.
        ("auto", False, "ex.com/new/", [False, True], "found"),
        ("yes", False, "ex.com/new/", [False, True], "found"),
        # The writer down: the replica's answer stands (a 4xx would defer every miss).
        ("auto", True, None, [False, True], "unavailable"),
        ("no", False, None, [False], None),
    ],
)
def test_not_found_on_a_replica_is_confirmed_on_the_writer(
    confirm: str, writer_down: bool, expected: str | None, asked: list[bool], result: str | None
) -> None:
    cfg = _replicated(confirm)
    db = _Roles(writer_down)
    metrics = Metrics()
    lookups = Lookups(cfg, db, Cache(TTLs(60, 10, 3600), 1000), metrics)  # type: ignore[arg-type]
    assert asyncio.run(lookups.lookup("mailboxes", "new@ex.com")) == expected
    assert db.asked == asked
    if result is not None:
        assert metrics.lookup_confirmations.labels(result)._value.get() == 1


def test_a_single_server_is_not_asked_twice() -> None:
    cfg = config.parse(
        "[database]\nhosts = one\nuser = u\ndbname = d\n"
        "[map mailboxes]\nquery = SELECT maildir FROM users WHERE email='%s'\n"
    )
    db = _Roles()
    lookups = Lookups(cfg, db, Cache(TTLs(60, 10, 3600), 1000), Metrics())  # type: ignore[arg-type]
    assert asyncio.run(lookups.lookup("mailboxes", "new@ex.com")) is None
    assert db.asked == [False]
