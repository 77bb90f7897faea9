"""Session settings vmaild puts on its database connections, on a real MariaDB.

``[database] wsrep_sync_wait`` (Galera's causal reads, README "Galera") is set on every
connection vmaild opens; Debian's MariaDB knows the variable even outside a cluster, so the
setting can be checked here without one.
"""

from __future__ import annotations

import asyncio
import uuid

from harness.mariadb.server import MariaDB
from vmaild import config
from vmaild.db import Database


def session_value(mariadb: MariaDB, extra: str) -> object:
    name = f"sess_{uuid.uuid4().hex[:8]}"
    mariadb.create_database(name, "sess", "sess-pw")
    try:
        cfg = config.parse(
            f"[database]\nhosts = 127.0.0.1:{mariadb.port}\nuser = sess\npassword = sess-pw\n"
            f"dbname = {name}\n{extra}"
        )
        db = Database(cfg.database)
        try:
            rows = asyncio.run(db.fetch("SELECT @@SESSION.wsrep_sync_wait"))
        finally:
            db.close()
        return rows[0][0]
    finally:
        mariadb.drop_database(name)


def test_wsrep_sync_wait_is_set_on_every_connection(mariadb: MariaDB) -> None:
    assert session_value(mariadb, "") == 0  # the server's default, untouched
    assert session_value(mariadb, "wsrep_sync_wait = 1\n") == 1
