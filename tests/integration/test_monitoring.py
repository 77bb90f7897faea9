"""monitoring/ against the real thing: promtool on the alert rules, and a real Prometheus
(Debian's package) scraping a real ``vmaild serve`` every second while it serves lookups,
logins and policy requests, first with its database up, then down.

Every expression of the Grafana dashboard must then return data through Prometheus's HTTP
API (with the dashboard's variables set as Grafana would: all instances, a rate window that
spans the traffic), and the alerts that the outage should raise must be pending or firing
on vmaild's real series (the unit tests in vmaild.rules.test.yml use series written by
hand: this catches a metric or label name the rules get wrong). No expression is exempt:
the traffic covers each one (stale answers, errors, fail actions and database errors come
from the outage; reloads, flushes, rehashes and the failure limit from the first phase).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
from collections.abc import Iterator
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
OUTAGE_ALERTS = {"VmaildDatabaseDown", "VmaildServingStale", "VmaildPolicyFailActions"}

USER, PASSWORD = "sales@raecoo.com", seed.SEED_USERS["sales@raecoo.com"]


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


@dataclass
class Clients:
    """Talks to one vmaild: socketmap, auth socket, policy service and control socket."""

    socketmap_port: int
    policy_port: int
    auth_sock: Path
    control_sock: Path

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
        data = "".join(f"{k}={v}\n" for k, v in request.items()) + "\n"
        with socket.create_connection(("127.0.0.1", self.policy_port), timeout=10) as s:
            s.sendall(data.encode())
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = s.recv(4096)
                if not chunk:
                    return ""
                reply += chunk
        return reply.decode().strip().removeprefix("action=")


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


def traffic_without_database(c: Clients) -> None:
    """The same while the database is down: a stale answer (found before, expired since:
    ttl = 1), a temporary error, a login that fails temporarily, policy fail actions."""
    assert c.lookup("mailboxes", USER) == b"OK raecoo.com/sales/"
    assert c.lookup("mailboxes", "new@raecoo.com").startswith(b"TEMP")
    assert c.login("bob@example.test", "bob-pw22") == b""
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
        extra=(
            f"[auth]\nlisten = unix:{base / 'auth.sock'}\npassword_rounds = 5000\n"
            "fail_delay = 0.05\nfail_delay_max = 0.1\n\n"
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


def scraped(prom: Prometheus, v: Vmaild, metrics_port: int) -> None:
    """Wait until Prometheus holds a sample taken after everything vmaild counted so far."""
    text = v.metrics_text(metrics_port)
    for family in ("vmaild_lookups", "vmaild_auth_requests", "vmaild_policy_decisions"):
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
    ports = {"socketmap": free_port(), "policy": free_port(), "metrics": free_port()}
    config = vmaild_config(db, base, ports)
    vmaild = Vmaild(config, base / "vmaild")
    vmaild.migrate()
    clients = Clients(
        ports["socketmap"], ports["policy"], base / "auth.sock", base / "control.sock"
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
            for _ in range(2):
                v.reload()  # reloads_total{result="ok"}; a reload empties the cache: first
                traffic_with_database(clients)
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
