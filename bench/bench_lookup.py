"""Benchmark: vmaild's Postfix lookups against MariaDB's own C client and Postfix's mysql:.

Issue 2, "Benchmark": one run, one machine, one 10,000-address data set (the seed schema,
users u00001@bench.test ... in a fresh database of a private MariaDB), and these figures:

1. cached lookups/s and p50/p99 through the tcp: map (and the socketmap) at 1, 16 and 64
   persistent connections, driven by bench/loadgen.c;
2. the cache-miss path (a second vmaild with ``[cache] max_entries = 0``);
3. ``postmap -q -`` over the 10,000 keys through vmaild's tcp: map (cold and warm cache), its
   socketmap, and Postfix's own ``mysql:`` table (best of 3 wall times);
4. MariaDB's own point-lookup rate with its C client (``mariadb-slap``) at 1, 16 and 64;
5. vmaild's RSS with 1,000,000 cached keys (100,000 with ``--quick``).

It prints a table with ratios against the baselines of the same run and the issue's targets
as "met / not met", and writes everything to bench/results/lookup-<timestamp>.json. This is
a report, not a test: a target that is not met still exits 0; a benchmark that cannot run
exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# The parts live in bench/lookup/ (see its __init__): common names and readings, the servers,
# the baselines, the runner that drives the load generator, and the report.
from .lookup.common import Plan, log
from .lookup.report import report, targets, versions
from .lookup.runner import Bench

RESULTS = Path(__file__).resolve().parent / "results"


def work_root() -> str | None:
    """Where the run's scratch directory goes: $VMAILD_BENCH_TMP, else /var/tmp."""
    root = os.environ.get("VMAILD_BENCH_TMP") or "/var/tmp"
    return root if os.path.isdir(root) and os.access(root, os.W_OK) else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_lookup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="shorter runs, 100,000 keys for the RSS part (also VMAILD_BENCH_QUICK=1)")
    p.add_argument("--duration", type=float, help="seconds per load run (default 5, quick 2)")
    p.add_argument("--rss-keys", type=int, help="keys for the RSS part (default 1,000,000)")
    args = p.parse_args(argv)
    quick = args.quick or os.environ.get("VMAILD_BENCH_QUICK") == "1"
    plan = Plan(quick, args)
    # Not under /tmp: other work on the machine was seen to clean /tmp (and vmaild-* in
    # it) while a run was going on, taking the key files and MariaDB's socket with it.
    tmp = Path(tempfile.mkdtemp(prefix="bench-lookup-", dir=work_root()))
    bench = Bench(plan, tmp)
    started = time.time()
    try:
        bench.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    res = bench.results
    res["meta"] = dict(versions(), quick=quick, duration=plan.duration,
                       started=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                       wall_seconds=round(time.time() - started, 1))
    res["meta"]["loadavg"] = bench.loadavgs
    res["targets"] = targets(res)
    res["failures"] = bench.failures
    print(report(res, plan), flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"lookup-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.json"
    path.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"\nresults: {path}  ({res['meta']['wall_seconds']} s)")
    if bench.failures:
        print(f"failed parts: {', '.join(bench.failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
