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
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import seed
from harness.mariadb import MariaDB
from harness.ports import free_port
from harness.vmaild import Vmaild, config_text

from .loadgen import LoadGenerator

RESULTS = Path(__file__).resolve().parent / "results"
DOMAIN = "bench.test"
DBNAME = "vmaild_bench"
RSS_DBNAME = "vmaild_bench_rss"
DBUSER, DBPASSWORD = "bench", "bench-pw"
SLAP_USER, SLAP_PASSWORD = "bench_ro", "bench-ro-pw"  # SELECT only: slap cannot drop anything
# A 13-character DES crypt like ENCRYPT() stores; calling ENCRYPT() for a million rows
# would only slow the set-up down, and the lookups never read the password.
PASSWORD_HASH = "abJnggxhB/yWI"
MAP = "mailboxes"  # the seed's mailboxes query, the one virtual_mailbox_maps uses
POOL_SIZE = 8      # the daemon's default [database] pool_size (the harness uses 4)
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


# -- small helpers -------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[bench lookup {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def address(i: int, width: int, prefix: str = "u") -> str:
    return f"{prefix}{i:0{width}d}@{DOMAIN}"


def loadavg() -> float:
    """The 1-minute load average (runnable processes; this benchmark itself adds about 2)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idle and iowait, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def seed_users(db: MariaDB, dbname: str, emails: list[str]) -> float:
    """Fresh database with the seed's schema, the bench domain and these users; returns
    the seconds the inserts took. pymysql's executemany sends multi-row INSERTs."""
    db.drop_database(dbname)
    db.create_database(dbname, DBUSER, DBPASSWORD)
    db.execute_script(seed.SEED_SCHEMA, dbname)
    started = time.perf_counter()
    conn = db.root_conn(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO domains (domain) VALUES (%s)", (DOMAIN,))
            for i in range(0, len(emails), 10_000):
                cur.executemany("INSERT INTO users (email, password) VALUES (%s, %s)",
                                [(e, PASSWORD_HASH) for e in emails[i:i + 10_000]])
            cur.execute(f"GRANT SELECT ON `{dbname}`.* TO %s@'127.0.0.1'", (SLAP_USER,))
            cur.execute("SELECT COUNT(*) FROM users")
            (count,) = cur.fetchone()
    finally:
        conn.close()
    if count != len(emails):
        raise RuntimeError(f"{dbname}: {count} users inserted, {len(emails)} wanted")
    return time.perf_counter() - started


def start_mariadb(tmp: Path) -> MariaDB:
    """A private server with its own tmpdir. mariadb-install-db still uses /tmp, and was
    seen to fail there once in a while when other work on the machine cleans /tmp
    ("Error on delete of '/tmp/#sql-temptable-...'"): one retry with a fresh datadir."""
    for attempt in (1, 2):
        base = tmp / f"mariadb{attempt}"
        (base / "tmp").mkdir(parents=True)
        shutil.chown(base / "tmp", "mysql", "mysql")
        db = MariaDB(base, extra_args=(f"--tmpdir={base / 'tmp'}",))
        try:
            return db.start()
        except Exception as e:  # noqa: BLE001
            db.stop()
            if attempt == 2:
                raise
            log(f"MariaDB did not start ({str(e).splitlines()[0]}); trying once more")
    raise AssertionError("unreachable")


def create_slap_user(db: MariaDB) -> None:
    conn = db.root_conn()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE USER IF NOT EXISTS %s@'127.0.0.1' IDENTIFIED BY %s",
                        (SLAP_USER, SLAP_PASSWORD))
    finally:
        conn.close()


def vmaild_config(db: MariaDB, dbname: str, *, tcp_port: int, socketmap_port: int,
                  metrics_port: int, cache: str) -> str:
    """The harness's config for the seed's maps, with warning-level logging (debug logging
    would distort the figures) and the daemon's default pool size."""
    text = config_text(db_port=db.port, dbname=dbname, user=DBUSER, password=DBPASSWORD,
                       ports={MAP: tcp_port}, socketmap_port=socketmap_port,
                       metrics_port=metrics_port, cache=cache)
    for old, new in (("level = debug", "level = warning"),
                     ("pool_size = 4", f"pool_size = {POOL_SIZE}")):
        if old not in text:
            raise RuntimeError(f"harness config_text changed: no {old!r} line")
        text = text.replace(old, new)
    return text


