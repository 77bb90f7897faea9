"""Warm restarts with the real stack: vmaild restarted while MariaDB is down still answers
for the mailboxes it knew, through the socketmap Postfix asks (``postmap -q``), and never
says "not found" for one it did not know.

``postmap -q`` exits 1 both for "not found" and for a temporary failure; only the latter
prints ``query error``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.common.ports import free_port
from harness.common.procs import run
from harness.mariadb.server import MariaDB
from harness.stack import seed
from harness.vmaild.server import Vmaild, config_text

pytestmark = pytest.mark.integration

KNOWN = {"sales@raecoo.com": "raecoo.com/sales/", "alice@example.test": "example.test/alice/"}


@pytest.fixture
def own_mariadb() -> Iterator[MariaDB]:
    """A MariaDB of this test's own, so stopping it disturbs no other test."""
    with MariaDB() as m:
        yield m


def postmap(key: str, table: str) -> tuple[int, str, str]:
    r = run(["postmap", "-q", key, table], check=False)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


@pytest.mark.parametrize("cache", ["", "ttl = 1\nnegative_ttl = 1"], ids=["fresh", "stale"])
def test_restart_while_the_database_is_down(
    own_mariadb: MariaDB, tmp_path: Path, cache: str
) -> None:
    db = seed.load_seed(own_mariadb)
    sm, mp = free_port(), free_port()
    snapshot = tmp_path / "state" / "cache.snapshot"
    snapshot.parent.mkdir(mode=0o700)
    cfg = config_text(
        db_port=own_mariadb.port,
        dbname=db.dbname,
        user=db.user,
        password=db.password,
        socketmap_port=sm,
        metrics_port=mp,
        cache=cache,
        snapshot=str(snapshot),
    )
    mailboxes = f"socketmap:inet:127.0.0.1:{sm}:mailboxes"
    v = Vmaild(cfg, tmp_path)
    v.start()
    try:
        for key, value in KNOWN.items():
            assert postmap(key, mailboxes) == (0, value, "")
        assert postmap("nobody@raecoo.com", mailboxes) == (1, "", "")  # a cached not-found
        assert v.stop() == 0
        assert snapshot.stat().st_mode & 0o777 == 0o600

        own_mariadb.stop()
        v.start()
        assert "cache snapshot: 3 of 3 entries restored" in v.log()
        if cache:
            time.sleep(1.1)  # every restored entry is past its ttl of 1 s now
        for key, value in KNOWN.items():
            assert postmap(key, mailboxes) == (0, value, ""), key
        # Not found 2 s before: still so within negative_ttl (10 s), as if vmaild had never
        # stopped; once expired, never served stale for mailboxes.
        if not cache:
            assert postmap("nobody@raecoo.com", mailboxes) == (1, "", "")
        unknown = ["bob@example.test"] + (["nobody@raecoo.com"] if cache else [])
        # Unknown, or an expired not-found: a temporary error, so Postfix defers instead of
        # bouncing.
        for key in unknown:
            rc, out, err = postmap(key, mailboxes)
            assert rc == 1 and out == "" and "query error" in err, (key, err)
        outcome = "stale" if cache else "hit"
        text = v.metrics_text(mp)
        assert f'vmaild_lookups_total{{map="mailboxes",outcome="{outcome}"}} 2.0' in text
        assert v.stop() == 0
    finally:
        v.stop()


def test_without_a_snapshot_a_restart_defers_every_mailbox(
    own_mariadb: MariaDB, tmp_path: Path
) -> None:
    """What the snapshot is for: the same restart with snapshots off (the harness's default)."""
    db = seed.load_seed(own_mariadb)
    sm = free_port()
    cfg = config_text(
        db_port=own_mariadb.port,
        dbname=db.dbname,
        user=db.user,
        password=db.password,
        socketmap_port=sm,
    )
    mailboxes = f"socketmap:inet:127.0.0.1:{sm}:mailboxes"
    with Vmaild(cfg, tmp_path) as v:
        assert postmap("sales@raecoo.com", mailboxes)[0] == 0
        v.stop()
        own_mariadb.stop()
        v.start()
        rc, _, err = postmap("sales@raecoo.com", mailboxes)
        assert rc == 1 and "query error" in err
