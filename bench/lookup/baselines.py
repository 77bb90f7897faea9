"""The two outside clients vmaild is measured against, on the same data in the same run.

- part 4: ``mariadb-slap``, MariaDB's own C client, sending the mailboxes map's SELECT
  straight to the server (the rate vmaild's cached answers are compared with);
- part 3: ``postmap -q -`` over every key, through Postfix's own ``mysql:`` table and
  through vmaild's tcp: and socketmap: maps with a cold and a warm cache.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

from harness.mariadb.server import MariaDB
from harness.stack import seed

from ..cpu import machine_busy_seconds, proc_cpu_seconds
from .common import (
    DBNAME,
    DBPASSWORD,
    DBUSER,
    DOMAIN,
    MAP,
    SLAP_PASSWORD,
    SLAP_USER,
    children_cpu_seconds,
    log,
    postmap_pass,
)
from .servers import Instance

# -- part 4: mariadb-slap ------------------------------------------------------------------------


class Slap:
    """mariadb-slap against the benchmark database. ``figures`` is what the results hold
    under "slap": the binary's name, the median run per concurrency (filled in by the
    caller), and "error" once a run failed."""

    def __init__(self, binary: str, db: MariaDB, tmp: Path, emails: list[str], duration: float):
        self.binary = binary
        self.db = db
        self.emails = emails
        self.duration = duration
        # The same statement vmaild sends for the mailboxes map, each key inlined (neither
        # side uses prepared statements), one connection per concurrent client.
        sql = seed.cf_logical_value(seed.SEED_QUERIES[MAP])
        self.query_file = tmp / "slap-queries.sql"
        self.query_file.write_text(";\n".join(sql.replace("%s", e) for e in emails))
        self.figures: dict[Any, Any] = {"binary": os.path.basename(binary)}

    def calibrate(self, conns: int) -> int:
        """Queries for one run of about ``duration`` seconds, from a short trial run;
        0 when mariadb-slap cannot run."""
        if "error" in self.figures:
            return 0
        trial = self.guarded(conns, conns * 300)
        if trial is None:
            return 0
        return max(conns, int(trial["qps"] * self.duration) // conns * conns)

    def guarded(self, conns: int, total: int) -> dict[str, Any] | None:
        """once(), with a failure recorded in ``figures`` instead of raised: vmaild's own
        figures are still worth reporting."""
        if "error" in self.figures:
            return None
        try:
            return self.once(conns, total)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            self.figures["error"] = f"{type(e).__name__}: {e}"
            return None

    def once(self, conns: int, total: int) -> dict[str, Any]:
        """One mariadb-slap run: ``total`` queries shared by ``conns`` clients, over TCP."""
        assert self.db.pid is not None
        cmd = [
            self.binary,
            "--no-defaults",
            "--protocol=tcp",
            "--host=127.0.0.1",
            f"--port={self.db.port}",
            f"--user={SLAP_USER}",
            f"--password={SLAP_PASSWORD}",
            "--skip-ssl",
            f"--create-schema={DBNAME}",
            "--no-drop",
            f"--query={self.query_file}",
            "--delimiter=;",
            f"--concurrency={conns}",
            "--iterations=1",
            f"--number-of-queries={total}",
        ]
        busy0, db0 = machine_busy_seconds(), proc_cpu_seconds(self.db.pid)
        kids0, wall0 = children_cpu_seconds(), time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        wall = time.perf_counter() - wall0
        slap_cpu = (children_cpu_seconds() - kids0) / wall
        db_cpu = (proc_cpu_seconds(self.db.pid) - db0) / wall
        other = (machine_busy_seconds() - busy0) / wall - slap_cpu - db_cpu
        text = p.stdout + p.stderr
        # "Average number of seconds to run all queries" is the time all clients took
        # together (connecting excluded); clients x queries per client is what they ran.
        avg = re.search(r"Average number of seconds to run all queries: ([\d.]+)", text)
        clients = re.search(r"Number of clients running queries: (\d+)", text)
        per_client = re.search(r"Average number of queries per client: (\d+)", text)
        if p.returncode != 0 or not (avg and clients and per_client):
            raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({p.returncode}): {text}")
        queries = int(clients.group(1)) * int(per_client.group(1))
        seconds = float(avg.group(1))
        return {
            "queries": queries,
            "seconds": seconds,
            "qps": queries / seconds if seconds else 0.0,
            "mariadbd_cpu": db_cpu,
            "slap_cpu": slap_cpu,
            "other_cpu": max(0.0, other),
        }

    def check_database(self) -> None:
        """Record an error if the runs changed the users table (they must only read)."""
        rows = self.db.query("SELECT COUNT(*) FROM users", database=DBNAME)
        if rows[0][0] != len(self.emails):
            self.figures["error"] = "the benchmark database changed under mariadb-slap"


# -- part 3: postmap -q - ------------------------------------------------------------------------


def postmap_tables(
    db: MariaDB, inst: Instance, tmp: Path, keyfile: Path, emails: list[str], runs: int
) -> dict[str, Any]:
    """Best wall time of ``runs`` ``postmap -q -`` passes over every key, for each table;
    every answer is checked. Cold runs come after a SIGHUP emptied vmaild's cache."""
    cf = seed.write_mysql_cf(tmp / "cf", db, DBNAME, DBUSER, DBPASSWORD)
    expected = {e: f"{DOMAIN}/{e.split('@')[0]}/" for e in emails}
    tables = {
        "mysql": f"mysql:{cf[MAP]}",
        "tcp": f"tcp:127.0.0.1:{inst.tcp_port}",
        "socketmap": f"socketmap:inet:127.0.0.1:{inst.socketmap_port}:{MAP}",
    }

    def timed(table: str) -> float:
        return postmap_pass(table, keyfile, expected)

    out: dict[str, Any] = {"keys": len(emails)}
    steps = [
        ("mysql", "mysql", None),
        ("tcp_cold", "tcp", True),
        ("tcp_warm", "tcp", False),
        ("socketmap_cold", "socketmap", True),
        ("socketmap_warm", "socketmap", False),
    ]
    for label, kind, cold in steps:
        times = []
        for _ in range(runs):
            if cold:
                inst.vm.reload()  # SIGHUP flushes the cache
                if inst.cache_entries() != 0:
                    raise RuntimeError("cache not empty after SIGHUP")
            elif cold is False and inst.cache_entries() != len(emails):
                timed(tables[kind])  # make sure every key is cached
            times.append(timed(tables[kind]))
        out[label] = {"seconds": min(times), "runs": [round(t, 3) for t in times]}
        log(f"  postmap {label}: best {min(times):.3f} s of {len(times)}")
    return out
