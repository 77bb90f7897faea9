"""What the lookup benchmark prints: the table with ratios against the same run's baselines,
and its targets evaluated on the run's figures. ``versions`` names the software measured."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any, TypeGuard

from .common import CONCURRENCY, MAP, RSS_TARGET_MB, Plan


def versions() -> dict[str, Any]:
    """Versions of what was measured, and the machine."""

    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(
                cmd, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except OSError:
            return ""

    import vmaild

    return {
        "vmaild": vmaild.__version__,
        "python": platform.python_version(),
        "mariadb": out(["mariadbd", "--version"]),
        "postfix": out(["postconf", "-h", "mail_version"]),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
    }


def ok(r: object) -> TypeGuard[dict[Any, Any]]:
    """A part's results that are there and not an error (keys: names or concurrencies)."""
    return isinstance(r, dict) and "error" not in r


def num(x: float) -> str:
    return f"{x:,.0f}"


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The three targets (``target``, ``met``, ``detail``), evaluated on this run's figures."""
    out = []
    cached, slap, pm, rss = (res.get(k) for k in ("cached", "slap", "postmap", "rss"))
    if ok(cached) and ok(slap):
        mine, theirs = cached["tcp"][64]["rps"], slap[64]["qps"]
        out.append(
            {
                "target": "cached lookups/s at 64 connections >= mariadb-slap at 64",
                "met": mine >= theirs,
                "detail": f"{num(mine)}/s vs {num(theirs)}/s ({mine / theirs:.2f}x)",
            }
        )
    if ok(pm):
        base = pm["mysql"]["seconds"]
        for label in ("tcp_warm", "tcp_cold"):
            t = pm[label]["seconds"]
            note = "" if label == "tcp_warm" else " (cold cache: every key a miss)"
            out.append(
                {
                    "target": f"postmap -q - via tcp: ({label.split('_')[1]} cache) faster "
                    f"than via mysql:{note}",
                    "met": t < base,
                    "detail": f"{t:.2f} s vs {base:.2f} s ({base / t:.2f}x)",
                }
            )
    if ok(rss):
        if rss["keys"] >= 1_000_000:
            out.append(
                {
                    "target": f"RSS < {RSS_TARGET_MB} MB at 1,000,000 cached keys",
                    "met": rss["rss_after_mb"] < RSS_TARGET_MB,
                    "detail": f"{rss['rss_after_mb']:.0f} MB",
                }
            )
        else:
            out.append(
                {
                    "target": f"RSS < {RSS_TARGET_MB} MB at 1,000,000 cached keys",
                    "met": None,
                    "detail": f"not measured: {num(rss['keys'])} keys only "
                    f"(--quick); extrapolated {rss['estimate_1m_mb']:.0f} MB",
                }
            )
    return out


