"""Benchmark: vmaild's policy service, requests/s and latency, database-backed checks on.

Policy requests per second and their latency (p50/p90/p99) at 16 and 64 persistent
connections. One private MariaDB (schema from ``vmailctl db init``), 1,000 users with Maildirs and
maildirsize files (every tenth one full), one ``vmaild serve`` with only ``[policy]`` listening
(default checks and pool size, limits set high enough never to trigger), and two mixes:

* ``submission``: authenticated transactions as Postfix sends them with the shipped snippet:
  1-3 RCPT requests then END-OF-MESSAGE, each with sasl_username. Every check runs: sender
  ownership (once per transaction), recipient state and quota (one query and a maildirsize
  read per RCPT), sending limits (a window read per request, a counter update per message);
* ``inbound``: unauthenticated RCPT requests (recipient state and quota only).

The load generator is this file's own: one or more processes, each driving its share of the
connections with non-blocking sockets and epoll, one request in flight per connection
(Postfix's client is strictly sequential, PROTOCOLS.md 3.3). Its CPU use is reported next to
vmaild's and MariaDB's, so a run where it was the bottleneck shows it. No targets: figures
only. Output, results file and exit status as every benchmark's (bench/common.py).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import selectors
import shutil
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import Outcome, logger
from bench.common import main as bench_main
from bench.cpu import machine_busy_seconds, proc_cpu_seconds
from harness.common.ports import free_port
from harness.common.tempdir import shared_tempdir
from harness.mariadb.server import MariaDB
from harness.vmaild.server import Vmaild
from vmaild.ctl import schema_state

NAME = "policy"
DBNAME, DBUSER, DBPASSWORD = "vmaild_bench_policy", "bench", "bench-pw"
DOMAIN = "bench.test"
USERS = 1000
CONCURRENCY = (16, 64)
MIXES = ("submission", "inbound")


log = logger(NAME)


def user(i: int) -> str:
    return f"u{i:04d}@{DOMAIN}"


# -- requests, as Postfix 3.7 formats them --------------------------------------------------------

HEAD = (
    b"request=smtpd_access_policy\nprotocol_state=%s\nprotocol_name=ESMTP\n"
    b"client_address=192.0.2.%d\nclient_name=client.example.net\nclient_port=40512\n"
    b"reverse_client_name=client.example.net\nserver_address=127.0.0.1\nserver_port=%s\n"
    b"helo_name=client.example.net\nsender=%s\nrecipient=%s\nrecipient_count=%d\nqueue_id=\n"
    b"instance=%s\nsize=%d\netrn_domain=\nstress=\nsasl_method=%s\nsasl_username=%s\n"
    b"sasl_sender=\nccert_subject=\nccert_issuer=\nccert_fingerprint=\n"
    b"ccert_pubkey_fingerprint=\nencryption_protocol=\nencryption_cipher=\n"
    b"encryption_keysize=0\npolicy_context=\n\n"
)


def script(mix: str, rng: random.Random, tag: str) -> Any:
    """An endless stream of requests for one connection."""
    n = 0
    while True:
        n += 1
        instance = f"{tag}.{n}".encode()
        if mix == "inbound":
            rcpt = user(rng.randrange(USERS)).encode()
            yield HEAD % (
                b"RCPT",
                n % 250,
                b"25",
                b"someone@remote.example",
                rcpt,
                0,
                instance,
                rng.randrange(1, 50_000),
                b"",
                b"",
            )
            continue
        login = user(rng.randrange(USERS)).encode()
        k = rng.randint(1, 3)
        for _ in range(k):
            rcpt = user(rng.randrange(USERS)).encode()
            yield HEAD % (b"RCPT", n % 250, b"587", login, rcpt, 0, instance, 2000, b"plain", login)
        yield HEAD % (
            b"END-OF-MESSAGE",
            n % 250,
            b"587",
            login,
            b"",
            k,
            instance,
            2000,
            b"plain",
            login,
        )


def generate(port: int, conns: int, duration: float, mix: str, seed: int, out: Any) -> None:
    """One generator process: ``conns`` connections, closed loop, until ``duration``."""
    rng = random.Random(seed)
    sel = selectors.EpollSelector()
    latencies: list[float] = []
    verbs: dict[str, int] = {}
    errors = 0
    state = {}
    for c in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        reqs = script(mix, rng, f"{seed}.{c}")
        state[s.fileno()] = [s, reqs, b"", 0.0]
        sel.register(s, selectors.EVENT_READ)
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + duration
    for st in state.values():
        st[3] = time.perf_counter()
        st[0].send(next(st[1]))
    open_conns = len(state)
    while open_conns:
        for key, _ in sel.select(timeout=1.0):
            st = state[key.fd]
            data = st[0].recv(65536)
            if not data:
                errors += 1
                sel.unregister(st[0])
                open_conns -= 1
                continue
            buf = st[2] + data
            if not buf.endswith(b"\n\n"):
                st[2] = buf
                continue
            now = time.perf_counter()
            latencies.append(now - st[3])
            st[2] = b""
            action = buf[7:].split(b"\n", 1)[0].split(b" ", 1)[0].decode()
            verbs[action] = verbs.get(action, 0) + 1
            if now >= deadline:
                sel.unregister(st[0])
                open_conns -= 1
                continue
            st[3] = now
            st[0].send(next(st[1]))
        if time.perf_counter() > deadline + 10:
            break  # a stuck server: do not hang the benchmark
    elapsed = time.perf_counter() - start
    for st in state.values():
        st[0].close()
    out.put(
        {
            "latencies": latencies,
            "verbs": verbs,
            "errors": errors,
            "seconds": elapsed,
            "cpu_seconds": time.process_time() - cpu0,
        }
    )


def run_load(port: int, conns: int, duration: float, mix: str, procs: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    shares = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    workers = [
        ctx.Process(target=generate, args=(port, n, duration, mix, 1000 + i, out))
        for i, n in enumerate(shares)
        if n
    ]
    for w in workers:
        w.start()
    parts = [out.get(timeout=duration + 60) for _ in workers]
    for w in workers:
        w.join()
    lat = sorted(x for p in parts for x in p["latencies"])
    seconds = max(p["seconds"] for p in parts)
    verbs: dict[str, int] = {}
    for p in parts:
        for v, n in p["verbs"].items():
            verbs[v] = verbs.get(v, 0) + n

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6 if lat else float("nan")

    return {
        "requests": len(lat),
        "seconds": seconds,
        "rps": len(lat) / seconds,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": lat[-1] * 1e6 if lat else float("nan"),
        "verbs": verbs,
        "errors": sum(p["errors"] for p in parts),
        "loadgen_cpu": sum(p["cpu_seconds"] for p in parts) / seconds,
        "generator": f"Python, {len(workers)} process(es), epoll",
    }


# -- set-up ----------------------------------------------------------------------------------------


def setup_data(db: MariaDB, base: Path) -> None:
    db.drop_database(DBNAME)
    db.create_database(DBNAME, DBUSER, DBPASSWORD)
    conn = db.root_conn(DBNAME)
    try:
        # What `vmailctl db init` runs, called directly: the benchmark measures the policy
        # service, not the command line.
        schema_state.init(conn)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO domains (domain) VALUES (%s)", (DOMAIN,))
            cur.executemany(
                "INSERT INTO users (email, password, quota_bytes) VALUES (%s, 'x', %s)",
                [(user(i), 10_000_000) for i in range(USERS)],
            )
    finally:
        conn.close()
    for i in range(USERS):
        maildir = base / DOMAIN / user(i).split("@")[0]
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        used = 10_000_000 if i % 10 == 0 else 1_234_567
        (maildir / "maildirsize").write_text(f"10000000S\n{used:>10} {100:>4}\n")


def config(db: MariaDB, port: int, base: Path) -> str:
    return (
        f"[database]\nhosts = 127.0.0.1:{db.port}\nuser = {DBUSER}\npassword = {DBPASSWORD}\n"
        f"dbname = {DBNAME}\n\n[mailbox]\nbase = {base}\n\n"
        f"[policy]\nlisten = 127.0.0.1:{port}\nratelimit_messages = 1000000000\n"
        f"ratelimit_recipients = 1000000000\n\n[log]\nlevel = warning\n"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration", type=float, default=0.0, help="seconds per run (default 5, quick 2)"
    )
    p.add_argument("--procs", type=int, default=1, help="load generator processes")


def run(args: argparse.Namespace, quick: bool) -> Outcome:
    duration = args.duration or (2.0 if quick else 5.0)
    meta: dict[str, Any] = {"duration": duration, "users": USERS}
    missing = MariaDB.missing_requirements()
    if missing:
        return Outcome({}, "", failures=[f"cannot run, missing: {', '.join(missing)}"], meta=meta)
    figures: dict[str, Any] = {}
    failures: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="vmaild-bench-policy-"))
    base = shared_tempdir("vmaild-bench-maildirs-")
    db = MariaDB()
    vm: Vmaild | None = None
    try:
        db.start()
        port = free_port()
        text = config(db, port, base)
        setup_data(db, base)
        vm = Vmaild(text, tmp / "vmaild").start()
        assert vm.proc is not None
        run_load(port, 4, 1.0, "submission", 1)  # warm-up: connections, pool, page cache
        for mix in MIXES:
            for conns in CONCURRENCY:
                log(f"{mix}, {conns} connections, {duration:.0f} s ...")
                db.query("DELETE FROM send_counters", database=DBNAME)
                assert db.pid is not None
                cpu0, busy0 = proc_cpu_seconds(vm.proc.pid), machine_busy_seconds()
                db0 = proc_cpu_seconds(db.pid)
                r = run_load(port, conns, duration, mix, args.procs)
                r["vmaild_cpu"] = (proc_cpu_seconds(vm.proc.pid) - cpu0) / r["seconds"]
                r["mariadb_cpu"] = (proc_cpu_seconds(db.pid) - db0) / r["seconds"]
                busy = (machine_busy_seconds() - busy0) / r["seconds"]
                r["other_cpu"] = max(
                    0.0, busy - r["vmaild_cpu"] - r["loadgen_cpu"] - r["mariadb_cpu"]
                )
                figures[f"{mix}-{conns}"] = r
    except Exception as e:  # noqa: BLE001 - keep what was measured, report what broke
        traceback.print_exc()
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        if vm is not None:
            vm.stop()
        db.cleanup()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return Outcome(figures, report(figures, duration), failures=failures, meta=meta)


def report(figures: dict[str, Any], duration: float) -> str:
    lines = [
        "",
        "vmaild policy service (PROTOCOLS.md 3), database-backed checks on; "
        f"{os.cpu_count()} CPUs, {duration:.0f} s per run",
        f"{'mix':<11} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'vmaild':>6} {'mariadb':>7} {'loadgen':>7} {'other':>6}  replies",
    ]
    for mix in MIXES:
        for conns in CONCURRENCY:
            r = figures.get(f"{mix}-{conns}")
            if r is None:
                continue
            replies = " ".join(f"{v}:{n}" for v, n in sorted(r["verbs"].items()))
            errors = f"  ERRORS: {r['errors']}" if r["errors"] else ""
            lines.append(
                f"{mix:<11} {conns:>5} {r['rps']:>8.0f} {r['p50_us'] / 1e3:>7.2f} "
                f"{r['p90_us'] / 1e3:>7.2f} {r['p99_us'] / 1e3:>7.2f} {r['max_us'] / 1e3:>7.1f} "
                f"{r['vmaild_cpu']:>6.2f} {r['mariadb_cpu']:>7.2f} {r['loadgen_cpu']:>7.2f} "
                f"{r['other_cpu']:>6.2f}  {replies}{errors}"
            )
    lines.append(
        "CPU columns: cores busy on average (vmaild, MariaDB, the load generator, and "
        "everything else: the kernel's loopback networking, other work on the machine)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return bench_main(NAME, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
