"""Two mail hosts on a MariaDB primary and two GTID replicas, under load, with faults.

Topology (issue 14, "Tests and figures"; README "Several hosts"): a primary and two GTID
replicas (harness.mariadb.replication); host A reads replica1 then replica2, host B
replica2 then replica1, both write to the primary. Each host serves the mailboxes map on
a tcp: port and every map on socketmap, logins on its auth socket and the policy service
with a sending limit (LIMIT recipients per window, counted at RCPT).

Load (harness.stack.hostload), all along: lookups of mailboxes and aliases that exist
throughout, of one that never exists and of the mailboxes being created and removed;
logins with the right password (and a wrong one for another account); policy requests
from both hosts for one login per phase (their counters race on the primary); a creator
running the real vmailctl (add, remove), alternately with each host's configuration.

Phases: 1 steady; 2 the primary killed (-9) and revived; 3 replica1's SQL thread stopped
beyond max_lag and restarted; 4 replica2 killed (-9) and revived. Each fault is held for a
minimum time and until the load reached the hosts during it (counts, not only time);
after it, until each host answered well again.

The figures (answers by kind, recovery times, counters against the limit) are printed
(pytest -s), written to figures.txt in the test's tmp dir (every answer and vmailctl command
in answers.tsv next to it) and put in any failure message.

Recovery, per host and fault: "reads" is when the last failed answer (a temporary
failure for an existing mailbox, a login with the right password, or a policy read)
ended, counted from the fault's start (0: none failed); "counting" (the primary's phase
only, where counting fails by design while the writer is down) is when the first
counted policy answer came after the primary was back, from its return.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.common.ports import free_port
from harness.common.tempdir import shared_tempdir
from harness.common.wait import wait_until
from harness.mariadb.replication import Replication
from harness.mariadb.server import MariaDB
from harness.stack.hostload import Creator, HostEndpoints, Load, mailbox_value
from harness.stack.ledger import (
    LOGIN,
    LOOKUP,
    POLICY,
    Answer,
    HostFigures,
    Ledger,
    Phase,
    figures,
    table,
)
from harness.stack.seed import SEED_FORWARDINGS, SEED_USERS, load_seed
from harness.vmaild.server import Vmaild, config_text, seed_ports
from tests.integration.conftest import require
from vmaild.passwords import hash_password

VMAILCTL = Path(sys.executable).parent / "vmailctl"
MAX_LAG = 4.0  # above vmailctl's run time with gtid_wait: lagged@ sees the lagging replica
RETRY_INTERVAL = 1.0  # config_text's [database] retry_interval
# Recovery bound: retry_interval plus a margin for a loaded 2-CPU CI machine.
RECOVERY_BOUND = RETRY_INTERVAL + 9.0
LIMIT = 20  # recipients per window (3600 s) for one login, counted at RCPT
FAIL_ACTION = "451 4.3.0 Sending limit check unavailable"
LOGIN_USER = ("imap-user@example.test", "imap-user-pw-1")
LAGGED = "lagged@example.test"  # created through host A while its replica lags
DECOY = "decoy@example.test"  # wrong passwords go here (so the guard never blocks LOGIN_USER)
EXISTING = {e: mailbox_value(e) for e in SEED_USERS} | {LOGIN_USER[0]: mailbox_value(LOGIN_USER[0])}
ALIASES = {s: d for s, d in SEED_FORWARDINGS.items() if not s.startswith("@")}
HOSTS = ("A", "B")


@dataclass
class Host:
    name: str
    vmaild: Vmaild
    endpoints: HostEndpoints
    metrics_port: int

    def reading_from(self, server: MariaDB) -> bool:
        text = self.vmaild.metrics_text(self.metrics_port)
        host = f"127.0.0.1:{server.port}"
        m = re.search(rf'^vmaild_db_read_host\{{host="{host}"\}} (\S+)$', text, re.M)
        return m is not None and float(m.group(1)) == 1.0


def host_config(
    name: str, topo: Replication, reads: list[MariaDB], dbname: str, user: str, pw: str, tmp: Path
) -> tuple[str, HostEndpoints, int]:
    ports, socketmap, metrics, policy = seed_ports(), free_port(), free_port(), free_port()
    workdir = tmp / name
    auth = workdir / "auth.sock"
    conf = config_text(
        db_port=topo.primary.port,
        db_hosts=" ".join(f"127.0.0.1:{r.port}" for r in reads),
        database=(
            f"write_hosts = 127.0.0.1:{topo.primary.port}\n"
            f"max_lag = {MAX_LAG}\nlag_check_interval = 0.5"
        ),
        dbname=dbname,
        user=user,
        password=pw,
        ports={"mailboxes": ports["mailboxes"]},
        socketmap_port=socketmap,
        metrics_port=metrics,
        control_path=str(workdir / "control.sock"),
        cache="ttl = 1\nnegative_ttl = 1\ncheck_interval = 0.5\ngtid_wait = 1",
        extra=(
            f"[auth]\nlisten = unix:{auth}\npassword_rounds = 5000\nlogin_cache_ttl = 0\n"
            "fail_delay = 0.1\nfail_delay_max = 0.2\n"
            f"[mailbox]\nbase = {tmp / 'vmail'}\n"
            f"[policy]\nlisten = 127.0.0.1:{policy}\nratelimit_count_state = RCPT\n"
            f"ratelimit_messages = 0\nratelimit_recipients = {LIMIT}\n"
            f"ratelimit_fail_action = {FAIL_ACTION}\n"
        ),
    )
    workdir.mkdir(parents=True, exist_ok=True)
    endpoints = HostEndpoints(
        name, ports["mailboxes"], socketmap, auth, policy, workdir / "vmaild.conf"
    )
    return conf, endpoints, metrics


@dataclass
class Run:
    topo: Replication
    hosts: dict[str, Host]
    dbname: str
    tmp: Path


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    require(MariaDB.missing_requirements(), "MariaDB")
    tmp = shared_tempdir("vmaild-hosts-")
    topo = Replication(replicas=2)
    started: list[Vmaild] = []
    try:
        topo.start()
        seed = load_seed(topo.primary)
        r1, r2 = topo.replicas
        hosts: dict[str, Host] = {}
        for name, reads in (("A", [r1, r2]), ("B", [r2, r1])):
            conf, endpoints, metrics = host_config(
                name, topo, reads, seed.dbname, seed.user, seed.password, tmp
            )
            hosts[name] = Host(name, Vmaild(conf, tmp / name), endpoints, metrics)
        hosts["A"].vmaild.migrate()  # vmailctl, on write_hosts
        # The login accounts get a hash of few rounds (password_rounds): the load is about
        # faults, not about hashing; vmailctl's default of 656,000 would eat the 2 CPUs.
        for address, password in (LOGIN_USER, (DECOY, "decoy-pw-1")):
            topo.primary.query(
                "INSERT INTO users (email, password) VALUES (%s, %s)",
                (address, hash_password(password, "sha512_crypt", rounds=5000)),
                database=seed.dbname,
            )
        topo.sync()
        for host, first in ((hosts["A"], r1), (hosts["B"], r2)):
            host.vmaild.start()
            started.append(host.vmaild)
            wait_until(
                lambda h=host, f=first: h.reading_from(f),  # type: ignore[misc]
                30,
                f"host {host.name} to read",
            )
        yield Run(topo, hosts, seed.dbname, tmp)
    finally:
        for v in started:
            v.stop()
        topo.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


class CurrentLogin:
    """The policy login of the current phase, read by the policy clients."""

    def __init__(self, login: str) -> None:
        self._login = login
        self._lock = threading.Lock()

    def get(self) -> str:
        with self._lock:
            return self._login

    def set(self, login: str) -> None:
        with self._lock:
            self._login = login


class Phases:
    """Runs the phases; what the load saw is counted from load.answers."""

    def __init__(self, run: Run, load: Load, creator: Creator, login: CurrentLogin) -> None:
        self.run, self.load, self.creator, self.login = run, load, creator, login
        self.phases: list[Phase] = []
        self._index: dict[float, int] = {}  # a mark() -> len(answers) then

    def mark(self) -> float:
        """Now; answers sent from now on are all appended after this point."""
        now = time.monotonic()
        self._index[now] = len(self.load.answers)
        return now

    def seen(self, since: float, host: str, kind: str, ok: Callable[[Answer], bool]) -> int:
        start = self._index.get(since, 0)
        return sum(
            1
            for a in self.load.answers[start:]
            if a.host == host and a.kind == kind and a.t0 >= since and ok(a)
        )

    def reached(self, since: float, lookups: int = 30, logins: int = 3, policy: int = 5) -> bool:
        """Every host got this many answers of each kind (any outcome) since ``since``."""
        return all(
            self.seen(since, h, LOOKUP, lambda a: True) >= lookups
            and self.seen(since, h, LOGIN, lambda a: True) >= logins
            and self.seen(since, h, POLICY, lambda a: True) >= policy
            for h in HOSTS
        )

    def answered_well(self, since: float) -> bool:
        """Every host answered a lookup, a right login and a counted policy request."""
        return all(
            self.seen(since, h, LOOKUP, lambda a: a.outcome == "found") > 0
            and self.seen(since, h, LOGIN, lambda a: a.outcome == "ok") > 0
            and self.seen(since, h, POLICY, lambda a: a.outcome in ("accepted", "over")) > 0
            for h in HOSTS
        )

    def hold(self, at_least: float, until: Callable[[], bool], what: str) -> None:
        """Keep the current state ``at_least`` seconds and until ``until()`` holds."""
        start = time.monotonic()
        wait_until(
            lambda: time.monotonic() - start >= at_least and until(), 60, what, interval=0.25
        )

    def begin(self, name: str, login: str, **kw: object) -> Phase:
        self.login.set(login)
        phase = Phase(name, self.mark(), **kw)  # type: ignore[arg-type]
        self.phases.append(phase)
        return phase

    def when(self, phase: Phase, note: str, cond: Callable[[], bool]) -> None:
        """Wait for ``cond`` and note how long after the fault's start it came true."""
        assert phase.fault_start is not None
        wait_until(cond, 60, note, interval=0.1)
        phase.notes.append(f"{note}: {time.monotonic() - phase.fault_start:.2f}s after fault start")

    def all(self) -> None:
        topo, hosts = self.run.topo, self.run.hosts
        r1, r2 = topo.replicas

        p = self.begin("1 steady", "sender1@example.test")
        # Until the limit is reached on both hosts: the counters raced the whole phase.
        self.hold(5, lambda: self.reached(p.start) and self._over_everywhere(p.start), "steady")
        p.end = time.monotonic()

        p = self.begin("2 primary", "sender2@example.test", fault="kill -9 the primary")
        p.writer_fault = True
        p.fault_start = self.mark()
        topo.kill(topo.primary)
        self.hold(5, lambda: self.reached(p.fault_start or 0) and bool(self.creator.failures), "p2")
        topo.revive(topo.primary)
        p.fault_end = self.mark()
        self.hold(3, lambda: self.answered_well(p.fault_end or 0), "recovery after the primary")
        p.end = time.monotonic()

        p = self.begin("3 lag", "sender3@example.test", fault="stop replica1's SQL thread")
        p.fault_start = self.mark()
        topo.stop_sql_thread(r1)
        # A mailbox created through host A now: A is told, its replica lags (4xx, never
        # "not found", until a read host has it).
        assert self.creator.op(hosts["A"].endpoints, LAGGED, True, pinned=True)
        p.notes.append(
            f"lagged@example.test created through host A at "
            f"{time.monotonic() - (p.fault_start or 0):.2f}s (vmailctl waited for A's replica)"
        )
        self.when(p, "host A reads from replica2", lambda: hosts["A"].reading_from(r2))
        self.hold(MAX_LAG, lambda: self.reached(p.fault_start or 0), "p3")
        topo.start_sql_thread(r1)
        p.fault_end = self.mark()
        self.when(p, "host A reads from replica1 again", lambda: hosts["A"].reading_from(r1))
        self.hold(3, lambda: self.answered_well(p.fault_end or 0), "recovery after the lag")
        p.end = time.monotonic()

        p = self.begin("4 replica2", "sender4@example.test", fault="kill -9 replica2")
        p.fault_start = self.mark()
        topo.kill(r2)
        self.when(p, "host B reads from replica1", lambda: hosts["B"].reading_from(r1))
        self.hold(4, lambda: self.reached(p.fault_start or 0), "p4")
        topo.revive(r2)
        p.fault_end = self.mark()
        self.when(p, "host B reads from replica2 again", lambda: hosts["B"].reading_from(r2))
        self.hold(3, lambda: self.answered_well(p.fault_end or 0), "recovery after replica2")
        p.end = time.monotonic()

    def _over_everywhere(self, since: float) -> bool:
        return all(self.seen(since, h, POLICY, lambda a: a.outcome == "over") > 0 for h in HOSTS)