class Instance:
    """One running vmaild with its ports."""

    def __init__(self, db: MariaDB, dbname: str, workdir: Path, cache: str):
        self.tcp_port, self.socketmap_port = free_port(), free_port()
        self.metrics_port = free_port()
        self.vm = Vmaild(vmaild_config(db, dbname, tcp_port=self.tcp_port,
                                       socketmap_port=self.socketmap_port,
                                       metrics_port=self.metrics_port, cache=cache), workdir)
        self.vm.start()

    @property
    def pid(self) -> int:
        assert self.vm.proc is not None
        return self.vm.proc.pid

    def cache_entries(self) -> float | None:
        return metric(self.vm.metrics_text(self.metrics_port), "vmaild_cache_entries")

    def db_queries(self) -> float:
        text = self.vm.metrics_text(self.metrics_port)
        return metric(text, "vmaild_db_query_seconds_count") or 0.0

    def stop(self) -> None:
        self.vm.stop()


# -- the benchmark -------------------------------------------------------------------------------

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

    def load(self, inst: Instance, *, mode: str, conns: int, keyfile: Path,
             duration: float | None = None, total: int = 0) -> dict:
        """One loadgen run, with the CPU share vmaild and the generator used meanwhile."""
        port = inst.socketmap_port if mode == "socketmap" else inst.tcp_port
        cpu0, busy0 = proc_cpu_seconds(inst.pid), machine_busy_seconds()
        r = self.gen.run(mode=mode, port=port, conns=conns, keyfile=keyfile, mapname=MAP,
                         duration=duration or self.plan.duration, total=total)
        r["vmaild_cpu"] = (proc_cpu_seconds(inst.pid) - cpu0) / r["seconds"]
        r["loadgen_cpu"] = r["cpu_seconds"] / r["seconds"]
        # Everything else that kept a CPU busy meanwhile (MariaDB, other work on the machine):
        # on 2 cores, anything much above 0 takes time from vmaild or the generator.
        busy = (machine_busy_seconds() - busy0) / r["seconds"]
        r["other_cpu"] = max(0.0, busy - r["vmaild_cpu"] - r["loadgen_cpu"])
        return r

    # -- set-up -----------------------------------------------------------------------------

    def setup(self) -> dict:
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
            DBNAME, "vmaild-cached",
            "ttl = 3600\nnegative_ttl = 3600\nmax_entries = 2000000\ncheck_interval = 0")
        return {"users": len(self.emails), "insert_seconds": round(insert_s, 2),
                "loadgen": self.gen.kind, "loadgen_note": self.gen.note}

    # -- 1. cached lookups, and 4. mariadb-slap, interleaved ------------------------------

    def cached(self) -> dict:
        """Warm the cache, then at each concurrency alternate a vmaild run and a
        mariadb-slap run of about the same length, so that other work on the machine hurts
        both sides alike; the medians are compared."""
        warm = self.load(self.main, mode="tcp", conns=16, keyfile=self.keyfile,
                         duration=600, total=len(self.emails))
        entries = self.main.cache_entries()
        if warm["found"] != len(self.emails) or entries != len(self.emails):
            raise RuntimeError(f"warm-up: {warm['found']} found, {entries} cache entries, "
                               f"{len(self.emails)} wanted")
        slap = self.slap_prepare()
        queries = self.main.db_queries()
        out: dict[str, Any] = {"warmup": warm, "tcp": {}, "socketmap": {}}
        for conns in CONCURRENCY:
            runs, slaps = [], []
            total = self.slap_calibrate(conns, slap)
            for _ in range(self.plan.repeats):
                runs.append(self.cached_run("tcp", conns))
                if total:
                    slaps.append(self.slap_guarded(conns, total, slap))
            out["tcp"][conns] = median_run(runs, "rps")
            slaps = [r for r in slaps if r is not None]
            if slap is not None and slaps:
                slap[conns] = median_run(slaps, "qps")
            self.log_pair(conns, out["tcp"][conns], slap.get(conns) if slap else None)
        for conns in CONCURRENCY:
            out["socketmap"][conns] = r = self.cached_run("socketmap", conns)
            log(f"  cached socketmap x{conns}: {r['rps']:,.0f}/s p50 {r['p50_us']} us "
                f"p99 {r['p99_us']} us vmaild CPU {r['vmaild_cpu']:.0%}")
        if slap is not None:
            self.slap_finish(slap)
        # Every answer above must have come from the cache.
        out["db_queries_during_runs"] = self.main.db_queries() - queries
        if out["db_queries_during_runs"]:
            raise RuntimeError(f"{out['db_queries_during_runs']} database queries during "
                               "the cached runs")
        return out

    def cached_run(self, mode: str, conns: int) -> dict:
        r = self.load(self.main, mode=mode, conns=conns, keyfile=self.keyfile)
        if r["errors"] or r["notfound"]:
            raise RuntimeError(f"{mode} x{conns}: not all answers were hits: {r}")
        return r

    def log_pair(self, conns: int, mine: dict, theirs: dict | None) -> None:
        other = f" | mariadb-slap {theirs['qps']:,.0f}/s" if theirs else ""
        log(f"  cached tcp x{conns}: {mine['rps']:,.0f}/s p50 {mine['p50_us']} us "
            f"p99 {mine['p99_us']} us vmaild CPU {mine['vmaild_cpu']:.0%}{other}")

    # -- 4. mariadb-slap --------------------------------------------------------------------

    def slap_prepare(self) -> dict | None:
        """Write the query file; None (and a recorded failure) if mariadb-slap is missing."""
        binary = shutil.which("mariadb-slap") or shutil.which("mysqlslap")
        if binary is None:
            self.results["slap"] = {"error": "neither mariadb-slap nor mysqlslap is installed"}
            self.failures.append("slap")
            return None
        # The same statement vmaild sends for the mailboxes map, each key inlined (neither
        # side uses prepared statements), one connection per concurrent client.
        sql = seed.cf_logical_value(seed.SEED_QUERIES[MAP])
        self.slap_file = self.tmp / "slap-queries.sql"
        self.slap_file.write_text(";\n".join(sql.replace("%s", e) for e in self.emails))
        self.slap_binary = binary
        slap: dict[str, Any] = {"binary": os.path.basename(binary)}
        self.results["slap"] = slap
        return slap

    def slap_calibrate(self, conns: int, slap: dict | None) -> int:
        """Queries for one run of about plan.duration seconds, from a short trial run;
        0 when mariadb-slap cannot run."""
        if slap is None or "error" in slap:
            return 0
        trial = self.slap_guarded(conns, conns * 300, slap)
        if trial is None:
            return 0
        return max(conns, int(trial["qps"] * self.plan.duration) // conns * conns)

    def slap_guarded(self, conns: int, total: int, slap: dict) -> dict | None:
        """slap_once, with a failure recorded in ``slap`` instead of raised: vmaild's own
        figures are still worth reporting."""
        if "error" in slap:
            return None
        try:
            return self.slap_once(conns, total)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            slap["error"] = f"{type(e).__name__}: {e}"
            return None

    def slap_once(self, conns: int, total: int) -> dict:
        """One mariadb-slap run: ``total`` queries shared by ``conns`` clients, over TCP."""
        assert self.db is not None and self.db.pid is not None
        cmd = [self.slap_binary, "--no-defaults", "--protocol=tcp", "--host=127.0.0.1",
               f"--port={self.db.port}", f"--user={SLAP_USER}", f"--password={SLAP_PASSWORD}",
               "--skip-ssl", f"--create-schema={DBNAME}", "--no-drop",
               f"--query={self.slap_file}", "--delimiter=;", f"--concurrency={conns}",
               "--iterations=1", f"--number-of-queries={total}"]
        busy0, db0 = machine_busy_seconds(), proc_cpu_seconds(self.db.pid)
        kids0, wall0 = children_cpu_seconds(), time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        wall = time.perf_counter() - wall0
        slap_cpu = (children_cpu_seconds() - kids0) / wall
        db_cpu = (proc_cpu_seconds(self.db.pid) - db0) / wall
        other = (machine_busy_seconds() - busy0) / wall - slap_cpu - db_cpu
        text = p.stdout + p.stderr
        # "Average number of seconds to run all queries" is the time all clients took
        # together (connecting excluded); clients x queries per client is what they ran.
        avg = re.search(r"Average number of seconds to run all queries: ([\d.]+)", text)
        clients = re.search(r"Number of clients running queries: (\d+)", text)
        per_client = re.search(r"Average number of queries per client: (\d+)", text)
        if p.returncode != 0 or not (avg and clients and per_client):
            raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({p.returncode}): {text}")
        queries = int(clients.group(1)) * int(per_client.group(1))
        seconds = float(avg.group(1))
        return {"queries": queries, "seconds": seconds,
                "qps": queries / seconds if seconds else 0.0, "mariadbd_cpu": db_cpu,
                "slap_cpu": slap_cpu, "other_cpu": max(0.0, other)}

    def slap_finish(self, slap: dict) -> None:
        assert self.db is not None
        rows = self.db.query("SELECT COUNT(*) FROM users", database=DBNAME)
        if rows[0][0] != len(self.emails):
            slap["error"] = "the benchmark database changed under mariadb-slap"
        if "error" in slap and "slap" not in self.failures:
            self.failures.append("slap")

    # -- 2. cache-miss path -----------------------------------------------------------------

    def misses(self) -> dict:
        inst = self.start_instance(DBNAME, "vmaild-nocache", "max_entries = 0\ncheck_interval = 0")
        try:
            out = {}
            for conns in (1, 16):
                r = self.load(inst, mode="tcp", conns=conns, keyfile=self.keyfile)
                if r["errors"] or r["notfound"]:
                    raise RuntimeError(f"miss path x{conns}: {r}")
                out[conns] = r
                log(f"  miss x{conns}: {r['rps']:,.0f}/s p50 {r['p50_us']} us "
                    f"p99 {r['p99_us']} us vmaild CPU {r['vmaild_cpu']:.0%}")
            out["cache_entries"] = inst.cache_entries()
            out["pool_size"] = POOL_SIZE
            return out
        finally:
            self.stop_instance(inst)

    # -- 3. postmap -q - --------------------------------------------------------------------

    def postmap(self) -> dict:
        assert self.db is not None
        cf = seed.write_mysql_cf(self.tmp / "cf", self.db, DBNAME, DBUSER, DBPASSWORD)
        expected = {e: f"{DOMAIN}/{e.split('@')[0]}/" for e in self.emails}
        tables = {
            "mysql": f"mysql:{cf[MAP]}",
            "tcp": f"tcp:127.0.0.1:{self.main.tcp_port}",
            "socketmap": f"socketmap:inet:127.0.0.1:{self.main.socketmap_port}:{MAP}",
        }

        def timed(table: str) -> float:
            with open(self.keyfile, "rb") as keys:
                started = time.perf_counter()
                p = subprocess.run(["postmap", "-q", "-", table], stdin=keys,
                                   capture_output=True, text=True, timeout=300, check=False)
                seconds = time.perf_counter() - started
            got = dict(line.split(None, 1) for line in p.stdout.splitlines() if line.strip())
            got = {k: v.strip() for k, v in got.items()}
            if got != expected:
                wrong = len([k for k in expected if got.get(k) != expected[k]])
                raise RuntimeError(f"postmap {table}: {wrong} of {len(expected)} keys wrong "
                                   f"(exit {p.returncode}): {p.stderr.strip()[:500]}")
            return seconds

        out: dict[str, Any] = {"keys": len(self.emails)}
        plan = [("mysql", "mysql", None), ("tcp_cold", "tcp", True), ("tcp_warm", "tcp", False),
                ("socketmap_cold", "socketmap", True), ("socketmap_warm", "socketmap", False)]
        for label, kind, cold in plan:
            times = []
            for _ in range(self.plan.postmap_runs):
                if cold:
                    self.main.vm.reload()  # SIGHUP flushes the cache
                    if self.main.cache_entries() != 0:
                        raise RuntimeError("cache not empty after SIGHUP")
                elif cold is False and self.main.cache_entries() != len(self.emails):
                    timed(tables[kind])  # make sure every key is cached
                times.append(timed(tables[kind]))
            out[label] = {"seconds": min(times), "runs": [round(t, 3) for t in times]}
            log(f"  postmap {label}: best {min(times):.3f} s of {len(times)}")
        return out

    # -- 5. RSS with many cached keys -------------------------------------------------------

    def rss(self) -> dict:
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
            RSS_DBNAME, "vmaild-rss",
            f"ttl = 86400\nnegative_ttl = 86400\nmax_entries = {max(n, 1_000_000)}\n"
            "check_interval = 0")
        try:
            before = proc_status_kb(inst.pid, "VmRSS")
            started = time.perf_counter()
            fill1 = self.load(inst, mode="tcp", conns=16, keyfile=stage1, duration=3600,
                              total=first)
            middle = proc_status_kb(inst.pid, "VmRSS")
            fill2 = self.load(inst, mode="tcp", conns=16, keyfile=stage2, duration=3600,
                              total=n - first)
            fill_s = time.perf_counter() - started
            after = proc_status_kb(inst.pid, "VmRSS")
            peak = proc_status_kb(inst.pid, "VmHWM")
            text = inst.vm.metrics_text(inst.metrics_port)
            entries = metric(text, "vmaild_cache_entries")
            answered = fill1["requests"] + fill2["requests"]
            errors = fill1["errors"] + fill2["errors"]
            if answered != n or errors or entries != n:
                raise RuntimeError(f"fill: {answered} answered, {errors} errors, {entries} "
                                   f"cache entries; {n} wanted")
            # A second pass over part of the keys must not reach the database.
            queries = metric(text, "vmaild_db_query_seconds_count")
            check = self.load(inst, mode="tcp", conns=16, keyfile=stage2, duration=600,
                              total=min(n - first, 100_000))
            again = metric(inst.vm.metrics_text(inst.metrics_port),
                           "vmaild_db_query_seconds_count")
            if again != queries:
                raise RuntimeError(f"second pass: {again - (queries or 0)} database queries, "
                                   "expected none (keys not cached?)")
            per_entry = (after - before) * 1024 / n
            marginal = (after - middle) * 1024 / (n - first)
            return {"keys": n, "found": fill1["found"] + fill2["found"],
                    "notfound": fill1["notfound"] + fill2["notfound"],
                    "insert_seconds": round(insert_s, 1), "fill_seconds": round(fill_s, 1),
                    "fill_rps": answered / fill_s, "rss_before_mb": before / 1024,
                    "rss_stage1_mb": middle / 1024, "rss_after_mb": after / 1024,
                    "vmhwm_mb": peak / 1024, "cache_entries": entries,
                    "bytes_per_entry": per_entry, "bytes_per_entry_marginal": marginal,
                    "estimate_1m_mb": (after + marginal * max(0, 1_000_000 - n) / 1024) / 1024,
                    "hit_pass_rps": check["rps"], "quick": self.plan.quick}
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


