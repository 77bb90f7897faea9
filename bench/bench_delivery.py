"""Benchmark: mail accepted and delivered per second, the seed's wiring against vmaild's.

One run, one machine, one MariaDB with the seed's schema and rows (plus
eight benchmark mailboxes), and two private Postfix instances fed the same messages in
alternating rounds:

* ``seed``: the tutorial's main.cf verbatim (harness/stack/seed.py): ``proxy:mysql:`` maps on its
  four mysql-virtual_*.cf files, delivery by virtual(8) into virtual_mailbox_base;
* ``vmaild``: the shipped configuration (harness/stack/mailstack.py): socketmap: maps on vmaild, the
  policy service at RCPT and END-OF-DATA, delivery by postfix/vmaild-maildrop -> maildrop,
  which looks each recipient up through authdaemond -> vmaild-authpipe -> vmaild;
* ``vmaild-nopolicy``: the same without main.cf.policy, to show what the policy service
  (quota, state and limits checked at RCPT) costs on its own.

Load: ``smtp-source`` from the postfix package (one process per recipient mailbox, each with
its own sessions; a pool of smtplib clients where it is missing), unauthenticated, one
recipient per message. Each round measures the two halves apart, so that neither competes
with the other for the CPUs: "accepted" is messages per second until the last 250 after
DATA, with delivery held (``defer_transports``: lookups, policy, queue writes); "delivered"
is messages per second from releasing the queue (``postqueue -f``) until the last message
file is in its Maildir (the delivery agent and, for vmaild, authdaemond and vmaild).
vmaild's lookup latency comes from its own histograms (/metrics), as the difference across
the vmaild rounds. No targets: figures only. Output, results file and exit status as every
benchmark's (bench/common.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import smtplib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Outcome, logger
from bench.common import main as bench_main
from harness.postfix.server import Postfix
from harness.stack import seed, shipped
from harness.stack.mailstack import HOSTNAME, VMAIL_GID, VMAIL_UID, MailStack
from harness.stack.procs import StackPostfix

NAME = "delivery"
DOMAIN = "example.test"
MAILBOXES = [f"bench{i}@{DOMAIN}" for i in range(8)]
DES_HASH = "abJnggxhB/yWI"  # an ENCRYPT()-style hash; deliveries never read it
SENDER = "loadgen@example.net"
HISTOGRAMS = ("vmaild_lookup_seconds", "vmaild_policy_request_seconds", "vmaild_db_query_seconds")


log = logger(NAME)


@dataclass
class Plan:
    messages: int  # per round, spread evenly over MAILBOXES
    rounds: int  # per configuration, alternating seed/vmaild
    sessions: int  # concurrent SMTP sessions per smtp-source process
    size: int  # message payload bytes
    quick: bool


# -- the two configurations ----------------------------------------------------------------


@dataclass
class Target:
    name: str
    postfix: Postfix
    maildir: Callable[[str], Path]
    transport: str  # the delivery transport, held while messages are accepted

    def hold(self) -> None:
        self.postfix.postconf({"defer_transports": self.transport})

    def release(self) -> None:
        subprocess.run(
            ["postconf", "-c", str(self.postfix.config_dir), "-X", "defer_transports"], check=True
        )
        self.postfix.reload()

    def delivered(self) -> int:
        total = 0
        for box in MAILBOXES:
            d = self.maildir(box) / "new"
            try:
                total += sum(1 for _ in os.scandir(d))
            except FileNotFoundError:
                pass
        return total


def add_mailboxes(stack: MailStack) -> None:
    for box in MAILBOXES:
        stack.mariadb.query(
            "INSERT INTO users (email, password) VALUES (%s, %s)",
            (box, DES_HASH),
            database=stack.db.dbname,
        )


def seed_postfix(stack: MailStack) -> tuple[Postfix, Path]:
    """The tutorial's Postfix against the same database: its mysql: files and main.cf."""
    cf = seed.write_mysql_cf(
        stack.sandbox / "seed-cf", stack.mariadb, stack.db.dbname, stack.db.user, stack.db.password
    )
    base = stack.sandbox / "seed-vmail"
    base.mkdir()
    os.chown(base, VMAIL_UID, VMAIL_GID)
    main_cf = {
        **seed.seed_main_cf(cf, base),
        "message_size_limit": "30720000",
        "mynetworks": "192.0.2.1/32",
        "recipient_delimiter": "+",
        "smtpd_recipient_restrictions": (
            "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
        ),
    }
    pf = Postfix(main_cf, basedir=stack.sandbox / "seed-postfix", myhostname=HOSTNAME)
    pf.start()
    return pf, base


