"""Benchmark: warm restarts (README, "Warm restarts"): ``postmap -q -`` over 10,000 keys right
after vmaild restarted, against the same pass with a warm cache, in the same run.

One private MariaDB with 10,000 users (the seed's schema and mailboxes query, as the lookup
benchmark sets it up: bench/lookup/servers.py), one vmaild with that map on a tcp: port and
``[cache] snapshot`` in the run's directory. Each pass is ``postmap -q - tcp:...`` over every
key (Postfix's own client, one connection), every answer checked:

1. cold: the first pass after the first start (empty cache: every key a database query);
2. warm: a pass with every key cached;
3. restarted: vmaild stopped (it writes the snapshot) and started (it reads it back before
   READY=1), then the pass at once.

Warm and restarted alternate (5 rounds, 2 with --quick; the best of each, as the lookup
benchmark takes its postmap times: other work on a shared machine only ever adds). Also
reported: how long the stop and the start took (medians), the snapshot's size. Target:
restarted at most 1.2 times warm.
Output, results file and exit status as every benchmark's (bench/common.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Outcome, Target, logger
from bench.common import main as bench_main
from harness.common.ports import free_port
from harness.vmaild.server import Vmaild

from .bench_lookup import work_root
from .lookup.common import DBNAME, DOMAIN, MAP, address, postmap_pass
from .lookup.servers import create_slap_user, seed_users, start_mariadb, vmaild_config

NAME = "restart"
USERS = 10_000
TARGET_RATIO = 1.2
log = logger(NAME)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, help="warm / restarted rounds (default 5, quick 2)")


def measure(tmp: Path, rounds: int) -> dict[str, Any]:
    db = start_mariadb(tmp)
    try:
        emails = [address(i, 5) for i in range(USERS)]
        create_slap_user(db)  # seed_users grants it SELECT
        seed_users(db, DBNAME, emails)
        keyfile = tmp / "keys"
        keyfile.write_text("".join(f"{e}\n" for e in emails))
        expected = {e: f"{DOMAIN}/{e.split('@')[0]}/" for e in emails}
        (tmp / "state").mkdir(mode=0o700)
        snapshot = tmp / "state" / "cache.snapshot"
        port = free_port()
        text = vmaild_config(
            db,
            DBNAME,
            tcp_port=port,
            socketmap_port=free_port(),
            metrics_port=free_port(),
            cache="",
        )
        if "snapshot = \n" not in text:
            raise RuntimeError("harness config_text changed: no empty 'snapshot =' line")
        # info: the one "entries restored" line per start, for the report
        text = text.replace("snapshot = \n", f"snapshot = {snapshot}\n")
        vm = Vmaild(text.replace("level = warning", "level = info"), tmp / "vmaild")
        table = f"tcp:127.0.0.1:{port}"
        vm.start()
        try:
            cold = postmap_pass(table, keyfile, expected)
            log(f"cold: {cold:.3f} s")
            warm, restarted, stops, starts = [], [], [], []
            for n in range(rounds):
                warm.append(postmap_pass(table, keyfile, expected))
                started = time.perf_counter()
                if vm.stop() != 0:
                    raise RuntimeError(f"vmaild exited non-zero:\n{vm.log()[-2000:]}")
                stops.append(time.perf_counter() - started)
                started = time.perf_counter()
                vm.start()
                starts.append(time.perf_counter() - started)
                restarted.append(postmap_pass(table, keyfile, expected))
                log(f"round {n + 1}: warm {warm[-1]:.3f} s, restarted {restarted[-1]:.3f} s")
            restored = [line for line in vm.log().splitlines() if "entries restored" in line]
        finally:
            vm.stop()
        return {
            "keys": USERS,
            "cold_seconds": cold,
            "warm_seconds": min(warm),
            "restarted_seconds": min(restarted),
            "warm_runs": [round(t, 3) for t in warm],
            "restarted_runs": [round(t, 3) for t in restarted],
            "stop_seconds": statistics.median(stops),
            "start_seconds": statistics.median(starts),
            "snapshot_bytes": snapshot.stat().st_size if snapshot.exists() else None,
            "restored_log": restored[-1].split("vmaild ", 1)[-1] if restored else None,
        }
    finally:
        db.stop()


def report(f: dict[str, Any]) -> str:
    warm = f["warm_seconds"]
    rows = [
        ("cold (first start, empty cache)", f["cold_seconds"]),
        ("warm (every key cached), best", warm),
        ("right after a restart (snapshot), best", f["restarted_seconds"]),
    ]
    lines = [f"postmap -q - over {f['keys']:,} keys, tcp:{MAP}", ""]
    lines += [f"  {label:<40} {s:7.3f} s  {s / warm:5.2f}x warm" for label, s in rows]
    lines += [
        f"  runs: warm {f['warm_runs']}, restarted {f['restarted_runs']}",
        "",
        f"  stop (writes the snapshot)  {f['stop_seconds']:.3f} s; "
        f"start (reads it, to READY=1) {f['start_seconds']:.3f} s",
        f"  snapshot: {f['snapshot_bytes']} bytes; {f['restored_log']}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace, quick: bool) -> Outcome:
    if shutil.which("postmap") is None:
        return Outcome({}, "", failures=["postmap not found (scripts/install-deps.sh)"])
    rounds = args.rounds or (2 if quick else 5)
    tmp = Path(tempfile.mkdtemp(prefix="bench-restart-", dir=work_root()))
    os.chmod(tmp, 0o755)  # MariaDB runs as mysql
    try:
        figures = measure(tmp, rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = figures["restarted_seconds"] / figures["warm_seconds"]
    figures["restarted_vs_warm"] = round(ratio, 3)
    target = Target(
        f"10k keys right after a restart at most {TARGET_RATIO}x the warm time",
        ratio <= TARGET_RATIO,
        f"{ratio:.2f}x ({figures['restarted_seconds']:.3f} s vs {figures['warm_seconds']:.3f} s)",
    )
    return Outcome(figures, report(figures), targets=[target], meta={"rounds": rounds})


def main(argv: list[str] | None = None) -> int:
    return bench_main(NAME, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
