"""Benchmark: logins per second through Courier's authdaemond, vmaild against authmysql.

One run, one machine, one private MariaDB with the seed's tables
(migrated by ``vmailctl db migrate``), and the same users and hashes for both contenders:

- **vmaild**: authdaemond -> vmaild-authpipe (as /etc/courier/authProg) -> ``vmaild serve``,
  with ``[auth] rehash = no`` so the stored hashes stay exactly what authmysql reads, and a
  warm daemon (relays started, database connections open, by a warm-up account);
  - *first login*: every user once, users the daemon has never seen (nothing cached);
  - *repeated login*: the same users again (answered from the verified-login cache);
- **authmysql**: Courier's own C module with the seed's authmysqlrc (no cache: every login
  queries MariaDB and runs crypt(3)).

Clients speak authdaemond's socket protocol like authtest (PROTOCOLS.md 5.1 framing, one
connection per request), from several processes at once. The two contenders take turns:
``ROUNDS`` rounds (one in quick mode), vmaild first in one round and authmysql first in the
next, each vmaild round on a restarted daemon (so "first" means unseen again). Ratios are
taken per round and the median is reported: this machine's speed drifts over minutes, and
only figures measured close together compare fairly. Three hash sets: the seed's DES
(``ENCRYPT()``), sha512_crypt at glibc's 5,000 rounds, and sha512_crypt at passlib's
default 656,000 rounds (what vmaild writes by default). Targets: repeated logins faster
than authmysql, first logins within 10% of it.

Output, results file and exit status as every benchmark's (bench/common.py); a login that
fails makes the run fail.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import auth_report, cpu
from bench.common import Outcome, logger
from bench.common import main as bench_main
from harness.courier.paths import AUTHDAEMON_SOCKET
from harness.courier.server import Courier
from harness.mariadb.server import MariaDB
from harness.stack import seed
from harness.vmaild.server import Vmaild
from vmaild import passwords

NAME = "auth"
BIN = Path(sys.executable).parent
DBNAME, DBUSER, DBPASSWORD = "vmaild_bench_auth", "bench_auth", "bench-auth-pw"
DOMAIN = "bench.test"
CLIENTS = 8  # concurrent client processes (authdaemond has `daemons` workers)
DAEMONS = 5  # Debian's default authdaemonrc
WARM_UP = (f"warm-up@{DOMAIN}", "warm-up-pw")
ROUNDS = 3


@dataclass(frozen=True)
class HashSet:
    name: str
    scheme: str  # "des" (MariaDB ENCRYPT()) or a passwords.hash_password scheme
    rounds: int
    users: int
    quick_users: int
    passes: int  # repeated-login passes, and authmysql passes


HASH_SETS = (
    HashSet("des (seed ENCRYPT)", "des", 0, 600, 150, 3),
    HashSet("sha512_crypt 5000", "sha512_crypt", 5000, 600, 150, 3),
    HashSet("sha512_crypt 656000", "sha512_crypt", 656_000, 40, 12, 1),
)


log = logger(NAME)


# -- the client (runs in worker processes) ---------------------------------------------------


def login_request(user: str, password: str, service: str = "imap") -> bytes:
    """authdaemond's socket request as libsasl and authtest build it (5.1: the final LF of
    the password is counted, one more LF follows)."""
    payload = f"{service}\nlogin\n{user}\n{password}\n".encode()
    return b"AUTH %d\n" % len(payload) + payload + b"\n"


def one_login(path: str, user: str, password: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(path)
        s.sendall(login_request(user, password))
        reply = b""
        while chunk := s.recv(8192):
            reply += chunk
    return reply.endswith(b".\n") and not reply.startswith(b"FAIL")


def run_chunk(path: str, items: list[tuple[str, str]]) -> tuple[int, int]:
    ok = sum(one_login(path, u, p) for u, p in items)
    return ok, len(items) - ok


def make_hash(scheme: str, rounds: int, password: str) -> str:
    return passwords.hash_password(password, scheme, rounds)


# -- the bench -------------------------------------------------------------------------------


class Bench:
    def __init__(self, quick: bool, tmp: Path):
        self.quick = quick
        self.tmp = tmp
        self.db = MariaDB()
        # forkserver: a worker forked from this process after authdaemond was set up would
        # inherit the harness's lock on the global Courier files and hold it past cleanup.
        self.pool = ProcessPoolExecutor(
            max_workers=CLIENTS, mp_context=multiprocessing.get_context("forkserver")
        )
        self.vmaild: Vmaild | None = None
        self.courier: Courier | None = None
        self.users: dict[str, list[tuple[str, str]]] = {}
        self.rounds: list[dict[str, dict[str, Any]]] = []
        self._fresh_vmaild = True  # nothing logged in through it yet

    # set-up
    def setup(self) -> None:
        self.db.start()
        seed.load_seed(self.db, DBNAME, DBUSER, DBPASSWORD, rows=False)
        conf = (
            f"[database]\nhosts = 127.0.0.1:{self.db.port}\nuser = {DBUSER}\n"
            f"password = {DBPASSWORD}\ndbname = {DBNAME}\n\n"
            f"[auth]\nlisten = unix:{self.tmp}/auth.sock\nrehash = no\n\n"
            f"[mailbox]\nbase = {self.tmp}/vmail\ncreate_maildirs = no\n\n"
            "[log]\nlevel = info\n"
        )
        self.vmaild = Vmaild(conf, self.tmp / "vmaild")
        r = subprocess.run(
            [str(BIN / "vmailctl"), "-c", str(self.vmaild.config_path), "db", "migrate"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if r.returncode != 0:
            raise RuntimeError(f"vmailctl db migrate: {r.stderr}")
        self.db.query("INSERT INTO domains (domain) VALUES (%s)", (DOMAIN,), database=DBNAME)
        self.db.query(
            "INSERT INTO users (email, password) VALUES (%s, ENCRYPT(%s))", WARM_UP, database=DBNAME
        )
        for n, hs in enumerate(HASH_SETS):
            count = hs.quick_users if self.quick else hs.users
            users = [(f"s{n}u{i:05d}@{DOMAIN}", f"pw-{n}-{i}-secret") for i in range(count)]
            started = time.monotonic()
            hashes: list[str | None]
            if hs.scheme == "des":
                hashes = [None] * count  # ENCRYPT() below, exactly as the seed stored them
            else:
                hashes = list(
                    self.pool.map(
                        make_hash, [hs.scheme] * count, [hs.rounds] * count, [p for _, p in users]
                    )
                )
            conn = self.db.root_conn(DBNAME)
            try:
                with conn.cursor() as cur:
                    if hs.scheme == "des":
                        cur.executemany(
                            "INSERT INTO users (email, password) VALUES (%s, ENCRYPT(%s))", users
                        )
                    else:
                        cur.executemany(
                            "INSERT INTO users (email, password) VALUES (%s, %s)",
                            [(u, h) for (u, _), h in zip(users, hashes, strict=True)],
                        )
            finally:
                conn.close()
            self.users[hs.name] = users
            log(f"{hs.name}: {count} users ({time.monotonic() - started:.1f} s)")
        self.vmaild.start()

    # one measured phase
    def phase(
        self, items: list[tuple[str, str]], path: str = str(AUTHDAEMON_SOCKET)
    ) -> dict[str, Any]:
        chunks = [items[i::CLIENTS] for i in range(CLIENTS)]
        assert self.vmaild is not None
        roles = cpu.roles_for(
            vmaild_config=str(self.vmaild.config_path), mariadb_datadir=str(self.db.datadir)
        )
        cpu0 = cpu.snapshot(roles)
        started = time.perf_counter()
        futures = [self.pool.submit(run_chunk, path, c) for c in chunks if c]
        ok = failed = 0
        for f in futures:
            a, b = f.result()
            ok, failed = ok + a, failed + b
        wall = time.perf_counter() - started
        cpu_us = cpu.per_request(cpu0, cpu.snapshot(roles), len(items))
        if failed:
            raise RuntimeError(f"{failed} of {len(items)} logins failed")
        return {
            "logins": ok,
            "seconds": round(wall, 3),
            "rate": ok / wall,
            "load": round(os.getloadavg()[0], 2),
            "cpu_us_per_login": cpu_us,
        }

    def warm_up(self) -> None:
        """Start every authdaemond worker's authProg and open vmaild's database connections
        with an account of its own, so that the measured users are still unseen."""
        self.phase([WARM_UP] * (DAEMONS * 20))

    def use_courier(self, courier: Courier) -> None:
        """Switch authdaemond (its paths are global: one at a time). On a failure the
        running one is left for logs() and cleaned up by cleanup()."""
        if self.courier is not None:
            self.courier.cleanup()
        self.courier = courier
        courier.start()
        self.warm_up()

    def run_rounds(self) -> None:
        for n in range(1 if self.quick else ROUNDS):
            self.rounds.append({hs.name: {"users": len(self.users[hs.name])} for hs in HASH_SETS})
            contenders = [self.run_vmaild, self.run_authmysql]
            for run in contenders if n % 2 == 0 else contenders[::-1]:
                run(self.rounds[-1])

    def run_vmaild(self, into: dict[str, dict[str, Any]]) -> None:
        assert self.vmaild is not None
        if not self._fresh_vmaild:  # a new daemon: nothing cached, every user unseen
            self.vmaild.stop()
            self.vmaild.start()
        self._fresh_vmaild = False
        self.use_courier(
            Courier(
                BIN / "vmaild-authpipe",
                daemons=DAEMONS,
                imap=False,
                pop3=False,
                auth_env={"VMAILD_CONFIG": str(self.vmaild.config_path)},
            )
        )
        for hs in HASH_SETS:
            users = self.users[hs.name]
            first = self.phase(users)  # never seen by this daemon: nothing cached
            repeated = self.phase(users * hs.passes)
            direct = self.phase(users * hs.passes, str(self.tmp / "auth.sock"))
            into[hs.name].update(first=first, repeated=repeated, direct=direct)
            log(
                f"vmaild {hs.name}: first {first['rate']:.0f}/s, repeated "
                f"{repeated['rate']:.0f}/s, repeated without authdaemond "
                f"{direct['rate']:.0f}/s"
            )

    def run_authmysql(self, into: dict[str, dict[str, Any]]) -> None:
        rc = seed.authmysqlrc_text(self.db, DBNAME, DBUSER, DBPASSWORD, home=self.tmp / "vmail")
        self.use_courier(
            Courier(
                None, modules="authmysql", authmysqlrc=rc, daemons=DAEMONS, imap=False, pop3=False
            )
        )
        for hs in HASH_SETS:
            users = self.users[hs.name]
            r = self.phase(users * hs.passes)
            into[hs.name]["authmysql"] = r
            log(f"authmysql {hs.name}: {r['rate']:.0f}/s")

    def logs(self) -> str:
        """The last lines of vmaild's and authdaemond's logs, to explain a failure."""
        parts = []
        if self.vmaild is not None:
            parts.append("--- vmaild ---\n" + "\n".join(self.vmaild.log().splitlines()[-15:]))
        if self.courier is not None:
            parts.append(
                "--- authdaemond ---\n" + "\n".join(self.courier.log_text().splitlines()[-15:])
            )
        return "\n".join(parts)

    def cleanup(self) -> None:
        if self.courier is not None:
            self.courier.cleanup()
        if self.vmaild is not None:
            self.vmaild.stop()
        self.pool.shutdown(cancel_futures=True)
        self.db.cleanup()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options beyond --quick (fewer users per hash set)."""


def run(args: argparse.Namespace, quick: bool) -> Outcome:
    missing = MariaDB.missing_requirements() + Courier.missing_requirements("authpipe authmysql")
    if missing:
        return Outcome({}, "", failures=[f"cannot run, missing: {', '.join(missing)}"])
    loadavg_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="vmaild-bench-auth-"))
    os.chmod(tmp, 0o755)
    bench = Bench(quick, tmp)
    try:
        bench.setup()
        bench.run_rounds()
    except Exception as e:  # noqa: BLE001 - a failed round: no figures to summarise
        log(f"failed: {type(e).__name__}: {e}\n{bench.logs()}")
        raise
    finally:
        bench.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    figures = auth_report.summarise(bench.rounds)
    meta = {
        "clients": CLIENTS,
        "daemons": DAEMONS,
        "rounds": len(bench.rounds),
        "loadavg_start": loadavg_start,
    }
    return Outcome(
        figures,
        auth_report.report(figures, meta, quick),
        targets=auth_report.targets(figures),
        meta=meta,
    )


def main(argv: list[str] | None = None) -> int:
    return bench_main(NAME, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
