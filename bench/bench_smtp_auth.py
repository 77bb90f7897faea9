"""Benchmark: SMTP AUTH logins per second, three ways, on the same users in the same run.

- **sasl**: Postfix ``smtpd_sasl_type = dovecot`` -> vmaild's ``[sasl]`` socket (the shipped
  path: one hop);
- **authdaemond**: Postfix ``smtpd_sasl_type = cyrus`` with the shipped
  postfix/sasl/smtpd.conf -> Courier's authdaemond -> vmaild-authpipe -> vmaild's
  ``[auth]`` socket (the alternative path, four hops);
- **saslauthd**: Postfix with Cyrus SASL -> ``saslauthd -a pam -c -r`` -> pam_mysql
  (``crypt=1``) -> MariaDB: the seed tutorial's own path (harness/saslauthd/).

One private MariaDB holds the seed's tables (migrated by ``vmailctl db migrate``) and the
users, in two hash sets both contenders can read: the seed's DES (``ENCRYPT()``) and
sha512_crypt at glibc's 5,000 rounds. vmaild runs with ``[auth] rehash = no`` so the stored
hashes stay what pam_mysql reads. Each Postfix is a private instance (harness/postfix) on a
free port; clients are processes that open an SMTP session, EHLO, ``AUTH PLAIN`` with the
initial response and QUIT, so every login also pays for one smtpd session (the same for
all three).

Phases: *first* (every user once; vmaild restarted and saslauthd restarted before it, so
neither has a cached login) and *repeated* (the same users again: vmaild's verified-login
cache, saslauthd's ``-c`` cache). Rounds alternate the contenders' order; ratios are taken
per round and the median reported, since only figures measured close together compare.
Targets: the new socket at least as fast as the authdaemond path and as saslauthd, first
and repeated.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import os
import shutil
import smtplib
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import Outcome, Target, logger
from bench.common import main as bench_main
from harness.courier.server import Courier
from harness.mariadb.server import MariaDB
from harness.postfix.config import vmaild_socket_dir
from harness.postfix.server import Postfix
from harness.saslauthd.server import Saslauthd
from harness.stack import seed
from harness.vmaild.server import Vmaild
from vmaild import passwords

NAME = "smtp_auth"
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
SHIPPED_SMTPD_CONF = ROOT / "postfix" / "sasl" / "smtpd.conf"
DBNAME, DBUSER, DBPASSWORD = "vmaild_bench_smtp", "bench_smtp", "bench-smtp-pw"
DOMAIN = "bench.test"
CLIENTS = 8
ROUNDS = 3
HASH_SETS = (("des (seed ENCRYPT)", "des"), ("sha512_crypt 5000", "sha512_crypt"))
CONTENDERS = ("sasl", "authdaemond", "saslauthd")

log = logger(NAME)


# -- the client (runs in worker processes) ---------------------------------------------------


def smtp_login(port: int, user: str, password: str) -> bool:
    """One SMTP session with AUTH PLAIN (initial response, RFC 4954 section 4)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo("bench.test")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        code, _ = s.docmd("AUTH", f"PLAIN {token}")
        return code == 235


def run_chunk(port: int, items: list[tuple[str, str]]) -> tuple[int, int]:
    ok = sum(smtp_login(port, u, p) for u, p in items)
    return ok, len(items) - ok


# -- the bench -------------------------------------------------------------------------------


