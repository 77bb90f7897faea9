"""monitoring/ against the real thing: promtool on the alert rules, and a real Prometheus
(Debian's package) scraping a real ``vmaild serve`` every second while it serves lookups,
logins and policy requests, first with its database up, then down.

Every expression of the Grafana dashboard must then return data through Prometheus's HTTP
API (with the dashboard's variables set as Grafana would: all instances, a rate window that
spans the traffic), and the alerts that the outage should raise must be pending or firing
on vmaild's real series (the unit tests in vmaild.rules.test.yml use series written by
hand: this catches a metric or label name the rules get wrong). No expression is exempt:
the traffic covers each one (stale answers, errors, fail actions, database errors and the
guard counting locally come from the outage; reloads, flushes, rehashes, the failure limit,
SMTP AUTH, the guard's failures, delays, blocks and refusals, app password checks, a refused
connection and a change log drop from the first phase).

The database is listed twice in ``[database] hosts``, over TCP (the writer, reads go there
first) and over its unix socket (write_hosts leaves it out): to vmaild that is a replica,
so the lag check measures it (a replica that is never behind) and the "Several hosts" row
has its series without a second server.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.common.ports import free_port
from harness.common.tempdir import shared_tempdir
from harness.common.wait import HarnessTimeout, wait_until
from harness.mariadb.server import MariaDB
from harness.prometheus.server import Prometheus, promtool
from harness.stack import seed
from harness.stack.hostload import policy_action
from harness.vmaild.server import Vmaild, config_text
from tests.integration.conftest import require

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
RULES = MONITORING / "vmaild.rules.yml"
RULES_TEST = MONITORING / "vmaild.rules.test.yml"
DASHBOARD = MONITORING / "vmaild-dashboard.json"

#: Grafana's variables as the test sets them: every instance of job "vmaild", and a rate
#: window long enough to span the whole test (a few seconds of traffic, scraped every 1 s).
VARIABLES = {"$__rate_interval": "2m", "$job": "vmaild", "$instance": ".+"}
#: Alerts the outage must raise (pending or firing: their "for" is minutes long).
OUTAGE_ALERTS = {
    "VmaildDatabaseDown",
    "VmaildServingStale",
    "VmaildPolicyFailActions",
    "VmaildLoginGuardLocal",
}

USER, PASSWORD = "sales@raecoo.com", seed.SEED_USERS["sales@raecoo.com"]
#: The SMTP client's address Postfix passes on (rip=): known and not trusted, so the guard
#: counts failures under the address, the login and the pair.
SASL_CLIENT = "192.0.2.66"
#: Has an app password's shape (auth/app_secrets.py), so the app passwords are looked up.
NOT_AN_APP_PASSWORD = "abcde-fghij-klmno-pqrst"


# -- promtool --------------------------------------------------------------------------------


def rule_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.MULTILINE)


def test_promtool_checks_the_rules() -> None:
    require(Prometheus.missing_requirements(), "promtool")
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rule_names())} rules found" in r.stdout + r.stderr


def test_promtool_unit_tests_pass_and_cover_every_rule() -> None:
    require(Prometheus.missing_requirements(), "promtool")
    r = promtool("test", "rules", RULES_TEST.name, cwd=MONITORING)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr
    # Each rule is seen firing (exp_alerts with labels) and not firing (exp_alerts: []).
    cases = re.split(r"^\s*- eval_time:", RULES_TEST.read_text(), flags=re.MULTILINE)[1:]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        name = re.search(r"alertname: (\w+)", case)
        assert name, case
        if re.search(r"exp_alerts: \[\]", case):
            quiet.add(name.group(1))
        elif "exp_labels:" in case:
            firing.add(name.group(1))
    assert set(rule_names()) == firing == quiet, (firing, quiet)


# -- the dashboard ---------------------------------------------------------------------------


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel, rows' nested panels included."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return found


def test_dashboard_is_importable_json() -> None:
    """What Grafana's import needs: a title, a uid, panels with ids and a Prometheus query,
    and no hard-wired data source (the ``datasource`` variable picks one at import)."""
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["uid"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], target
    assert len(dashboard_expressions()) >= 30


def substituted(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


# -- vmaild's clients ------------------------------------------------------------------------


def netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


class SaslConnection:
    """Postfix's side of Dovecot's SASL protocol (PROTOCOLS.md 6) after the handshake."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.request_id = 0
        self.buffer = b""

    def auth(self, login: str, password: str, client: str = SASL_CLIENT) -> str:
        """One AUTH PLAIN as smtpd sends it: the reply's first field (OK, FAIL), or "" if
        vmaild closed the connection (its answer to a temporary failure)."""
        self.request_id += 1
        resp = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
        fields = ["AUTH", str(self.request_id), "PLAIN", "service=smtp", "nologin"]
        fields += ["lip=127.0.0.1", f"rip={client}", f"resp={resp}"]
        self.s.sendall("\t".join(fields).encode() + b"\n")
        while b"\n" not in self.buffer:
            chunk = self.s.recv(4096)
            if not chunk:
                return ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        status, request_id = line.decode().split("\t")[:2]
        assert request_id == str(self.request_id), line
        return status