def test_two_hosts_under_load_through_primary_lag_and_replica_faults(
    run: Run, tmp_path: Path
) -> None:
    ledger = Ledger()
    endpoints = [run.hosts[h].endpoints for h in HOSTS]
    creator = Creator(VMAILCTL, endpoints, ledger, "example.test")
    login = CurrentLogin("sender1@example.test")
    load = Load(
        endpoints,
        ledger,
        EXISTING,
        ALIASES,
        absent="nobody@example.test",
        login=LOGIN_USER,
        decoy=DECOY,
        policy_login=login.get,
        policy_recipient="alice@example.test",
    )
    phases = Phases(run, load, creator, login)
    load.start()
    creator.start()
    try:
        phases.all()
    finally:
        creator.stop()
        load.stop()
        heal(run.topo)

    by = {(p.name, h): figures(p, h, load.answers, ledger) for p in phases.phases for h in HOSTS}
    counters = policy_totals(run, phases.phases, load.answers)
    ops = ledger.operations()
    lagged, lagged_found = lagged_figures(load.answers, ledger)
    text = "\n".join(
        [
            table(phases.phases, list(HOSTS), by),
            *counters.lines,
            lagged,
            f"vmailctl: {sum(op.ok for op in ops)} commands ok, {len(creator.failures)} failed"
            f" (the primary down); {len(load.answers)} answers in all",
            "recovery: reads = end of the host's last failed read (existing mailbox not found,"
            " right login not ok, policy 4xx) after the fault's start, 0 if none; counting ="
            " first counted policy answer after the primary was back, from its return;"
            f" bound {RECOVERY_BOUND:g}s (retry_interval + 9 s)",
        ]
    )
    (tmp_path / "figures.txt").write_text(text + "\n")
    with open(tmp_path / "answers.tsv", "w") as out:  # every answer, for a post-mortem
        t = phases.phases[0].start
        for a in load.answers:
            out.write(f"{a.t0 - t:.3f}\t{a.t1 - t:.3f}\t{a.host}\t{a.kind}\t{a.key}\t")
            out.write(f"{a.expect}\t{a.outcome}\t{a.raw!r}\n")
        for op in ledger.operations():
            out.write(f"{op.t0 - t:.3f}\t{op.t1 - t:.3f}\t{op.notified}\tvmailctl\t{op.key}\t")
            out.write(f"{'add' if op.exists_after else 'remove'}\t{op.ok}\t\n")
    print("\n" + text)

    problems = check(phases.phases, by, counters)
    if not lagged_found:
        problems.append(f"host A never found {LAGGED} once its replica caught up")
    for host in run.hosts.values():
        if host.vmaild.proc is None or host.vmaild.proc.poll() is not None:
            problems.append(f"host {host.name}'s vmaild is gone")
        if "Traceback" in host.vmaild.log():
            problems.append(f"host {host.name} logged a traceback")
    assert not problems, "\n".join(problems) + "\n\n" + text


