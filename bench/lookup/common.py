"""Names, sizes and the run plan of the lookup benchmark, and the readings every part
takes: CPU time and memory from /proc, figures from vmaild's /metrics."""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import logger

DOMAIN = "bench.test"
DBNAME = "vmaild_bench"
RSS_DBNAME = "vmaild_bench_rss"
DBUSER, DBPASSWORD = "bench", "bench-pw"
SLAP_USER, SLAP_PASSWORD = "bench_ro", "bench-ro-pw"  # SELECT only: slap cannot drop anything
# A 13-character DES crypt like ENCRYPT() stores; calling ENCRYPT() for a million rows
# would only slow the set-up down, and the lookups never read the password.
PASSWORD_HASH = "abJnggxhB/yWI"
MAP = "mailboxes"  # the seed's mailboxes query, the one virtual_mailbox_maps uses
POOL_SIZE = 8  # the daemon's default [database] pool_size (the harness uses 4)
CONCURRENCY = (1, 16, 64)
RSS_TARGET_MB = 300


class Plan:
    """Sizes and durations; --quick shrinks them."""

    def __init__(self, quick: bool, args: argparse.Namespace):
        self.quick = quick
        self.users = 10_000
        self.duration = args.duration or (2.0 if quick else 5.0)
        self.repeats = 1 if quick else 3
        self.postmap_runs = 1 if quick else 3
        self.rss_keys = args.rss_keys or (100_000 if quick else 1_000_000)


log = logger("lookup")


def address(i: int, width: int, prefix: str = "u") -> str:
    return f"{prefix}{i:0{width}d}@{DOMAIN}"


def interleave(many: list[str], few: list[str]) -> list[str]:
    """``many`` with ``few`` spread evenly among them."""
    if not few:
        return list(many)
    step = len(many) / len(few)
    out: list[str] = []
    for i, key in enumerate(few):
        out += many[round(i * step) : round((i + 1) * step)]
        out.append(key)
    return out


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key``, plus every run's figure."""
    best = sorted(runs, key=lambda r: r[key])[len(runs) // 2]
    return dict(best, runs=[round(r[key]) for r in runs])


# -- readings ------------------------------------------------------------------------------------


def loadavg() -> float:
    """The 1-minute load average (runnable processes; this benchmark itself adds about 2)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def postmap_pass(table: str, keyfile: Path, expected: dict[str, str]) -> float:
    """Seconds for one ``postmap -q -`` pass over every key in ``keyfile``; the answers must
    be exactly ``expected`` (key -> value), else RuntimeError."""
    with open(keyfile, "rb") as keys:
        started = time.perf_counter()
        p = subprocess.run(
            ["postmap", "-q", "-", table],
            stdin=keys,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        seconds = time.perf_counter() - started
    got = dict(line.split(None, 1) for line in p.stdout.splitlines() if line.strip())
    got = {k: v.strip() for k, v in got.items()}
    if got != expected:
        wrong = len([k for k in expected if got.get(k) != expected[k]])
        raise RuntimeError(
            f"postmap {table}: {wrong} of {len(expected)} keys wrong "
            f"(exit {p.returncode}): {p.stderr.strip()[:500]}"
        )
    return seconds