class Bench:
    def __init__(self, quick: bool, tmp: Path):
        self.quick = quick
        self.tmp = tmp
        self.db = MariaDB()
        self.pool = ProcessPoolExecutor(
            max_workers=CLIENTS, mp_context=multiprocessing.get_context("forkserver")
        )
        self.vmaild: Vmaild | None = None
        self.courier: Courier | None = None
        self.saslauthd: Saslauthd | None = None
        self.postfix: dict[str, Postfix] = {}
        self.users: dict[str, list[tuple[str, str]]] = {}
        self.rounds: list[dict[str, dict[str, dict[str, float]]]] = []
        self.sasl_socket = tmp / "spool" / "vmaild" / "auth"

    def setup(self) -> None:
        # As shipped (vmaild.tmpfiles): a 2750 directory of group postfix, so that smtpd
        # (user postfix) may connect to the 0660 socket vmaild makes there.
        vmaild_socket_dir(self.sasl_socket.parent.parent)
        self.db.start()
        seed.load_seed(self.db, DBNAME, DBUSER, DBPASSWORD, rows=False)
        conf = (
            f"[database]\nhosts = 127.0.0.1:{self.db.port}\nuser = {DBUSER}\n"
            f"password = {DBPASSWORD}\ndbname = {DBNAME}\n\n"
            f"[auth]\nlisten = unix:{self.tmp}/auth.sock\nrehash = no\n\n"
            f"[sasl]\nlisten = unix:{self.sasl_socket}\n\n"
            f"[mailbox]\nbase = {self.tmp}/vmail\ncreate_maildirs = no\n\n"
            "[log]\nlevel = info\n"
        )
        self.vmaild = Vmaild(conf, self.tmp / "vmaild")
        self.vmaild.migrate()
        self.db.query("INSERT INTO domains (domain) VALUES (%s)", (DOMAIN,), database=DBNAME)
        count = 60 if self.quick else 300
        conn = self.db.root_conn(DBNAME)
        try:
            with conn.cursor() as cur:
                for n, (name, scheme) in enumerate(HASH_SETS):
                    users = [(f"s{n}u{i:04d}@{DOMAIN}", f"pw-{n}-{i}-secret") for i in range(count)]
                    if scheme == "des":
                        sql = "INSERT INTO users (email, password) VALUES (%s, ENCRYPT(%s))"
                        cur.executemany(sql, users)
                    else:
                        rows = [(u, passwords.hash_password(p, scheme, 5000)) for u, p in users]
                        cur.executemany("INSERT INTO users (email, password) VALUES (%s, %s)", rows)
                    self.users[name] = users
            conn.commit()
        finally:
            conn.close()
        self.vmaild.start()
        self.courier = Courier(
            BIN / "vmaild-authpipe",
            daemons=5,
            imap=False,
            pop3=False,
            auth_env={"VMAILD_CONFIG": str(self.vmaild.config_path)},
        )
        self.courier.start()
        self.saslauthd = Saslauthd(
            self.tmp / "saslauthd",
            db_port=self.db.port,
            dbname=DBNAME,
            user=DBUSER,
            password=DBPASSWORD,
        )
        self.saslauthd.start()
        common = {"smtpd_sasl_auth_enable": "yes", "broken_sasl_auth_clients": "yes"}
        self.postfix["sasl"] = Postfix(
            {**common, "smtpd_sasl_type": "dovecot", "smtpd_sasl_path": str(self.sasl_socket)}
        )
        self.postfix["authdaemond"] = Postfix(
            {**common, "smtpd_sasl_type": "cyrus", "smtpd_sasl_path": "smtpd"}
        )
        self.postfix["saslauthd"] = Postfix(
            {
                **common,
                "smtpd_sasl_type": "cyrus",
                "smtpd_sasl_path": "smtpd",
                "smtpd_sasl_service": self.saslauthd.service,
            }
        )
        self.postfix["authdaemond"].write_config_file(
            "sasl/smtpd.conf", SHIPPED_SMTPD_CONF.read_text()
        )
        self.postfix["saslauthd"].write_config_file("sasl/smtpd.conf", self.saslauthd.smtpd_conf())
        for p in self.postfix.values():
            p.start()
        warm = self.users[HASH_SETS[0][0]][0]
        for name in CONTENDERS:  # every path answers before anything is measured
            if not smtp_login(self.postfix[name].smtp_port, *warm):
                raise RuntimeError(f"{name}: the warm-up login failed\n{self.logs()}")

    def phase(self, contender: str, items: list[tuple[str, str]]) -> dict[str, float]:
        port = self.postfix[contender].smtp_port
        chunks = [items[i::CLIENTS] for i in range(CLIENTS)]
        started = time.perf_counter()
        futures = [self.pool.submit(run_chunk, port, c) for c in chunks if c]
        ok = failed = 0
        for f in futures:
            a, b = f.result()
            ok, failed = ok + a, failed + b
        wall = time.perf_counter() - started
        if failed:
            raise RuntimeError(f"{contender}: {failed} of {len(items)} logins failed")
        return {"logins": ok, "seconds": round(wall, 3), "rate": ok / wall}

    def forget(self, contender: str) -> None:
        """Before a *first* phase: no cached login anywhere on this path."""
        if contender in ("sasl", "authdaemond"):
            assert self.vmaild is not None
            self.vmaild.stop()
            self.vmaild.start()
        else:
            assert self.saslauthd is not None
            self.saslauthd.cleanup()
            self.saslauthd.start()

    def run_rounds(self) -> None:
        for n in range(1 if self.quick else ROUNDS):
            results: dict[str, dict[str, dict[str, float]]] = {}
            order = CONTENDERS if n % 2 == 0 else CONTENDERS[::-1]
            for contender in order:
                for name, _ in HASH_SETS:
                    users = self.users[name][1:]  # [0] is the warm-up login
                    self.forget(contender)
                    first = self.phase(contender, users)
                    repeated = self.phase(contender, users)
                    results.setdefault(name, {})[contender] = {
                        "first": first["rate"],
                        "repeated": repeated["rate"],
                    }
                    log(
                        f"round {n + 1} {contender} {name}: first {first['rate']:.0f}/s, "
                        f"repeated {repeated['rate']:.0f}/s"
                    )
            self.rounds.append(results)

    def logs(self) -> str:
        parts = []
        if self.vmaild is not None:
            parts.append("--- vmaild ---\n" + "\n".join(self.vmaild.log().splitlines()[-15:]))
        for name, p in self.postfix.items():
            parts.append(f"--- postfix {name} ---\n" + "\n".join(p.log_text().splitlines()[-10:]))
        return "\n".join(parts)

    def cleanup(self) -> None:
        for p in self.postfix.values():
            p.cleanup()
        if self.saslauthd is not None:
            self.saslauthd.cleanup()
        if self.courier is not None:
            self.courier.cleanup()
        if self.vmaild is not None:
            self.vmaild.stop()
        self.pool.shutdown(cancel_futures=True)
        self.db.cleanup()