def report(res: dict[str, Any], meta: dict[str, Any], plan: Plan) -> str:
    lines: list[str] = []
    add = lines.append
    setup = res.get("setup", {})
    add("")
    add(
        f"vmaild lookup benchmark -- {'QUICK' if plan.quick else 'full'} mode, {meta['cpus']} "
        f"CPUs, {setup.get('users', 0):,} addresses, map {MAP}"
    )
    add(
        f"load generator: {setup.get('loadgen', '?')}; vmaild {meta['vmaild']}, "
        f"{meta['mariadb'].split(' for ')[0]}, Postfix {meta['postfix']}"
    )
    start_load = meta.get("loadavg", {}).get("start", 0.0)
    add(
        f"load average before starting: {start_load:.2f}"
        + (
            "  << the machine is busy with other work: figures are depressed and noisy"
            if start_load > 1.0
            else ""
        )
        + "; 'other CPU' = cores busy with anything but vmaild "
        "and the load generator during a run"
    )
    slap = res.get("slap")
    slap_at = (lambda c: slap[c]["qps"]) if ok(slap) else (lambda c: None)  # noqa: E731

    def load_table(title: str, rows: dict[Any, Any], conns_list: tuple[int, ...]) -> None:
        add("")
        add(title)
        add(
            f"  {'conns':>5} {'lookups/s':>10} {'p50 us':>7} {'p99 us':>7} {'vmaild CPU':>10} "
            f"{'loadgen CPU':>11} {'other CPU':>9} {'vs slap':>7}  runs (lookups/s)"
        )
        for c in conns_list:
            r = rows[c]
            base = slap_at(c)
            ratio = f"{r['rps'] / base:.2f}x" if base else "-"
            runs = ", ".join(num(x) for x in r.get("runs", []))
            add(
                f"  {c:>5} {num(r['rps']):>10} {r['p50_us']:>7.0f} {r['p99_us']:>7.0f} "
                f"{r['vmaild_cpu']:>10.0%} {r['loadgen_cpu']:>11.0%} {r['other_cpu']:>9.0%} "
                f"{ratio:>7}  {runs}"
            )

    cached = res.get("cached")
    if ok(cached):
        reps = f", median of {plan.repeats}" if plan.repeats > 1 else ""
        load_table(
            f"1. Cached lookups, tcp:{MAP} ({plan.duration:g} s per run{reps}; "
            "vs slap = against mariadb-slap at the same concurrency)",
            cached["tcp"],
            CONCURRENCY,
        )
        load_table(
            f"   Cached lookups, socketmap {MAP} ({plan.duration:g} s, one run)",
            cached["socketmap"],
            CONCURRENCY,
        )
    misses = res.get("misses")
    if ok(misses):
        load_table(
            f"2. Cache-miss path, tcp:{MAP} (second vmaild, [cache] max_entries = 0, "
            f"pool_size = {misses['pool_size']})",
            misses,
            (1, 16),
        )
    pm = res.get("postmap")
    if ok(pm):
        base = pm["mysql"]["seconds"]
        add("")
        add(
            f"3. postmap -q - over {pm['keys']:,} keys (best of {plan.postmap_runs}; "
            "cold = after SIGHUP flushed the cache)"
        )
        add(f"  {'table':<34} {'seconds':>8} {'keys/s':>8} {'vs mysql:':>10}  runs (s)")
        names = {
            "mysql": "mysql: (Postfix's MySQL client)",
            "tcp_cold": "tcp: vmaild, cold cache",
            "tcp_warm": "tcp: vmaild, warm cache",
            "socketmap_cold": "socketmap: vmaild, cold cache",
            "socketmap_warm": "socketmap: vmaild, warm cache",
        }
        for key, name in names.items():
            t = pm[key]["seconds"]
            runs = ", ".join(f"{x:.2f}" for x in pm[key]["runs"])
            add(f"  {name:<34} {t:>8.3f} {num(pm['keys'] / t):>8} {base / t:>9.2f}x  {runs}")
    if ok(slap):
        add("")
        add(
            f"4. MariaDB point lookups, C client ({slap['binary']}), the same SELECT over TCP, "
            f"run alternately with part 1"
        )
        add(
            f"  {'conns':>5} {'queries/s':>10} {'mariadbd CPU':>12} {'slap CPU':>8} "
            f"{'other CPU':>9}  runs (queries/s)"
        )
        for c in CONCURRENCY:
            r = slap[c]
            runs = ", ".join(num(x) for x in r.get("runs", []))
            add(
                f"  {c:>5} {num(r['qps']):>10} {r['mariadbd_cpu']:>12.0%} {r['slap_cpu']:>8.0%} "
                f"{r['other_cpu']:>9.0%}  {runs}"
            )
    rss = res.get("rss")
    if ok(rss):
        add("")
        q = " (--quick: not the 1,000,000 of the target)" if rss["quick"] else ""
        add(f"5. Memory with {rss['keys']:,} cached keys{q}")
        add(
            f"  {num(rss['found'])} found users + {num(rss['notfound'])} unknown addresses, "
            f"filled through tcp:{MAP} at 16 connections in {rss['fill_seconds']} s "
            f"({num(rss['fill_rps'])} misses/s)"
        )
        add(
            f"  VmRSS before {rss['rss_before_mb']:.0f} MB, after the first tenth "
            f"{rss['rss_stage1_mb']:.0f} MB, after all {rss['rss_after_mb']:.0f} MB "
            f"(peak {rss['vmhwm_mb']:.0f} MB); vmaild_cache_entries {num(rss['cache_entries'])}"
        )
        add(
            f"  {rss['bytes_per_entry']:.0f} bytes per entry overall, "
            f"{rss['bytes_per_entry_marginal']:.0f} for the last nine tenths; hit pass "
            f"afterwards {num(rss['hit_pass_rps'])}/s with no database query"
        )
    for name in ("setup", "cached", "misses", "postmap", "slap", "rss"):
        r = res.get(name)
        if isinstance(r, dict) and "error" in r:
            add("")
            add(f"!! {name} FAILED: {r['error']}")
    return "\n".join(lines)
