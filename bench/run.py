"""``make bench``: run every bench/bench_*.py, each in its own process, and sum up.

Order: lookup, auth, policy, then any others alphabetically. A benchmark that fails does
not stop the others; the summary names it and the exit status is 1. Every benchmark has the
same shape (bench/common.py): the same options, a report ending in its targets as met / not
met (a target not met is not a failure), and bench/results/NAME-<timestamp>.json.

    python -m bench.run                 # everything
    python -m bench.run --quick         # smaller data and shorter runs (VMAILD_BENCH_QUICK=1)
    python -m bench.run lookup 'pol*'   # only these (names or shell patterns)
    python -m bench.run --list
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
FIRST = ("lookup", "auth", "policy")


def discover() -> list[str]:
    names = [p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py")]
    return sorted(names, key=lambda n: (FIRST.index(n) if n in FIRST else len(FIRST), n))


def select(names: list[str], patterns: list[str]) -> list[str]:
    if not patterns:
        return names
    unknown = [p for p in patterns if not fnmatch.filter(names, p)]
    if unknown:
        raise SystemExit(
            f"bench.run: no benchmark matches {', '.join(unknown)} (there are: {', '.join(names)})"
        )
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="benchmarks to run, e.g. lookup (shell patterns allowed)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smaller data and shorter runs; also set by VMAILD_BENCH_QUICK=1",
    )
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = p.parse_args(argv)

    names = select(discover(), args.names)
    if args.list:
        print("\n".join(names))
        return 0
    quick = args.quick or os.environ.get("VMAILD_BENCH_QUICK") == "1"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if quick:
        env["VMAILD_BENCH_QUICK"] = "1"

    outcome: list[tuple[str, int, float]] = []
    for name in names:
        print(f"\n===== bench {name}{' (quick)' if quick else ''} =====", flush=True)
        cmd = [sys.executable, "-m", f"bench.bench_{name}"] + (["--quick"] if quick else [])
        started = time.monotonic()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
        except KeyboardInterrupt:
            print(f"\nbench.run: interrupted during {name}", file=sys.stderr)
            return 130
        outcome.append((name, rc, time.monotonic() - started))

    print("\n===== summary =====")
    for name, rc, seconds in outcome:
        print(f"  {name:<12} {'ok' if rc == 0 else f'FAILED (exit {rc})':<16} {seconds:7.1f} s")
    failed = [name for name, rc, _ in outcome if rc != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