def summarise(rounds: list[dict[str, dict[str, dict[str, float]]]]) -> dict[str, Any]:
    """Per hash set and phase: each contender's median rate, and the median per-round
    ratio of the new socket against each other path."""
    figures: dict[str, Any] = {}
    for name, _ in HASH_SETS:
        for phase in ("first", "repeated"):
            rates = {c: statistics.median(r[name][c][phase] for r in rounds) for c in CONTENDERS}
            ratios = {
                other: statistics.median(
                    r[name]["sasl"][phase] / r[name][other][phase] for r in rounds
                )
                for other in ("authdaemond", "saslauthd")
            }
            figures[f"{name} {phase}"] = {"rates": rates, "sasl_vs": ratios}
    return figures


def report(figures: dict[str, Any], quick: bool, rounds: int) -> str:
    lines = [
        f"SMTP AUTH logins per second ({rounds} round(s){', quick' if quick else ''}, "
        f"{CLIENTS} clients, one smtpd session per login)",
        f"{'hash set / phase':32} {'sasl':>8} {'authdaemond':>12} {'saslauthd':>10}"
        f" {'x authdaemond':>14} {'x saslauthd':>12}",
    ]
    for key, f in figures.items():
        r, x = f["rates"], f["sasl_vs"]
        lines.append(
            f"{key:32} {r['sasl']:8.0f} {r['authdaemond']:12.0f} {r['saslauthd']:10.0f}"
            f" {x['authdaemond']:13.2f}x {x['saslauthd']:11.2f}x"
        )
    return "\n".join(lines)


def targets(figures: dict[str, Any]) -> list[Target]:
    out = []
    for other in ("authdaemond", "saslauthd"):
        worst_key = min(figures, key=lambda k: figures[k]["sasl_vs"][other])
        worst = figures[worst_key]["sasl_vs"][other]
        out.append(
            Target(
                f"the [sasl] socket at least as fast as {other}, every phase",
                worst >= 1.0,
                f"lowest ratio {worst:.2f}x ({worst_key})",
            )
        )
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options beyond --quick (fewer users, one round)."""


def run(args: argparse.Namespace, quick: bool) -> Outcome:
    missing = (
        MariaDB.missing_requirements()
        + Courier.missing_requirements("authpipe")
        + Postfix.missing_requirements()
        + Saslauthd.missing_requirements()
    )
    if missing:
        return Outcome({}, "", failures=[f"cannot run, missing: {', '.join(missing)}"])
    tmp = Path(tempfile.mkdtemp(prefix="vmaild-bench-smtp-"))
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
    figures = summarise(bench.rounds)
    meta = {"clients": CLIENTS, "rounds": len(bench.rounds)}
    return Outcome(
        figures,
        report(figures, quick, len(bench.rounds)),
        targets=targets(figures),
        meta=meta,
    )


def main(argv: list[str] | None = None) -> int:
    return bench_main(NAME, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
