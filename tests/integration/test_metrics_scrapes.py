"""``/metrics`` under 200 parallel scrapers must not slow the lookups down (issue 12,
finding 6: with a thread per scrape the cached lookups' p50 went from 0.13 to 4.5 ms), and
what it serves is still valid Prometheus text.

The scrapers run in a process of their own (a Python client in this process would slow the
measuring client down through the GIL); the lookups are timed here, one persistent tcp:
connection, one request at a time as Postfix sends them. The bounds are generous: relative
to the same run's idle p90 (p50 moved little even with a thread per scrape here, p90 20-fold),
and vmaild's CPU time per scrape answered (rendering per scrape costs 10 times more).
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.common.ports import free_port
from harness.stack import seed
from harness.vmaild.server import Vmaild, config_text

pytestmark = pytest.mark.integration

SCRAPERS = 200
SECONDS = 6
SCRAPER = r"""
import asyncio, sys
port, clients, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
done = 0
async def client(deadline):
    global done
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
            w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
            if (await asyncio.wait_for(r.read(), 2)).split(b" ", 2)[1:2] == [b"200"]:
                done += 1
            w.close()
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.01)
async def main():
    deadline = asyncio.get_running_loop().time() + seconds
    await asyncio.gather(*(client(deadline) for _ in range(clients)))
    print(done)
asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (proc(5): utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lookup_p90(port: int, key: bytes, n: int) -> float:
    """The 90th percentile, in seconds, of ``n`` sequential lookups on one connection."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        s.sendall(b"get " + key + b"\n")
        assert s.recv(200).startswith(b"200 ")
        times.append(time.perf_counter() - started)
    s.close()
    return statistics.quantiles(times, n=10)[-1]


def test_parallel_scrapes_leave_lookups_fast(
    module_seed_db: seed.SeedDatabase, tmp_path: Path
) -> None:
    tcp, mp = free_port(), free_port()
    cfg = config_text(
        db_port=module_seed_db.mariadb.port,
        dbname=module_seed_db.dbname,
        user=module_seed_db.user,
        password=module_seed_db.password,
        ports={"mailboxes": tcp},
        metrics_port=mp,
    ).replace("level = debug", "level = warning")
    with Vmaild(cfg, tmp_path) as v:
        assert v.proc is not None
        key = b"sales@raecoo.com"
        lookup_p90(tcp, key, 50)  # cached from now on
        idle = lookup_p90(tcp, key, 1000)
        cpu_before = cpu_seconds(v.proc.pid)
        scrapers = subprocess.Popen(
            [sys.executable, "-c", SCRAPER, str(mp), str(SCRAPERS), str(SECONDS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.5)  # every scraper connected and looping
            loaded = lookup_p90(tcp, key, 1000)
            out, _ = scrapers.communicate(timeout=30)
        finally:
            scrapers.kill()
        scrapes = int(out.strip())
        per_scrape = (cpu_seconds(v.proc.pid) - cpu_before) / max(scrapes, 1)
        print(f"lookup p90 idle {idle * 1e3:.3f} ms, under {SCRAPERS} scrapers "
              f"{loaded * 1e3:.3f} ms; {scrapes} scrapes, {per_scrape * 1e3:.3f} ms "
              "of vmaild's CPU each")  # fmt: skip
        # A thread per scrape, each rendering: p90 0.05 -> 1.0 ms, 1.4 ms of CPU per scrape
        # (3,100 scrapes in 6 s). Served from the loop: p90 0.03 -> 0.04 ms, 0.13 ms
        # (13,700 scrapes).
        assert scrapes > SCRAPERS  # they were answered, not shut out
        assert loaded < max(5 * idle, 0.0005), (idle, loaded)
        assert per_scrape < 0.0005

        with urllib.request.urlopen(f"http://127.0.0.1:{mp}/metrics", timeout=5) as r:
            text = r.read().decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"vmaild_lookups", "vmaild_lookup_seconds", "vmaild_db_up"} <= names
        assert v.proc.poll() is None