def nopolicy_postfix(stack: MailStack) -> Postfix:
    """The shipped Postfix configuration without postfix/main.cf.policy (its relay rule
    stays: the seed's smtpd_recipient_restrictions)."""
    policy = set(shipped.main_cf_settings(shipped.MAIN_CF_POLICY))
    main_cf = {k: v for k, v in stack.postfix_main_cf().items() if k not in policy}
    main_cf["smtpd_recipient_restrictions"] = (
        "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
    )
    pf = StackPostfix(
        main_cf,
        stack.postfix_master_cf(),
        basedir=stack.sandbox / "nopolicy-postfix",
        myhostname=HOSTNAME,
    )
    pf.write_config_file("sasl/smtpd.conf", shipped.SASL_CONF.read_text())
    pf.start()
    return pf


# -- load --------------------------------------------------------------------------------------


def send_smtp_source(port: int, plan: Plan) -> None:
    per_box = plan.messages // len(MAILBOXES)
    procs = [
        subprocess.Popen(
            [
                "smtp-source",
                "-s",
                str(plan.sessions),
                "-m",
                str(per_box),
                "-l",
                str(plan.size),
                "-f",
                SENDER,
                "-t",
                box,
                "-M",
                "client.example.net",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for box in MAILBOXES
    ]
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            errors.append(err.strip())
    if errors:
        raise RuntimeError(f"smtp-source failed: {errors[0]}")


def send_smtplib(port: int, plan: Plan) -> None:
    """The fallback load: a thread per mailbox and session, each on its own connection."""
    per_box = plan.messages // len(MAILBOXES)
    body = (f"From: {SENDER}\r\nSubject: bench\r\n\r\n" + "x" * plan.size + "\r\n").encode()
    failures: list[str] = []

    def worker(box: str, count: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
                s.ehlo("client.example.net")
                for _ in range(count):
                    s.sendmail(SENDER, [box], body)
        except Exception as e:  # noqa: BLE001 - reported after the round
            failures.append(repr(e))

    threads = []
    for box in MAILBOXES:
        share = [
            per_box // plan.sessions + (i < per_box % plan.sessions) for i in range(plan.sessions)
        ]
        threads += [threading.Thread(target=worker, args=(box, n)) for n in share if n]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"smtplib load failed: {failures[0]}")


def one_round(target: Target, plan: Plan, send: Callable[[int, Plan], None]) -> dict[str, float]:
    n = plan.messages // len(MAILBOXES) * len(MAILBOXES)
    expected = target.delivered() + n
    target.hold()
    started = time.monotonic()
    send(target.postfix.smtp_port, plan)
    accepted = time.monotonic() - started
    target.release()
    released = time.monotonic()
    target.postfix.flush()
    deadline = released + 600
    while target.delivered() < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{target.name}: only {target.delivered()} of {expected} delivered after 600 s"
            )
        time.sleep(0.02)
    delivered = time.monotonic() - released
    return {
        "messages": n,
        "accept_s": accepted,
        "deliver_s": delivered,
        "accepted_per_s": n / accepted,
        "delivered_per_s": n / delivered,
        "end_to_end_per_s": n / (accepted + delivered),
    }


# -- vmaild's own latency figures --------------------------------------------------------------


def histograms(text: str) -> dict[tuple[str, str], dict[str, float]]:
    """{(metric, map-or-""): {"le=...": cumulative count, "sum": s, "count": n}}, summed over
    every other label (outcome, ...)."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    rx = re.compile(r"^(\w+?)_(bucket|sum|count)(?:\{([^}]*)\})? ([0-9.e+-]+)$", re.M)
    for name, kind, labels, value in rx.findall(text):
        if name not in HISTOGRAMS:
            continue
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels or ""))
        key = (name, fields.get("map", ""))
        slot = out.setdefault(key, {})
        field = f"le={fields['le']}" if kind == "bucket" else kind
        slot[field] = slot.get(field, 0.0) + float(value)
    return out


def latency(before: str, after: str) -> list[dict[str, Any]]:
    """Count, mean and bucket-bounded p50/p99 of what happened between two scrapes."""
    a, b = histograms(before), histograms(after)
    rows = []
    for key, end in sorted(b.items()):
        start = a.get(key, {})
        count = end.get("count", 0) - start.get("count", 0)
        if count <= 0:
            continue
        total = end.get("sum", 0) - start.get("sum", 0)
        buckets = sorted(
            (float(k[3:]), v - start.get(k, 0.0)) for k, v in end.items() if k.startswith("le=")
        )

        def quantile(
            q: float, buckets: list[tuple[float, float]] = buckets, count: float = count
        ) -> float:
            for bound, cumulative in buckets:
                if cumulative >= q * count:
                    return bound
            return float("inf")

        rows.append(
            {
                "metric": key[0],
                "map": key[1],
                "count": int(count),
                "mean_ms": total / count * 1000,
                "p50_ms_le": quantile(0.5) * 1000,
                "p99_ms_le": quantile(0.99) * 1000,
            }
        )
    return rows


# -- report ------------------------------------------------------------------------------------


def report(
    plan: Plan,
    generator: str,
    results: dict[str, list[dict[str, float]]],
    lat: list[dict[str, Any]],
) -> str:
    lines = [
        f"vmaild delivery benchmark -- {'QUICK' if plan.quick else 'full'} mode, "
        f"{os.cpu_count()} CPUs; {plan.rounds} round(s) per configuration of "
        f"{plan.messages} messages ({plan.size} bytes) to {len(MAILBOXES)} mailboxes; "
        f"load: {generator}",
        "",
    ]
    med = {
        name: {
            k: statistics.median(r[k] for r in rounds)
            for k in ("accepted_per_s", "delivered_per_s", "end_to_end_per_s")
        }
        for name, rounds in results.items()
    }
    head = f"{'configuration':<52} {'accepted/s':>11} {'delivered/s':>12} {'both/s':>8}"
    lines += [head, "-" * len(head)]
    labels = {
        "seed": "seed: proxy:mysql: maps, virtual(8)",
        "vmaild": "vmaild (shipped): socketmap: + policy, maildrop",
        "vmaild-nopolicy": "vmaild without the policy service",
    }
    for name in results:
        lines.append(
            f"{labels[name]:<52} {med[name]['accepted_per_s']:>11.1f} "
            f"{med[name]['delivered_per_s']:>12.1f} "
            f"{med[name]['end_to_end_per_s']:>8.1f}"
        )
    for name in ("vmaild", "vmaild-nopolicy"):
        ratio = {k: med[name][k] / med["seed"][k] for k in med[name]}
        lines.append(
            f"{'ratio ' + name + ' / seed':<52} {ratio['accepted_per_s']:>10.2f}x "
            f"{ratio['delivered_per_s']:>11.2f}x {ratio['end_to_end_per_s']:>7.2f}x"
        )
    lines += ["", "every round (accepted/s, delivered/s):"]
    for name, rounds in results.items():
        lines.append(
            f"  {name:<16} "
            + "  ".join(f"{r['accepted_per_s']:.0f}/{r['delivered_per_s']:.0f}" for r in rounds)
        )
    lines += [
        "",
        "vmaild's latency during the vmaild rounds (its /metrics; p50/p99 are the "
        "histogram bucket bounds):",
        f"  {'histogram':<32} {'map':<12} {'count':>7} {'mean ms':>8} {'p50 <= ms':>10} "
        f"{'p99 <= ms':>10}",
    ]
    for row in lat:
        lines.append(
            f"  {row['metric']:<32} {row['map'] or '-':<12} {row['count']:>7} "
            f"{row['mean_ms']:>8.3f} {row['p50_ms_le']:>10.3g} {row['p99_ms_le']:>10.3g}"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--messages", type=int, help="messages per round (default 1600, quick 320)")
    p.add_argument("--rounds", type=int, help="rounds per configuration (default 3, quick 1)")
    p.add_argument(
        "--sessions",
        type=int,
        default=2,
        help="SMTP sessions per mailbox's sender (default 2: 16 in all)",
    )
    p.add_argument("--size", type=int, default=2048, help="message payload bytes")


def run(args: argparse.Namespace, quick: bool) -> Outcome:
    plan = Plan(
        args.messages or (320 if quick else 1600),
        args.rounds or (1 if quick else 3),
        args.sessions,
        args.size,
        quick,
    )
    if os.geteuid() != 0:
        return Outcome({}, "", failures=["needs root (Courier's global paths)"])
    send = send_smtp_source if shutil.which("smtp-source") else send_smtplib
    generator = (
        f"smtp-source (postfix package), one process per mailbox, {plan.sessions} sessions each"
        if send is send_smtp_source
        else f"smtplib threads, {plan.sessions} per mailbox (no smtp-source here)"
    )
    stack = MailStack(log_level="warning")
    seed_pf: Postfix | None = None
    nopolicy_pf: Postfix | None = None
    try:
        log("starting MariaDB, vmaild, Courier and the two Postfix instances")
        stack.start()
        assert stack.postfix is not None
        add_mailboxes(stack)
        seed_pf, seed_base = seed_postfix(stack)
        nopolicy_pf = nopolicy_postfix(stack)
        targets = {
            "seed": Target(
                "seed", seed_pf, lambda a: seed_base / a.split("@")[1] / a.split("@")[0], "virtual"
            ),
            "vmaild": Target("vmaild", stack.postfix, stack.maildir, "maildrop"),
            "vmaild-nopolicy": Target("vmaild-nopolicy", nopolicy_pf, stack.maildir, "maildrop"),
        }
        # Warm-up: one message per mailbox on each side (Maildirs, caches, processes).
        warm = Plan(len(MAILBOXES), 1, 1, plan.size, plan.quick)
        for target in targets.values():
            one_round(target, warm, send)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        lat_before, lat_after = "", ""
        for i in range(plan.rounds):
            order = list(targets) if i % 2 == 0 else list(reversed(targets))
            for name in order:
                if name == "vmaild":
                    before = stack.metrics()
                r = one_round(targets[name], plan, send)
                if name == "vmaild":
                    after = stack.metrics()
                    lat_before = lat_before or before
                    lat_after = after
                results[name].append(r)
                log(
                    f"round {i + 1} {name}: {r['accepted_per_s']:.1f} accepted/s, "
                    f"{r['delivered_per_s']:.1f} delivered/s"
                )
        # Only the deltas of the vmaild rounds count; seed rounds in between add nothing to
        # vmaild's histograms.
        lat = latency(lat_before, lat_after)
    finally:
        for pf in (seed_pf, nopolicy_pf):
            if pf is not None:
                pf.cleanup()
        stack.cleanup()
    meta = {
        "postfix": subprocess.run(
            ["postconf", "-h", "mail_version"], capture_output=True, text=True
        ).stdout.strip(),
        "generator": generator,
    }
    figures = {"plan": plan.__dict__, "rounds": results, "latency": lat}
    return Outcome(figures, report(plan, generator, results, lat), meta=meta)


def main(argv: list[str] | None = None) -> int:
    return bench_main(NAME, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
