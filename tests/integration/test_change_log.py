"""The change log on a real MariaDB with binary logging and GTIDs: triggers record the
changed keys, a running vmaild drops only the entries they affect (a user change never
empties the cache), a part of the log missed is a full flush, vmailctl's notification
carries the commit's GTID, a version 2 schema keeps the whole-cache flushes until
``vmailctl db migrate`` (seed and v2 both migrate to the log).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.common.ports import free_port
from harness.common.wait import wait_until
from harness.mariadb.server import MariaDB
from harness.stack import seed
from harness.vmaild.server import Vmaild, config_text
from vmaild import config as vconfig
from vmaild.ctl import schema
from vmaild.ctl.daemon import socketmap_query
from vmaild.db import Database
from vmaild.invalidation import ChangeFeed
from vmaild.values import Listen, parse_listen

pytestmark = pytest.mark.integration

VMAILCTL = str(Path(sys.executable).parent / "vmailctl")
BINLOG = ["--log-bin=binlog", "--server-id=1", "--log-bin-trust-function-creators=1"]


class NoCache:
    """A ChangeFeed target that holds nothing: for tests of the feed's own bookkeeping."""

    def drop(self, drop: object) -> int:
        return 0

    def flush_all(self, reason: str, label: str = "change") -> int:
        return 0


@pytest.fixture(scope="module")
def gtid_db() -> Iterator[MariaDB]:
    """A MariaDB of this module's own with a binary log (so commits have GTIDs)."""
    with MariaDB(extra_args=BINLOG) as m:
        yield m


@dataclass
class Host:
    mariadb: MariaDB
    db: seed.SeedDatabase
    vmaild: Vmaild
    socketmap: Listen
    metrics_port: int

    def ctl(self, *args: str, stdin: str = "") -> str:
        done = subprocess.run(
            [VMAILCTL, "-c", str(self.vmaild.config_path), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"vmailctl {args}: {done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    def sql(self, statement: str, args: object = None) -> list[tuple[object, ...]]:
        return self.mariadb.query(statement, args, database=self.db.dbname)

    def lookup(self, map_name: str, key: str) -> tuple[str, str]:
        return socketmap_query(self.socketmap, map_name, key)

    def metric(self, name: str, labels: str = "") -> float:
        text = self.vmaild.metrics_text(self.metrics_port)
        pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+]+)\n"
        found = re.search(pattern, text)
        return float(found.group(1)) if found else 0.0

    def flushes(self) -> float:
        return self.metric("vmaild_cache_flushes_total", 'reason="change"') + self.metric(
            "vmaild_cache_flushes_total", 'reason="control"'
        )


def make_host(
    mariadb: MariaDB, workdir: Path, *, migrate: bool = True, cache: str = "", snapshot: str = ""
) -> Host:
    db = seed.load_seed(mariadb, f"cl_{uuid.uuid4().hex[:8]}")
    sm, mp = free_port(), free_port()
    text = config_text(
        db_port=mariadb.port,
        dbname=db.dbname,
        user=db.user,
        password=db.password,
        socketmap_port=sm,
        metrics_port=mp,
        control_path=str(workdir / "control.sock"),
        cache="check_interval = 0.1\n" + cache,
        snapshot=snapshot,
        extra=f"[mailbox]\nbase = {workdir / 'vmail'}\nuid = 5000\ngid = 5000\n",
    )
    v = Vmaild(text, workdir)
    if migrate:
        v.migrate()
    return Host(mariadb, db, v, parse_listen(f"127.0.0.1:{sm}"), mp)


@pytest.fixture
def host(gtid_db: MariaDB, tmp_path: Path) -> Iterator[Host]:
    h = make_host(gtid_db, tmp_path)
    h.vmaild.start()
    yield h
    h.vmaild.stop()
    gtid_db.drop_database(h.db.dbname)


def add_user(h: Host, address: str) -> None:
    h.ctl("user", "add", address, "--password-stdin", stdin="s3cret-pw\n")


def entries(h: Host) -> float:
    return h.metric("vmaild_cache_entries")


