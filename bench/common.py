"""What every benchmark shares: its command line, what a run returns, and how that is
printed and saved.

A benchmark is a module ``bench/bench_NAME.py`` with

* ``NAME``, its name (what ``python -m bench.run NAME`` selects);
* ``add_arguments(parser)``: its own options (``--quick`` is everyone's, added here);
* ``run(args, quick) -> Outcome``: measure, clean up, and return the figures, the printed
  report, the targets (met / not met / not measured) and the parts that failed;
* ``main(argv=None) -> int``, which is :func:`main` with the three above.

:func:`main` prints the report, then the targets and failures in one format, and writes
``bench/results/NAME-<timestamp>.json``::

    {"benchmark": NAME, "meta": {...}, "figures": {...}, "targets": [...], "failures": [...]}

``meta`` holds what every run records (quick, start time, wall seconds, load average at
the start, CPUs, Python, host) and what the benchmark adds. A benchmark is a report, not a
test: a target that is not met still exits 0; a part that could not run exits 1; an
interrupted run exits 130.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Target:
    """One of a benchmark's targets, evaluated on this run's figures; ``met`` is None when
    the run did not measure it (a --quick run, a part that failed)."""

    target: str
    met: bool | None
    detail: str


@dataclass
class Outcome:
    """What a benchmark's ``run`` returns."""

    figures: dict[str, Any]
    report: str
    targets: list[Target] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, bool], Outcome]


def logger(name: str) -> Callable[[str], None]:
    """Progress lines on stderr, ``[bench NAME HH:MM:SS] message``."""

    def log(msg: str) -> None:
        print(f"[bench {name} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    return log


def quick_requested(args: argparse.Namespace) -> bool:
    return bool(args.quick) or os.environ.get("VMAILD_BENCH_QUICK") == "1"


def main(
    name: str, doc: str | None, add_arguments: AddArguments, run: Run, argv: list[str] | None = None
) -> int:
    """A benchmark's command line: parse, run, print, save; the exit status."""
    p = argparse.ArgumentParser(
        prog=f"python -m bench.bench_{name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smaller data and shorter runs (also VMAILD_BENCH_QUICK=1)",
    )
    add_arguments(p)
    args = p.parse_args(argv)
    quick = quick_requested(args)
    started, loadavg_start = time.time(), os.getloadavg()[0]
    try:
        outcome = run(args, quick)
    except KeyboardInterrupt:
        logger(name)("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - a report: say what broke, save it, exit 1
        traceback.print_exc()
        outcome = Outcome(figures={}, report="", failures=[f"{type(e).__name__}: {e}"])
    meta = {
        "quick": quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 1),
        "loadavg_start": loadavg_start,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "host": platform.node(),
        **outcome.meta,
    }
    print(outcome.report, flush=True)
    print(summary(outcome), flush=True)
    path = save(
        name,
        started,
        {
            "benchmark": name,
            "meta": meta,
            "figures": outcome.figures,
            "targets": [asdict(t) for t in outcome.targets],
            "failures": outcome.failures,
        },
    )
    print(f"\nresults: {path}  ({meta['wall_seconds']} s)")
    if outcome.failures:
        print(f"bench {name}: failed: {'; '.join(outcome.failures)}", file=sys.stderr)
        return 1
    return 0


def summary(outcome: Outcome) -> str:
    """The targets and failures, in the same format for every benchmark."""
    lines = ["", "targets:"]
    if not outcome.targets:
        lines.append("  none: this benchmark reports figures only")
    for t in outcome.targets:
        state = {True: "met", False: "NOT MET", None: "n/a"}[t.met]
        lines.append(f"  [{state:>7}] {t.target}: {t.detail}")
    for failure in outcome.failures:
        lines.append(f"!! FAILED: {failure}")
    return "\n".join(lines)


def save(name: str, started: float, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path