def lagged_figures(answers: list[Answer], ledger: Ledger) -> tuple[str, bool]:
    """How host A answered for the mailbox created through it while its replica lagged,
    counted from vmailctl's return; and whether it was found in the end."""
    key = LAGGED
    ops = ledger.ops(key)
    if not ops:
        return f"{key}: not created", False
    done = ops[0].t1
    mine = [a for a in answers if a.host == "A" and a.key == key and a.t0 >= done]
    temp = [a.t1 - done for a in mine if a.outcome == "4xx"]
    found = [a.t1 - done for a in mine if a.outcome == "found"]
    missing = sum(1 for a in mine if a.outcome == "notfound")
    return (
        f"{key} (created through host A while replica1 lagged), host A after vmailctl returned: "
        f"{len(temp)} 4xx (last at {max(temp, default=0):.2f}s), {missing} not found, "
        f"first found at {min(found, default=float('nan')):.2f}s"
    ), bool(found)


@dataclass
class Counters:
    lines: list[str]
    accepted: dict[str, int]  # phase name -> accepted answers, both hosts
    stored: dict[str, int]  # phase name -> recipients counted on the primary


def policy_totals(run: Run, phases: list[Phase], answers: list[Answer]) -> Counters:
    lines = [
        f"sending limit: {LIMIT} recipients per window (3600 s) for one login per phase, both"
        " hosts. Bound (policy/counting.py): at every count the window's total, its oldest"
        " minute weighted, stays <= the limit whatever the number of hosts; the run lies in"
        " one window, so every count weighs fully: accepted <= counted <= limit, and without"
        " faults accepted = limit."
    ]
    accepted: dict[str, int] = {}
    stored: dict[str, int] = {}
    for p in phases:
        login = f"sender{p.name[0]}@example.test"
        accepted[p.name] = sum(
            1 for a in answers if a.kind == POLICY and a.key == login and a.outcome == "accepted"
        )
        rows = run.topo.primary.query(
            "SELECT COALESCE(SUM(recipients), 0) FROM send_counters WHERE login = %s",
            (login,),
            database=run.dbname,
        )
        stored[p.name] = int(rows[0][0])
        per_host = Counter(
            a.host
            for a in answers
            if a.kind == POLICY and a.key == login and a.outcome == "accepted"
        )
        lines.append(
            f"  phase {p.name}: {login} accepted {accepted[p.name]} "
            f"(A {per_host['A']}, B {per_host['B']}), "
            f"counted on the primary {stored[p.name]}, limit {LIMIT}"
        )
    return Counters(lines, accepted, stored)