# -- the report ----------------------------------------------------------------------------------

def versions() -> dict:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                                  check=False).stdout.strip()
        except OSError:
            return ""

    import vmaild
    return {"vmaild": vmaild.__version__, "python": platform.python_version(),
            "mariadb": out(["mariadbd", "--version"]),
            "postfix": out(["postconf", "-h", "mail_version"]), "cpus": os.cpu_count(),
            "kernel": platform.release()}


def interleave(many: list[str], few: list[str]) -> list[str]:
    """``many`` with ``few`` spread evenly among them."""
    if not few:
        return list(many)
    step = len(many) / len(few)
    out: list[str] = []
    for i, key in enumerate(few):
        out += many[round(i * step):round((i + 1) * step)]
        out.append(key)
    return out


def median_run(runs: list[dict], key: str) -> dict:
    """The run with the median ``key``, plus every run's figure."""
    best = sorted(runs, key=lambda r: r[key])[len(runs) // 2]
    return dict(best, runs=[round(r[key]) for r in runs])


def ok(r: Any) -> bool:
    return isinstance(r, dict) and "error" not in r


def num(x: float) -> str:
    return f"{x:,.0f}"


def targets(res: dict[str, Any]) -> list[dict]:
    """The issue's three targets, evaluated on this run's figures."""
    out = []
    cached, slap, pm, rss = (res.get(k) for k in ("cached", "slap", "postmap", "rss"))
    if ok(cached) and ok(slap):
        mine, theirs = cached["tcp"][64]["rps"], slap[64]["qps"]
        out.append({"target": "cached lookups/s at 64 connections >= mariadb-slap at 64",
                    "met": mine >= theirs,
                    "detail": f"{num(mine)}/s vs {num(theirs)}/s ({mine / theirs:.2f}x)"})
    if ok(pm):
        base = pm["mysql"]["seconds"]
        for label in ("tcp_warm", "tcp_cold"):
            t = pm[label]["seconds"]
            note = "" if label == "tcp_warm" else " (cold cache: every key a miss)"
            out.append({"target": f"postmap -q - via tcp: ({label.split('_')[1]} cache) faster "
                                  f"than via mysql:{note}", "met": t < base,
                        "detail": f"{t:.2f} s vs {base:.2f} s ({base / t:.2f}x)"})
    if ok(rss):
        if rss["keys"] >= 1_000_000:
            out.append({"target": f"RSS < {RSS_TARGET_MB} MB at 1,000,000 cached keys",
                        "met": rss["rss_after_mb"] < RSS_TARGET_MB,
                        "detail": f"{rss['rss_after_mb']:.0f} MB"})
        else:
            out.append({"target": f"RSS < {RSS_TARGET_MB} MB at 1,000,000 cached keys",
                        "met": None, "detail": f"not measured: {num(rss['keys'])} keys only "
                        f"(--quick); extrapolated {rss['estimate_1m_mb']:.0f} MB"})
    return out


def report(res: dict[str, Any], plan: Plan) -> str:
    lines: list[str] = []
    add = lines.append
    setup = res.get("setup", {})
    meta = res["meta"]
    add("")
    add(f"vmaild lookup benchmark -- {'QUICK' if plan.quick else 'full'} mode, {meta['cpus']} "
        f"CPUs, {setup.get('users', 0):,} addresses, map {MAP}")
    add(f"load generator: {setup.get('loadgen', '?')}; vmaild {meta['vmaild']}, "
        f"{meta['mariadb'].split(' for ')[0]}, Postfix {meta['postfix']}")
    start_load = meta.get("loadavg", {}).get("start", 0.0)
    add(f"load average before starting: {start_load:.2f}" + (
        "  << the machine is busy with other work: figures are depressed and noisy"
        if start_load > 1.0 else "") + "; 'other CPU' = cores busy with anything but vmaild "
        "and the load generator during a run")
    slap = res.get("slap")
    slap_at = (lambda c: slap[c]["qps"]) if ok(slap) else (lambda c: None)  # noqa: E731

    def load_table(title: str, rows: dict, conns_list: tuple[int, ...]) -> None:
        add("")
        add(title)
        add(f"  {'conns':>5} {'lookups/s':>10} {'p50 us':>7} {'p99 us':>7} {'vmaild CPU':>10} "
            f"{'loadgen CPU':>11} {'other CPU':>9} {'vs slap':>7}  runs (lookups/s)")
        for c in conns_list:
            r = rows[c]
            base = slap_at(c)
            ratio = f"{r['rps'] / base:.2f}x" if base else "-"
            runs = ", ".join(num(x) for x in r.get("runs", []))
            add(f"  {c:>5} {num(r['rps']):>10} {r['p50_us']:>7.0f} {r['p99_us']:>7.0f} "
                f"{r['vmaild_cpu']:>10.0%} {r['loadgen_cpu']:>11.0%} {r['other_cpu']:>9.0%} "
                f"{ratio:>7}  {runs}")

    cached = res.get("cached")
    if ok(cached):
        reps = f", median of {plan.repeats}" if plan.repeats > 1 else ""
        load_table(f"1. Cached lookups, tcp:{MAP} ({plan.duration:g} s per run{reps}; "
                   "vs slap = against mariadb-slap at the same concurrency)",
                   cached["tcp"], CONCURRENCY)
        load_table(f"   Cached lookups, socketmap {MAP} ({plan.duration:g} s, one run)",
                   cached["socketmap"], CONCURRENCY)
    misses = res.get("misses")
    if ok(misses):
        load_table(f"2. Cache-miss path, tcp:{MAP} (second vmaild, [cache] max_entries = 0, "
                   f"pool_size = {misses['pool_size']})", misses, (1, 16))
    pm = res.get("postmap")
    if ok(pm):
        base = pm["mysql"]["seconds"]
        add("")
        add(f"3. postmap -q - over {pm['keys']:,} keys (best of {plan.postmap_runs}; "
            "cold = after SIGHUP flushed the cache)")
        add(f"  {'table':<34} {'seconds':>8} {'keys/s':>8} {'vs mysql:':>10}  runs (s)")
        names = {"mysql": "mysql: (Postfix's MySQL client)",
                 "tcp_cold": "tcp: vmaild, cold cache", "tcp_warm": "tcp: vmaild, warm cache",
                 "socketmap_cold": "socketmap: vmaild, cold cache",
                 "socketmap_warm": "socketmap: vmaild, warm cache"}
        for key, name in names.items():
            t = pm[key]["seconds"]
            runs = ", ".join(f"{x:.2f}" for x in pm[key]["runs"])
            add(f"  {name:<34} {t:>8.3f} {num(pm['keys'] / t):>8} {base / t:>9.2f}x  {runs}")
    if ok(slap):
        add("")
        add(f"4. MariaDB point lookups, C client ({slap['binary']}), the same SELECT over TCP, "
            f"run alternately with part 1")
        add(f"  {'conns':>5} {'queries/s':>10} {'mariadbd CPU':>12} {'slap CPU':>8} "
            f"{'other CPU':>9}  runs (queries/s)")
        for c in CONCURRENCY:
            r = slap[c]
            runs = ", ".join(num(x) for x in r.get("runs", []))
            add(f"  {c:>5} {num(r['qps']):>10} {r['mariadbd_cpu']:>12.0%} {r['slap_cpu']:>8.0%} "
                f"{r['other_cpu']:>9.0%}  {runs}")
    rss = res.get("rss")
    if ok(rss):
        add("")
        q = " (--quick: not the 1,000,000 of the target)" if rss["quick"] else ""
        add(f"5. Memory with {rss['keys']:,} cached keys{q}")
        add(f"  {num(rss['found'])} found users + {num(rss['notfound'])} unknown addresses, "
            f"filled through tcp:{MAP} at 16 connections in {rss['fill_seconds']} s "
            f"({num(rss['fill_rps'])} misses/s)")
        add(f"  VmRSS before {rss['rss_before_mb']:.0f} MB, after the first tenth "
            f"{rss['rss_stage1_mb']:.0f} MB, after all {rss['rss_after_mb']:.0f} MB "
            f"(peak {rss['vmhwm_mb']:.0f} MB); vmaild_cache_entries {num(rss['cache_entries'])}")
        add(f"  {rss['bytes_per_entry']:.0f} bytes per entry overall, "
            f"{rss['bytes_per_entry_marginal']:.0f} for the last nine tenths; hit pass "
            f"afterwards {num(rss['hit_pass_rps'])}/s with no database query")
    for name in ("setup", "cached", "misses", "postmap", "slap", "rss"):
        r = res.get(name)
        if isinstance(r, dict) and "error" in r:
            add("")
            add(f"!! {name} FAILED: {r['error']}")
    add("")
    add("Targets (issue 2)")
    for t in res["targets"]:
        state = {True: "met", False: "NOT MET", None: "n/a"}[t["met"]]
        add(f"  [{state:>7}] {t['target']}: {t['detail']}")
    return "\n".join(lines)


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
