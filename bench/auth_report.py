"""bench_auth's summary and report: medians over rounds, ratios, targets, CPU table."""

from __future__ import annotations

import os
import statistics
from typing import Any

from bench.common import Target

PHASES = ("first", "repeated", "direct", "authmysql")
CPU_ROLES = ("clients", "authdaemond", "relay", "vmaild", "mariadb")


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per hash set: each phase's median rate and median CPU per login over the rounds, and
    each ratio to authmysql as the median of the per-round ratios (pairs measured minutes
    apart compare a drifting machine's speed as much as the contenders)."""
    sets: dict[str, Any] = {}
    for name in rounds[0]:
        per_round = [r[name] for r in rounds]
        entry: dict[str, Any] = {"users": per_round[0]["users"]}
        for phase in PHASES:
            runs = [r[phase] for r in per_round]
            roles = {role for run in runs for role in run["cpu_us_per_login"]}
            entry[phase] = {
                "rate": statistics.median(run["rate"] for run in runs),
                "rates": [round(run["rate"], 1) for run in runs],
                "cpu_us_per_login": {
                    role: round(
                        statistics.median(run["cpu_us_per_login"].get(role, 0) for run in runs)
                    )
                    for role in roles
                },
            }
        for phase in ("first", "repeated"):
            entry[f"{phase}_vs_authmysql"] = statistics.median(
                r[phase]["rate"] / r["authmysql"]["rate"] for r in per_round
            )
        sets[name] = entry
    return {"sets": sets, "rounds": rounds}


def report(res: dict[str, Any], meta: dict[str, Any], quick: bool) -> str:
    lines = [
        "",
        f"vmaild auth benchmark -- {'QUICK' if quick else 'full'} mode, "
        f"{os.cpu_count()} CPUs, {meta['clients']} client processes, authdaemond "
        f"daemons={meta['daemons']}, {meta['rounds']} round(s), medians",
        f"load average at start: {meta['loadavg_start']:.2f}"
        + (
            "  << busy machine: figures are depressed and noisy"
            if meta["loadavg_start"] > 1.0
            else ""
        ),
        "",
        f"  {'hash set':<22} {'users':>5} {'authmysql/s':>11} {'vmaild first/s':>14} "
        f"{'first vs':>8} {'repeated/s':>10} {'repeat vs':>9} {'direct/s':>9}",
    ]
    for name, s in res["sets"].items():
        base = s["authmysql"]["rate"]
        first, rep = s["first"]["rate"], s["repeated"]["rate"]
        lines.append(
            f"  {name:<22} {s['users']:>5} {base:>11.0f} {first:>14.0f} "
            f"{s['first_vs_authmysql']:>7.2f}x {rep:>10.0f} "
            f"{s['repeated_vs_authmysql']:>8.2f}x {s['direct']['rate']:>9.0f}"
        )
    lines += [
        "",
        "  'vs' = vmaild / authmysql, the median of the rounds' ratios (same users, "
        "hashes, authdaemond, clients);",
        "  'direct' = repeated logins sent straight to vmaild's [auth] socket (no "
        "authdaemond, no relay).",
        "",
        cpu_table(res),
    ]
    return "\n".join(lines)


def cpu_table(res: dict[str, Any]) -> str:
    """CPU microseconds per login by process, from /proc (bench/cpu.py): where the time
    goes. On this many CPUs, a contender's rate is bounded by CPUs / its total."""
    lines = [
        "CPU per login, microseconds (bench/cpu.py; this machine's CPUs divided by a "
        "total bound its rate):",
        f"  {'hash set':<22} {'phase':<10}"
        + "".join(f"{r:>12}" for r in CPU_ROLES)
        + f"{'total':>8}",
    ]
    for name, s in res["sets"].items():
        for phase in ("first", "repeated", "authmysql"):
            us = s[phase].get("cpu_us_per_login", {})
            lines.append(
                f"  {name:<22} {phase:<10}"
                + "".join(f"{us.get(r, 0):>12}" for r in CPU_ROLES)
                + f"{sum(us.values()):>8}"
            )
    return "\n".join(lines)


def targets(res: dict[str, Any]) -> list[Target]:
    out = []
    for name, s in res["sets"].items():
        rep, first = s["repeated_vs_authmysql"], s["first_vs_authmysql"]
        out.append(
            Target(f"repeated logins faster than authmysql ({name})", rep > 1.0, f"{rep:.2f}x")
        )
        out.append(
            Target(f"first logins within 10% of authmysql ({name})", first >= 0.9, f"{first:.2f}x")
        )
    return out
