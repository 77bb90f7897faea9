"""Benchmark: vmaild's Postfix lookups against MariaDB's own C client and Postfix's mysql:.

One run, one machine, one 10,000-address data set (the seed schema,
users u00001@bench.test ... in a fresh database of a private MariaDB), and these figures:

1. cached lookups/s and p50/p99 through the tcp: map (and the socketmap) at 1, 16 and 64
   persistent connections, driven by bench/loadgen.c;
2. the cache-miss path (a second vmaild with ``[cache] max_entries = 0``);
3. ``postmap -q -`` over the 10,000 keys through vmaild's tcp: map (cold and warm cache), its
   socketmap, and Postfix's own ``mysql:`` table (best of 3 wall times);
4. MariaDB's own point-lookup rate with its C client (``mariadb-slap``) at 1, 16 and 64;
5. vmaild's RSS with 1,000,000 cached keys (100,000 with ``--quick``).

It prints a table with ratios against the baselines of the same run, and its targets (cached
lookups at 64 connections at least mariadb-slap's rate there; ``postmap -q -`` through tcp:
faster than through mysql:; under 300 MB RSS with 1,000,000 cached keys) as met / not met.
Output, results file and exit status as every benchmark's (bench/common.py); a part that
fails is recorded and the others still run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.common import Outcome, Target
from bench.common import main as bench_main

# The parts live in bench/lookup/ (see its __init__): common names and readings, the servers,
# the baselines, the runner that drives the load generator, and the report.
from .lookup.common import Plan
from .lookup.report import report, targets, versions
from .lookup.runner import Bench

NAME = "lookup"


def work_root() -> str | None:
    """Where the run's scratch directory goes: $VMAILD_BENCH_TMP, else /var/tmp."""
    root = os.environ.get("VMAILD_BENCH_TMP") or "/var/tmp"
    return root if os.path.isdir(root) and os.access(root, os.W_OK) else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, help="seconds per load run (default 5, quick 2)")
    p.add_argument(
        "--rss-keys", type=int, help="keys for the RSS part (default 1,000,000, quick 100,000)"
    )


def run(args: argparse.Namespace, quick: bool) -> Outcome:
    plan = Plan(quick, args)
    # Not under /tmp: other work on the machine was seen to clean /tmp (and vmaild-* in
    # it) while a run was going on, taking the key files and MariaDB's socket with it.
    tmp = Path(tempfile.mkdtemp(prefix="bench-lookup-", dir=work_root()))
    bench = Bench(plan, tmp)
    try:
        bench.run()
    finally:
        bench.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    figures = bench.results
    meta = dict(versions(), duration=plan.duration, loadavg=bench.loadavgs)
    return Outcome(
        figures,
        report(figures, meta, plan),
        targets=[Target(**t) for t in targets(figures)],
        failures=[f"part {name}" for name in bench.failures],
        meta=meta,
    )


def main(argv: list[str] | None = None) -> int:
    return bench_main(NAME, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
