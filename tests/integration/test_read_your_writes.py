"""Read-your-writes on a lagging replica: vmaild reads from a GTID replica whose SQL thread
is stopped; vmailctl creates a mailbox on the primary and notifies it with the commit's
GTID. Until the replica applies it, the new mailbox gets a temporary failure (Postfix
defers), never "not found"; existing mailboxes keep their answers; once the replica
catches up the new mailbox is found, and no whole-cache flush happened.

The replication here is the smallest that shows it (one primary, one replica, set up in
this file); the full topology with fault injection is the replication harness's.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.common.ports import free_port
from harness.common.wait import wait_until
from harness.mariadb.server import MariaDB
from harness.stack import seed
from harness.vmaild.server import Vmaild, config_text
from vmaild.ctl.daemon import socketmap_query
from vmaild.values import parse_listen

pytestmark = pytest.mark.integration

VMAILCTL = str(Path(sys.executable).parent / "vmailctl")
COMMON = ["--log-bin=binlog", "--log-bin-trust-function-creators=1", "--binlog-format=MIXED"]


@pytest.fixture
def primary_and_replica() -> Iterator[tuple[MariaDB, MariaDB]]:
    with (
        MariaDB(extra_args=[*COMMON, "--server-id=1"]) as primary,
        MariaDB(extra_args=[*COMMON, "--server-id=2"]) as replica,
    ):
        primary.query("CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-pw'")
        primary.query("GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'")
        replica.query(
            "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = %s, "
            "MASTER_USER = 'repl', MASTER_PASSWORD = 'repl-pw', MASTER_USE_GTID = slave_pos",
            (primary.port,),
        )
        replica.query("START SLAVE")
        yield primary, replica


def caught_up(primary: MariaDB, replica: MariaDB) -> None:
    position = primary.query("SELECT @@gtid_binlog_pos")[0][0]
    assert replica.query("SELECT MASTER_GTID_WAIT(%s, 30)", (position,))[0][0] == 0


def test_a_mailbox_created_on_the_primary_is_never_not_found_on_a_lagging_host(
    primary_and_replica: tuple[MariaDB, MariaDB], tmp_path: Path
) -> None:
    primary, replica = primary_and_replica
    db = seed.load_seed(primary, "mail_system")
    sm, mp = free_port(), free_port()
    control = tmp_path / "control.sock"

    def conf(server: MariaDB) -> str:
        return config_text(
            db_port=server.port,
            dbname=db.dbname,
            user=db.user,
            password=db.password,
            socketmap_port=sm,
            metrics_port=mp,
            control_path=str(control),
            cache="check_interval = 0.2\ngtid_wait = 1\nttl = 3600\nnegative_ttl = 3600\n",
            extra=f"[mailbox]\nbase = {tmp_path / 'vmail'}\nuid = 5000\ngid = 5000\n",
        )

    ctl_conf = tmp_path / "vmailctl.conf"  # vmailctl writes to the primary
    ctl_conf.write_text(conf(primary))

    def vmailctl(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [VMAILCTL, "-c", str(ctl_conf), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done

    vmailctl("db", "migrate")
    caught_up(primary, replica)
    v = Vmaild(conf(replica), tmp_path / "host")  # the mail host reads the replica
    v.start()
    socketmap = parse_listen(f"127.0.0.1:{sm}")
    try:
        assert socketmap_query(socketmap, "mailboxes", "new@raecoo.com") == ("NOTFOUND", "")
        assert socketmap_query(socketmap, "mailboxes", "sales@raecoo.com")[0] == "OK"

        replica.query("STOP SLAVE SQL_THREAD")  # the replica lags from here on
        done = vmailctl("user", "add", "new@raecoo.com", "--password-stdin", stdin="pw-12345\n")
        assert "has not applied this change within 1s" in done.stderr
        for _ in range(3):
            status, _ = socketmap_query(socketmap, "mailboxes", "new@raecoo.com")
            assert status == "TEMP"  # 4xx: Postfix defers, never "user unknown"
            assert socketmap_query(socketmap, "mailboxes", "sales@raecoo.com")[0] == "OK"
        assert "GTID 0-1-" in v.log() and "not applied within 1s" in v.log()

        replica.query("START SLAVE SQL_THREAD")
        wait_until(
            lambda: socketmap_query(socketmap, "mailboxes", "new@raecoo.com")[0] == "OK",
            30,
            "the new mailbox found once the replica caught up",
        )
        metrics = v.metrics_text(mp)
        assert 'vmaild_cache_flushes_total{reason="change"}' not in metrics
        assert 'vmaild_cache_flushes_total{reason="control"}' not in metrics
        assert "vmaild_changes_pending 0.0" in metrics
    finally:
        v.stop()
