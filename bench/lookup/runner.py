"""The benchmark's parts in order, each driving bench/loadgen.c against a vmaild instance
and noting the CPU that vmaild, the generator and everything else used meanwhile.

``Bench.run`` fills ``Bench.results`` (one entry per part, or ``{"error": ...}`` for a part
that failed; the others still run) and ``Bench.failures``; ``Bench.cleanup`` stops every
server it started.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.mariadb.server import MariaDB

from ..cpu import machine_busy_seconds, proc_cpu_seconds
from ..loadgen import LoadGenerator
from .baselines import Slap, postmap_tables
from .common import (
    CONCURRENCY,
    DBNAME,
    MAP,
    POOL_SIZE,
    RSS_DBNAME,
    Plan,
    address,
    interleave,
    loadavg,
    log,
    median_run,
    metric,
    proc_status_kb,
)
from .servers import Instance, create_slap_user, seed_users, start_mariadb


class Bench:
    def __init__(self, plan: Plan, tmp: Path):
        self.plan = plan
        self.tmp = tmp
        self.results: dict[str, Any] = {}
        self.failures: list[str] = []
        self.db: MariaDB | None = None
        self.gen = LoadGenerator(tmp)
        self.instances: list[Instance] = []
        self.loadavgs: dict[str, float] = {"start": loadavg()}

    def section(self, name: str, fn: Callable[[], Any]) -> None:
        """Run one part; a failure is recorded and the other parts still run."""
        log(f"{name} ... (load average {loadavg():.2f})")
        started = time.perf_counter()
        try:
            self.results[name] = fn()
        except Exception as e:  # noqa: BLE001 - report and carry on with the next part
            traceback.print_exc()
            self.results[name] = {"error": f"{type(e).__name__}: {e}"}
            self.failures.append(name)
        self.loadavgs[name] = loadavg()  # includes this benchmark's own processes
        log(f"{name} done in {time.perf_counter() - started:.1f} s")

    def start_instance(self, dbname: str, name: str, cache: str) -> Instance:
        assert self.db is not None
        inst = Instance(self.db, dbname, self.tmp / name, cache)
        self.instances.append(inst)
        return inst

    def stop_instance(self, inst: Instance) -> None:
        inst.stop()
        self.instances.remove(inst)

    def load(
        self,
        inst: Instance,
        *,
        mode: str,
        conns: int,
        keyfile: Path,
        duration: float | None = None,
        total: int = 0,
    ) -> dict[str, Any]:
        """One loadgen run, with the CPU share vmaild and the generator used meanwhile."""
        port = inst.socketmap_port if mode == "socketmap" else inst.tcp_port
        cpu0, busy0 = proc_cpu_seconds(inst.pid), machine_busy_seconds()
        r = self.gen.run(
            mode=mode,
            port=port,
            conns=conns,
            keyfile=keyfile,
            mapname=MAP,
            duration=duration or self.plan.duration,
            total=total,
        )
        r["vmaild_cpu"] = (proc_cpu_seconds(inst.pid) - cpu0) / r["seconds"]
        r["loadgen_cpu"] = r["cpu_seconds"] / r["seconds"]
        # Everything else that kept a CPU busy meanwhile (MariaDB, other work on the machine):
        # on 2 cores, anything much above 0 takes time from vmaild or the generator.
        busy = (machine_busy_seconds() - busy0) / r["seconds"]
        r["other_cpu"] = max(0.0, busy - r["vmaild_cpu"] - r["loadgen_cpu"])
        return r

    # -- set-up -----------------------------------------------------------------------------

    def setup(self) -> dict[str, Any]:
        missing = MariaDB.missing_requirements()
        for tool in ("postmap",):
            if shutil.which(tool) is None:
                missing.append(tool)
        if missing:
            raise RuntimeError("missing: " + ", ".join(missing) + " (run `make deps`)")
        # mkdtemp makes the base 0700; mariadbd runs as `mysql` and must traverse it.
        os.chmod(self.tmp, 0o755)
        self.db = start_mariadb(self.tmp)
        create_slap_user(self.db)
        self.emails = [address(i, 5) for i in range(1, self.plan.users + 1)]
        insert_s = seed_users(self.db, DBNAME, self.emails)
        self.keyfile = self.tmp / "keys.txt"
        self.keyfile.write_text("\n".join(self.emails) + "\n")
        self.main = self.start_instance(
            DBNAME,
            "vmaild-cached",
            "ttl = 3600\nnegative_ttl = 3600\nmax_entries = 2000000\ncheck_interval = 0",
        )
        return {
            "users": len(self.emails),
            "insert_seconds": round(insert_s, 2),
            "loadgen": self.gen.kind,
            "loadgen_note": self.gen.note,
        }

    # -- 1. cached lookups, and 4. mariadb-slap, interleaved ------------------------------

    def cached(self) -> dict[str, Any]:
        """Warm the cache, then at each concurrency alternate a vmaild run and a
        mariadb-slap run of about the same length, so that other work on the machine hurts
        both sides alike; the medians are compared."""
        warm = self.load(
            self.main,
            mode="tcp",
            conns=16,
            keyfile=self.keyfile,
            duration=600,
            total=len(self.emails),
        )
        entries = self.main.cache_entries()
        if warm["found"] != len(self.emails) or entries != len(self.emails):
            raise RuntimeError(
                f"warm-up: {warm['found']} found, {entries} cache entries, "
                f"{len(self.emails)} wanted"
            )
        slap = self.slap_prepare()
        queries = self.main.db_queries()
        out: dict[str, Any] = {"warmup": warm, "tcp": {}, "socketmap": {}}
        for conns in CONCURRENCY:
            runs: list[dict[str, Any]] = []
            tried: list[dict[str, Any] | None] = []
            total = slap.calibrate(conns) if slap is not None else 0
            for _ in range(self.plan.repeats):
                runs.append(self.cached_run("tcp", conns))
                if total and slap is not None:
                    tried.append(slap.guarded(conns, total))
            out["tcp"][conns] = median_run(runs, "rps")
            slaps = [r for r in tried if r is not None]
            if slap is not None and slaps:
                slap.figures[conns] = median_run(slaps, "qps")
            self.log_pair(
                conns, out["tcp"][conns], slap.figures.get(conns) if slap is not None else None
            )
        for conns in CONCURRENCY:
            out["socketmap"][conns] = r = self.cached_run("socketmap", conns)
            log(
                f"  cached socketmap x{conns}: {r['rps']:,.0f}/s p50 {r['p50_us']} us "
                f"p99 {r['p99_us']} us vmaild CPU {r['vmaild_cpu']:.0%}"
            )
        if slap is not None:
            slap.check_database()
            if "error" in slap.figures and "slap" not in self.failures:
                self.failures.append("slap")
        # Every answer above must have come from the cache.
        out["db_queries_during_runs"] = self.main.db_queries() - queries
        if out["db_queries_during_runs"]:
            raise RuntimeError(
                f"{out['db_queries_during_runs']} database queries during the cached runs"
            )
        return out

    def cached_run(self, mode: str, conns: int) -> dict[str, Any]:
        r = self.load(self.main, mode=mode, conns=conns, keyfile=self.keyfile)
        if r["errors"] or r["notfound"]:
            raise RuntimeError(f"{mode} x{conns}: not all answers were hits: {r}")
        return r

    def log_pair(self, conns: int, mine: dict[str, Any], theirs: dict[str, Any] | None) -> None:
        other = f" | mariadb-slap {theirs['qps']:,.0f}/s" if theirs else ""
        log(
            f"  cached tcp x{conns}: {mine['rps']:,.0f}/s p50 {mine['p50_us']} us "
            f"p99 {mine['p99_us']} us vmaild CPU {mine['vmaild_cpu']:.0%}{other}"
        )

    def slap_prepare(self) -> Slap | None:
        """The mariadb-slap baseline, its figures in results["slap"]; None (and a recorded
        failure) if mariadb-slap is missing."""
        binary = shutil.which("mariadb-slap") or shutil.which("mysqlslap")
        if binary is None:
            self.results["slap"] = {"error": "neither mariadb-slap nor mysqlslap is installed"}
            self.failures.append("slap")
            return None
        assert self.db is not None
        slap = Slap(binary, self.db, self.tmp, self.emails, self.plan.duration)
        self.results["slap"] = slap.figures
        return slap

    # -- 2. cache-miss path -----------------------------------------------------------------

    def misses(self) -> dict[int | str, Any]:
        inst = self.start_instance(DBNAME, "vmaild-nocache", "max_entries = 0\ncheck_interval = 0")
        try:
            out: dict[int | str, Any] = {}
            for conns in (1, 16):
                r = self.load(inst, mode="tcp", conns=conns, keyfile=self.keyfile)
                if r["errors"] or r["notfound"]:
                    raise RuntimeError(f"miss path x{conns}: {r}")
                out[conns] = r
                log(
                    f"  miss x{conns}: {r['rps']:,.0f}/s p50 {r['p50_us']} us "
                    f"p99 {r['p99_us']} us vmaild CPU {r['vmaild_cpu']:.0%}"
                )
            out["cache_entries"] = inst.cache_entries()
            out["pool_size"] = POOL_SIZE
            return out
        finally:
            self.stop_instance(inst)

    # -- 3. postmap -q - --------------------------------------------------------------------

    def postmap(self) -> dict[str, Any]:
        assert self.db is not None
        return postmap_tables(
            self.db, self.main, self.tmp, self.keyfile, self.emails, self.plan.postmap_runs
        )

    # -- 5. RSS with many cached keys -------------------------------------------------------

    def rss(self) -> dict[str, Any]:
        """N distinct keys through the tcp: map: 90% existing users (found, cached with
        their value), 10% unknown addresses (cached as not-found). The first tenth is a
        separate stage, so that the growth per entry can be told from fixed costs (thread
        stacks, connection buffers) that come with the first misses."""
        assert self.db is not None
        n = self.plan.rss_keys
        n_found = n * 9 // 10
        users = [address(i, 7) for i in range(1, n_found + 1)]
        insert_s = seed_users(self.db, RSS_DBNAME, users)
        keys = users + [address(i, 7, "nx") for i in range(1, n - n_found + 1)]
        del users
        # Interleave found and unknown keys, as mail traffic would.
        keys = interleave(keys[:n_found], keys[n_found:])
        first = n // 10
        stage1, stage2 = self.tmp / "rss-keys-1.txt", self.tmp / "rss-keys-2.txt"
        stage1.write_text("\n".join(keys[:first]) + "\n")
        stage2.write_text("\n".join(keys[first:]) + "\n")
        del keys
        inst = self.start_instance(
            RSS_DBNAME,
            "vmaild-rss",
            f"ttl = 86400\nnegative_ttl = 86400\nmax_entries = {max(n, 1_000_000)}\n"
            "check_interval = 0",
        )
        try:
            before = proc_status_kb(inst.pid, "VmRSS")
            started = time.perf_counter()
            fill1 = self.load(
                inst, mode="tcp", conns=16, keyfile=stage1, duration=3600, total=first
            )
            middle = proc_status_kb(inst.pid, "VmRSS")
            fill2 = self.load(
                inst, mode="tcp", conns=16, keyfile=stage2, duration=3600, total=n - first
            )
            fill_s = time.perf_counter() - started
            after = proc_status_kb(inst.pid, "VmRSS")
            peak = proc_status_kb(inst.pid, "VmHWM")
            text = inst.vm.metrics_text(inst.metrics_port)
            entries = metric(text, "vmaild_cache_entries")
            answered = fill1["requests"] + fill2["requests"]
            errors = fill1["errors"] + fill2["errors"]
            if answered != n or errors or entries != n:
                raise RuntimeError(
                    f"fill: {answered} answered, {errors} errors, {entries} "
                    f"cache entries; {n} wanted"
                )
            # A second pass over part of the keys must not reach the database.
            queries = metric(text, "vmaild_db_query_seconds_count")
            check = self.load(
                inst,
                mode="tcp",
                conns=16,
                keyfile=stage2,
                duration=600,
                total=min(n - first, 100_000),
            )
            again = metric(inst.vm.metrics_text(inst.metrics_port), "vmaild_db_query_seconds_count")
            if again != queries:
                raise RuntimeError(
                    f"second pass: {(again or 0) - (queries or 0)} database "
                    "queries, expected none (keys not cached?)"
                )
            per_entry = (after - before) * 1024 / n
            marginal = (after - middle) * 1024 / (n - first)
            return {
                "keys": n,
                "found": fill1["found"] + fill2["found"],
                "notfound": fill1["notfound"] + fill2["notfound"],
                "insert_seconds": round(insert_s, 1),
                "fill_seconds": round(fill_s, 1),
                "fill_rps": answered / fill_s,
                "rss_before_mb": before / 1024,
                "rss_stage1_mb": middle / 1024,
                "rss_after_mb": after / 1024,
                "vmhwm_mb": peak / 1024,
                "cache_entries": entries,
                "bytes_per_entry": per_entry,
                "bytes_per_entry_marginal": marginal,
                "estimate_1m_mb": (after + marginal * max(0, 1_000_000 - n) / 1024) / 1024,
                "hit_pass_rps": check["rps"],
                "quick": self.plan.quick,
            }
        finally:
            self.stop_instance(inst)
            self.db.drop_database(RSS_DBNAME)

    # -- driver -----------------------------------------------------------------------------

    def run(self) -> None:
        self.section("setup", self.setup)
        if "setup" in self.failures:
            return
        self.section("cached", self.cached)
        self.section("misses", self.misses)
        self.section("postmap", self.postmap)
        self.section("rss", self.rss)

    def cleanup(self) -> None:
        for inst in list(self.instances):
            try:
                inst.stop()
            except Exception:  # noqa: BLE001
                traceback.print_exc()
        if self.db is not None:
            self.db.cleanup()