def test_triggers_log_the_old_and_the_new_key(host: Host) -> None:
    host.ctl("domain", "add", "d.test")
    add_user(host, "a@d.test")
    host.sql("UPDATE users SET email = 'b@d.test' WHERE email = 'a@d.test'")
    # A login's rehash is quiet (no log row, no bump), as before.
    before = host.sql("SELECT COUNT(*) FROM vmaild_change_log")[0][0]
    host.sql(
        "UPDATE users SET password = 'x', password_changed_at = NOW() WHERE email = 'b@d.test'"
    )
    assert host.sql("SELECT COUNT(*) FROM vmaild_change_log")[0][0] == before
    host.ctl("user", "password", "b@d.test", "--password-stdin", stdin="other-pw\n")
    host.sql("INSERT INTO forwardings (source, destination) VALUES ('@d.test', 'b@d.test')")
    rows = host.sql("SELECT tbl, change_key FROM vmaild_change_log ORDER BY id")
    assert rows[-5:] == [
        ("users", "a@d.test"),
        ("users", "a@d.test"),  # the rename: old key ...
        ("users", "b@d.test"),  # ... and new key
        ("users", "b@d.test"),  # vmailctl's password change logs itself
        ("forwardings", "@d.test"),
    ]
    assert ("domains", "d.test") in rows


def test_a_user_change_drops_only_that_users_entries(host: Host) -> None:
    host.ctl("domain", "add", "d.test")
    for name in ("a", "b", "c"):
        add_user(host, f"{name}@d.test")
    warm = ["a@d.test", "a+x@d.test", "b@d.test", "c@d.test", "sales@raecoo.com"]
    for key in warm:
        assert host.lookup("mailboxes", key)[0] == "OK", key
    assert host.lookup("mailboxes", "new@d.test")[0] == "NOTFOUND"
    full = entries(host)
    assert full >= len(warm) + 1
    flushes = host.flushes()

    # vmailctl: its notification drops a@d.test and a+x@d.test, nothing else.
    host.ctl("user", "remove", "a@d.test")
    assert host.lookup("mailboxes", "a@d.test")[0] == "NOTFOUND"
    assert host.lookup("mailboxes", "a+x@d.test")[0] == "NOTFOUND"
    hits = host.metric("vmaild_lookups_total", 'map="mailboxes",outcome="hit"')
    for key in ("b@d.test", "c@d.test", "sales@raecoo.com"):
        assert host.lookup("mailboxes", key)[0] == "OK"
    assert host.metric("vmaild_lookups_total", 'map="mailboxes",outcome="hit"') == hits + 3

    # A new user: the cached "not found" for it goes at once.
    add_user(host, "new@d.test")
    assert host.lookup("mailboxes", "new@d.test")[0] == "OK"

    # SQL typed by hand, nobody notified: the poller drops c@d.test only.
    host.sql("DELETE FROM users WHERE email = 'c@d.test'")
    wait_until(lambda: host.lookup("mailboxes", "c@d.test")[0] == "NOTFOUND", 10, "c dropped")
    hits = host.metric("vmaild_lookups_total", 'map="mailboxes",outcome="hit"')
    assert host.lookup("mailboxes", "b@d.test")[0] == "OK"
    assert host.metric("vmaild_lookups_total", 'map="mailboxes",outcome="hit"') == hits + 1
    assert host.flushes() == flushes  # never the whole cache
    assert host.metric("vmaild_cache_drops_total", 'scope="address"') >= 3

    # A catch-all changes what every address of its domain gets: that domain's entries go.
    assert host.lookup("forwardings", "b@d.test")[0] == "OK"  # email2email chain
    assert host.lookup("mailboxes", "sales@raecoo.com")[0] == "OK"
    host.ctl("alias", "add", "@d.test", "b@d.test")
    assert host.metric("vmaild_cache_drops_total", 'scope="domain"') >= 1
    hits = host.metric("vmaild_lookups_total", 'map="mailboxes",outcome="hit"')
    assert host.lookup("mailboxes", "sales@raecoo.com")[0] == "OK"
    assert host.metric("vmaild_lookups_total", 'map="mailboxes",outcome="hit"') == hits + 1
    assert host.flushes() == flushes
    # The notification carried the commit's GTID, applied at once on this one server.
    assert re.search(r"GTID 0-1-\d+ applied on the read host", host.vmaild.log())