@dataclass
class Clients:
    """Talks to one vmaild: socketmap, auth socket, policy service and control socket."""

    socketmap_port: int
    policy_port: int
    auth_sock: Path
    control_sock: Path
    sasl_port: int
    metrics_port: int

    def lookup(self, name: str, key: str) -> bytes:
        """One socketmap request; the reply's payload (b"OK ...", b"NOTFOUND ", b"TEMP ...")."""
        with socket.create_connection(("127.0.0.1", self.socketmap_port), timeout=10) as s:
            s.sendall(netstring(f"{name} {key}".encode()))
            reply = b""
            while not reply.endswith(b","):
                chunk = s.recv(4096)
                assert chunk, reply
                reply += chunk
        return reply.split(b":", 1)[1][:-1]

    def malformed(self) -> None:
        """A request that is not a netstring: a protocol error, and the connection closes."""
        with socket.create_connection(("127.0.0.1", self.socketmap_port), timeout=10) as s:
            s.sendall(b"no netstring here,")
            while s.recv(4096):
                pass

    def _unix(self, path: Path, request: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(path))
            s.sendall(request)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
                if path == self.control_sock and out.endswith(b"\n"):
                    break
        return out

    def pre(self, user: str) -> bytes:
        return self._unix(self.auth_sock, f"PRE . imap {user}\n".encode())

    def login(self, user: str, password: str) -> bytes:
        """An IMAP login on the auth socket: b"" is a temporary failure, b"FAIL\\n" a failure."""
        body = f"imap\nlogin\n{user}\n{password}\n".encode()
        return self._unix(self.auth_sock, b"AUTH %d\n" % len(body) + body)

    def flush(self) -> bytes:
        return self._unix(self.control_sock, b"flush\n")

    def _sasl_connect(self) -> tuple[socket.socket, bytes]:
        """A connection to [sasl] and the server's handshake (it speaks first, up to DONE);
        b"" if vmaild closed it at once (max_connections reached)."""
        s = socket.create_connection(("127.0.0.1", self.sasl_port), timeout=10)
        hello = b""
        while not hello.endswith(b"DONE\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            hello += chunk
        return s, hello

    @contextmanager
    def smtpd(self) -> Iterator[SaslConnection]:
        """One connection to [sasl], held as Postfix's smtpd holds it (every login of the
        round on it: with max_connections = 1 a second one is refused). On leaving, waits
        until vmaild has counted it out, so that the next round's is not refused."""
        s, hello = self._sasl_connect()
        try:
            assert hello.startswith(b"VERSION\t") and hello.endswith(b"DONE\n"), hello
            s.sendall(b"VERSION\t1\t0\nCPID\t4242\n")
            yield SaslConnection(s)
        finally:
            s.close()
        wait_until(
            lambda: 'vmaild_connections{listener="sasl"} 0.0' in self.metrics(),
            10,
            "vmaild to close the SASL connection",
            interval=0.05,
        )

    def sasl_refused(self) -> None:
        """Another connection to [sasl] while smtpd() holds one: over max_connections, so
        vmaild closes it at once, before its handshake."""
        second, nothing = self._sasl_connect()
        second.close()
        assert nothing == b"", nothing

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            body: bytes = r.read()
        return body.decode()

    def policy(self, **attrs: str) -> str:
        """One policy request (PROTOCOLS.md section 3); the action, or "" if closed."""
        request = {
            "request": "smtpd_access_policy",
            "protocol_state": "RCPT",
            "protocol_name": "ESMTP",
            "client_address": "192.0.2.10",
            "client_name": "client.example.net",
            "helo_name": "client.example.net",
            "recipient_count": "0",
            **attrs,
        }
        return policy_action(self.policy_port, request)


def traffic_with_database(c: Clients) -> None:
    """Lookups found (miss, then hit) and not found, a malformed request, logins that work
    (the seed's DES hash is rehashed) and fail twice (the failure limit delays the second),
    policy decisions (DUNNO, a sender reject), a control flush (first: the lookups after it
    stay cached for the outage)."""
    assert c.flush().startswith(b"ok ")
    for _ in range(2):
        assert c.lookup("mailboxes", USER) == b"OK raecoo.com/sales/"
        assert c.lookup("domains", "raecoo.com") == b"OK raecoo.com"
        assert c.lookup("mailboxes", "nobody@raecoo.com") == b"NOTFOUND "
        assert c.lookup("forwardings", "info@raecoo.com") == b"OK sales@raecoo.com"
    c.malformed()
    assert c.pre(USER).endswith(b".\n")
    assert c.login(USER, PASSWORD).endswith(b".\n")
    for _ in range(2):
        assert c.login("alice@example.test", "wrong") == b"FAIL\n"
    assert c.policy(recipient=USER, sender="someone@example.net") == "DUNNO"
    action = c.policy(recipient=USER, sender="alice@example.test", sasl_username=USER)
    assert action.startswith("553 "), action
    guard_traffic(c)


def guard_traffic(c: Clients) -> None:
    """SMTP AUTH over [sasl], on one connection: a login that works; an app password's
    shape that matches none; three wrong passwords (each different: a repeated one is not
    counted again) for one login from one address. block_pair_after = 2: the second
    failure starts a pair block (and is delayed, fail_delay_after = 2), the third is
    refused before any hashing; in the second round all three are refused. Meanwhile a
    second connection, over max_connections."""
    with c.smtpd() as smtpd:
        assert smtpd.auth(USER, PASSWORD) == "OK"
        assert smtpd.auth(USER, NOT_AN_APP_PASSWORD) == "FAIL"
        for n in range(3):
            assert smtpd.auth("mallory@example.test", f"guess-{n}") == "FAIL"
        c.sasl_refused()


def traffic_without_database(c: Clients) -> None:
    """The same while the database is down: a stale answer (found before, expired since:
    ttl = 1), a temporary error, logins that fail temporarily (a wrong password for a login
    verified before too: no verdict on stale data; the guard, unable to read its table,
    counts locally), policy fail actions."""
    assert c.lookup("mailboxes", USER) == b"OK raecoo.com/sales/"
    assert c.lookup("mailboxes", "new@raecoo.com").startswith(b"TEMP")
    assert c.login("bob@example.test", "bob-pw22") == b""
    assert c.login(USER, "not-the-password") == b""
    c.policy(recipient=USER, sender="alice@example.test", sasl_username=USER)


# -- the live test ---------------------------------------------------------------------------


@pytest.fixture
def own_mariadb() -> Iterator[MariaDB]:
    """A MariaDB of this test's own: the test stops it."""
    require(MariaDB.missing_requirements() + Prometheus.missing_requirements(), "the stack")
    with MariaDB() as m:
        yield m


def vmaild_config(db: seed.SeedDatabase, base: Path, ports: dict[str, int]) -> str:
    return config_text(
        db_port=db.mariadb.port,
        dbname=db.dbname,
        user=db.user,
        password=db.password,
        socketmap_port=ports["socketmap"],
        metrics_port=ports["metrics"],
        control_path=str(base / "control.sock"),
        cache="ttl = 1\nnegative_ttl = 1\nstale_ttl = 3600",
        db_hosts=f"127.0.0.1:{db.mariadb.port}, unix:{db.mariadb.socket}",
        database=f"write_hosts = 127.0.0.1:{db.mariadb.port}\nlag_check_interval = 0.5",
        extra=(
            f"[auth]\nlisten = unix:{base / 'auth.sock'}\npassword_rounds = 5000\n"
            "fail_delay = 0.05\nfail_delay_max = 0.1\nblock_pair_after = 2\n\n"
            f"[sasl]\nlisten = 127.0.0.1:{ports['sasl']}\nmax_connections = 1\n\n"
            f"[policy]\nlisten = 127.0.0.1:{ports['policy']}\n\n"
            f"[mailbox]\nbase = {base / 'vmail'}\n"
        ),
    )


def series_total(metrics_text: str, family: str) -> float:
    """The sum of every sample of one counter family in vmaild's /metrics text."""
    for f in text_string_to_metric_families(metrics_text):
        if f.name == family:
            return sum(s.value for s in f.samples if s.name == f"{family}_total")
    return 0.0


def changed(db: seed.SeedDatabase, c: Clients, n: int) -> None:
    """A forwarding added behind vmaild's back: the table's trigger logs the key, and the
    change feed (check_interval, 1 s) applies it as a targeted drop. Waits for the drop."""
    before = series_total(c.metrics(), "vmaild_cache_drops")
    db.mariadb.query(
        "INSERT INTO forwardings (source, destination) VALUES (%s, %s)",
        (f"monitor-{n}@raecoo.com", USER),
        database=db.dbname,
    )
    wait_until(
        lambda: series_total(c.metrics(), "vmaild_cache_drops") > before,
        20,
        "vmaild to apply the change log as a targeted drop",
        interval=0.1,
    )


def scraped(prom: Prometheus, v: Vmaild, metrics_port: int) -> None:
    """Wait until Prometheus holds a sample taken after everything vmaild counted so far."""
    text = v.metrics_text(metrics_port)
    families = (
        "vmaild_lookups",
        "vmaild_auth_requests",
        "vmaild_policy_decisions",
        "vmaild_sasl_requests",
        "vmaild_cache_drops",
    )
    for family in families:
        want = series_total(text, family)

        def seen(family: str = family, want: float = want) -> bool:
            got = prom.query(f"sum({family}_total)")
            return bool(got) and float(got[0]["value"][1]) >= want

        wait_until(seen, 20, f"Prometheus to scrape {family}_total >= {want}", interval=0.2)


def without_data(prom: Prometheus) -> list[str]:
    """The dashboard's expressions that return nothing, or nothing but NaN."""
    missing = []
    for title, expr in dashboard_expressions():
        values = [float(s["value"][1]) for s in prom.query(substituted(expr))]
        if not any(math.isfinite(x) for x in values):
            missing.append(f"{title}: {expr} -> {values}")
    return missing


def test_every_dashboard_expression_returns_data(own_mariadb: MariaDB) -> None:
    db = seed.load_seed(own_mariadb)
    base = shared_tempdir("vmaild-monitoring-")
    ports = {
        "socketmap": free_port(),
        "policy": free_port(),
        "metrics": free_port(),
        "sasl": free_port(),
    }
    config = vmaild_config(db, base, ports)
    vmaild = Vmaild(config, base / "vmaild")
    vmaild.migrate()
    clients = Clients(
        ports["socketmap"],
        ports["policy"],
        base / "auth.sock",
        base / "control.sock",
        ports["sasl"],
        ports["metrics"],
    )
    target = f"127.0.0.1:{ports['metrics']}"
    try:
        with vmaild as v, Prometheus({"vmaild": [target]}, [RULES]) as prom:
            wait_until(
                lambda: prom.query('up{job="vmaild"} == 1'),
                20,
                "Prometheus to scrape vmaild",
                interval=0.1,
            )
            # Twice, each scraped: most labelled series exist only from their first
            # increment, and a rate or increase needs a rise after the first sample.
            for n in range(2):
                v.reload()  # reloads_total{result="ok"}; a reload empties the cache: first
                traffic_with_database(clients)
                changed(db, clients, n)
                scraped(prom, v, ports["metrics"])
            assert not [r for r in v.log().splitlines() if "Traceback" in r]

            own_mariadb.stop()

            def all_data() -> bool:
                traffic_without_database(clients)
                return not without_data(prom)

            try:
                wait_until(all_data, 60, "data for every dashboard expression", interval=0.5)
            except HarnessTimeout:
                pytest.fail("no data:\n" + "\n".join(without_data(prom)), pytrace=False)

            def active_alerts() -> set[str]:
                return {
                    a["labels"]["alertname"]
                    for a in prom.api("alerts")["alerts"]
                    if a["state"] in ("pending", "firing")
                }

            def outage_alerts() -> bool:
                traffic_without_database(clients)
                return OUTAGE_ALERTS <= active_alerts()

            try:
                wait_until(outage_alerts, 30, "the outage's alerts", interval=0.5)
            except HarnessTimeout:
                pytest.fail(
                    f"alerts {sorted(OUTAGE_ALERTS)} expected, active: {sorted(active_alerts())}",
                    pytrace=False,
                )
            # Every rule evaluates on vmaild's real series without an error.
            rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
            assert sorted(r["name"] for r in rules) == sorted(rule_names())
            assert all(r["health"] == "ok" for r in rules), rules
            pid = prom.pid
        assert pid is not None and not Path(f"/proc/{pid}").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