def check(phases: list[Phase], by: dict[tuple[str, str], HostFigures], c: Counters) -> list[str]:
    problems: list[str] = []
    for p in phases:
        for h in HOSTS:
            f = by[(p.name, h)]
            problems += [f"phase {p.name}: {v}" for v in f.violations[:5]]
            if f.lookups["found"] == 0 or f.logins["ok"] == 0:
                problems.append(f"phase {p.name} host {h}: no good answer at all")
            if f.recovery is not None and f.recovery > RECOVERY_BOUND:
                problems.append(f"phase {p.name} host {h}: reads recovered in {f.recovery:.2f}s")
            if p.writer_fault and (
                f.counting_recovery is None or f.counting_recovery > RECOVERY_BOUND
            ):
                problems.append(f"phase {p.name} host {h}: counting recovery {f.counting_recovery}")
        if c.accepted[p.name] > LIMIT or c.stored[p.name] > LIMIT:
            problems.append(f"phase {p.name}: counters over the limit")
        if c.accepted[p.name] > c.stored[p.name]:
            problems.append(f"phase {p.name}: accepted more than the primary counted")
    first = phases[0].name
    if c.accepted[first] != LIMIT or c.stored[first] != LIMIT:
        problems.append(f"phase {first}: without faults both hosts together accept the limit")
    return problems


def heal(topo: Replication) -> None:
    for server in topo.servers:
        if not server.running:
            topo.revive(server)
    for replica in topo.replicas:
        if topo.status(replica).get("Slave_SQL_Running") != "Yes":
            topo.start_sql_thread(replica)
        topo.wait_running(replica)
    topo.sync()