def test_a_restart_past_the_logs_retention_flushes_fully(gtid_db: MariaDB, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    h = make_host(gtid_db, tmp_path, snapshot=str(state / "cache.snapshot"))
    h.vmaild.start()
    try:
        add_user(h, "keep@raecoo.com")
        assert h.lookup("mailboxes", "sales@raecoo.com")[0] == "OK"
        wait_until(lambda: h.metric("vmaild_cache_entries") >= 1, 5, "an entry")
        assert h.vmaild.stop() == 0
        # While it is stopped: changes, then the log pruned past them (all but the newest).
        h.sql("UPDATE users SET name = 'x' WHERE email = 'sales@raecoo.com'")
        h.sql("INSERT INTO domains (domain) VALUES ('later.test')")
        h.sql("DELETE FROM vmaild_change_log WHERE id < (SELECT MAX(id) FROM vmaild_change_log)")
        h.vmaild.start()
        assert "entries restored" in h.vmaild.log()
        wait_until(
            lambda: h.metric("vmaild_cache_flushes_total", 'reason="change"') == 1, 10, "a flush"
        )
        assert "change log rows were pruned before they were read" in h.vmaild.log()
        # From there on, targeted again.
        h.sql("UPDATE users SET name = 'y' WHERE email = 'keep@raecoo.com'")
        wait_until(lambda: _log_used(h), 10, "a targeted drop")
        assert h.metric("vmaild_cache_flushes_total", 'reason="change"') == 1
    finally:
        h.vmaild.stop()
        gtid_db.drop_database(h.db.dbname)


def make_v2(h: Host) -> None:
    """Turn a migrated database back into version 2: no change log, counter triggers."""
    h.sql(f"DROP TABLE {schema.CHANGE_LOG_TABLE}")
    for t in schema.watched_tables():
        for event, suffix in (("INSERT", "ins"), ("UPDATE", "upd"), ("DELETE", "del")):
            h.sql(f"DROP TRIGGER IF EXISTS vmaild_{t.name}_{suffix}")
            h.sql(
                f"CREATE TRIGGER vmaild_{t.name}_{suffix} AFTER {event} ON {t.name} "
                f"FOR EACH ROW {schema.BUMP}"
            )
    h.sql(f"UPDATE {schema.SCHEMA_TABLE} SET version = 2")


def test_a_v2_schema_flushes_fully_until_migrated(gtid_db: MariaDB, tmp_path: Path) -> None:
    h = make_host(gtid_db, tmp_path)
    make_v2(h)
    h.vmaild.start()
    try:
        assert h.lookup("mailboxes", "sales@raecoo.com")[0] == "OK"

        def bumped_and_flushed() -> bool:
            # The poller's first read of the counter is its baseline: bump until a poll
            # after it sees a change.
            h.sql("UPDATE users SET name = CONCAT(name, 'x') WHERE email = 'sales@raecoo.com'")
            return h.metric("vmaild_cache_flushes_total", 'reason="change"') >= 1

        wait_until(bumped_and_flushed, 10, "a whole-cache flush")
        assert "no change log" in h.vmaild.log()
        h.ctl("db", "migrate")
        assert h.sql("SELECT MAX(version) FROM vmaild_schema")[0][0] == schema.LATEST
        # The daemon looks for the log again (every LOG_PROBE_POLLS polls) and uses it.
        assert h.lookup("mailboxes", "sales@raecoo.com")[0] == "OK"
        assert h.lookup("mailboxes", "info@raecoo.com")[0] in ("OK", "NOTFOUND")
        flushes = h.flushes()
        add_user(h, "fresh@raecoo.com")
        h.sql("UPDATE users SET name = 'z' WHERE email = 'fresh@raecoo.com'")
        wait_until(lambda: _log_used(h), 20, "a targeted drop")
        assert h.lookup("mailboxes", "sales@raecoo.com")[0] == "OK"
        assert h.flushes() <= flushes + 1  # at most the switch-over's own flush
    finally:
        h.vmaild.stop()
        gtid_db.drop_database(h.db.dbname)


def _log_used(h: Host) -> bool:
    return h.metric("vmaild_cache_drops_total", 'scope="address"') > 0


def test_a_seed_database_migrates_to_the_change_log(gtid_db: MariaDB, tmp_path: Path) -> None:
    h = make_host(gtid_db, tmp_path)  # seed -> migrate
    try:
        h.sql("INSERT INTO users (email, password) VALUES ('n@raecoo.com', 'x')")
        assert h.sql("SELECT tbl, change_key FROM vmaild_change_log") == [("users", "n@raecoo.com")]
        assert re.search(r"^change log +1 rows, newest id \d+, since ", h.ctl("db", "status"), re.M)
    finally:
        gtid_db.drop_database(h.db.dbname)


def test_gtid_wait_on_one_server(host: Host) -> None:
    """On the server that committed it, a GTID counts as applied at once (its
    gtid_current_pos; MASTER_GTID_WAIT alone would wait for a replica position); a GTID
    from the future is waited for, bounded, and left pending."""
    cfg = vconfig.load(str(host.vmaild.config_path))

    async def main() -> tuple[object, object, int]:
        db = Database(cfg.database)
        try:
            feed = ChangeFeed(NoCache())
            own = str((await db.fetch("SELECT @@gtid_current_pos"))[0][0]).split(",")[0]
            now = await feed.notified(db, own, ["x@raecoo.com"], 5.0)
            domain, server, seq = own.split("-")
            started = time.monotonic()
            later = await feed.notified(db, f"{domain}-{server}-{int(seq) + 10**6}", None, 0.5)
            assert time.monotonic() - started >= 0.5
            return now, later, len(feed.pending)
        finally:
            db.close()

    now, later, pending = asyncio.run(main())
    assert now == (0, True)
    assert later == (0, False) and pending == 1


def test_pruning_deletes_old_rows_but_keeps_the_newest(host: Host) -> None:
    for i in range(3):
        host.sql(f"INSERT INTO domains (domain) VALUES ('p{i}.test')")
    host.sql("UPDATE vmaild_change_log SET changed_at = NOW(6) - INTERVAL 2 DAY")
    host.sql("INSERT INTO domains (domain) VALUES ('recent.test')")
    cfg = vconfig.load(str(host.vmaild.config_path))

    async def main() -> None:
        db = Database(cfg.database)
        try:
            feed = ChangeFeed(NoCache())
            feed.has_log = True
            feed._last_prune = -1e9
            await feed.maybe_prune(db, 86400)
            # Everything older than a day goes, except the newest row of all.
            host.sql("UPDATE vmaild_change_log SET changed_at = NOW(6) - INTERVAL 2 DAY")
            feed._last_prune = -1e9
            await feed.maybe_prune(db, 86400)
        finally:
            db.close()

    top = host.sql("SELECT MAX(id) FROM vmaild_change_log")[0][0]
    asyncio.run(main())
    assert host.sql("SELECT id, change_key FROM vmaild_change_log") == [(top, "recent.test")]


# -- shared counters ---------------------------------------------------------------------


def test_two_hosts_hammering_one_login_stay_within_the_limit(host: Host) -> None:
    """Two policy services (each its own pool, as two vmaild hosts) count one login's
    mail concurrently at END-OF-MESSAGE: exactly ``limit`` messages are accepted."""
    from types import MappingProxyType

    from vmaild.codec.policy import PolicyRequest
    from vmaild.metrics import Metrics
    from vmaild.policy.service import PolicyService

    limit, per_host = 25, 60
    text = host.vmaild.config_path.read_text() + (
        "[policy]\nlisten = 127.0.0.1:1\nrecipient_check = no\nsender_check = no\n"
        f"ratelimit_messages = {limit}\nratelimit_recipients = 0\n"
    )
    text = text.replace("pool_size = 4", "pool_size = 8")
    cfg = vconfig.parse(text)

    def eom(instance: str) -> PolicyRequest:
        return PolicyRequest(
            MappingProxyType(
                {
                    "request": "smtpd_access_policy",
                    "protocol_state": "END-OF-MESSAGE",
                    "sasl_username": "hammer@raecoo.com",
                    "sender": "hammer@raecoo.com",
                    "instance": instance,
                    "recipient_count": "1",
                }
            )
        )

    async def main() -> tuple[list[str | None], int]:
        dbs = [Database(cfg.database) for _ in range(2)]
        services = [PolicyService(cfg, db, Metrics()) for db in dbs]
        try:
            answers = await asyncio.gather(
                *(services[i % 2].decide(eom(f"h{i % 2}.{i}")) for i in range(2 * per_host))
            )
            conflicts = sum(s.ratelimit.counter.conflicts for s in services if s.ratelimit)
            return list(answers), conflicts
        finally:
            for s in services:
                s.close()
            for db in dbs:
                db.close()

    answers, conflicts = asyncio.run(main())
    accepted = sum(1 for a in answers if a is None or a == "DUNNO")
    assert accepted == limit, (accepted, answers[:5], conflicts)
    assert all(a.startswith("450") for a in answers if a not in (None, "DUNNO"))
    counted = host.sql(
        "SELECT COALESCE(SUM(messages), 0) FROM send_counters "
        "WHERE login = 'hammer@raecoo.com' AND bucket > 0"
    )[0][0]
    assert int(counted) == limit  # type: ignore[call-overload]
