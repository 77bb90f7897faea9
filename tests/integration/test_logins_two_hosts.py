"""A brute-force run against two vmaild hosts sharing one database, through real Postfix.

Two mail hosts (each a ``vmaild serve`` with ``[sasl]`` and its own Postfix with the shipped
``smtpd_sasl_type = dovecot`` settings) share one MariaDB. SMTP clients connect from
different loopback addresses (127.0.0.2 ... 127.0.0.5), which Postfix passes to vmaild as
the client's address (``rip=``); loopback is taken out of ``trusted_networks`` here. The
thresholds are small so that the run is short: from the 2nd failure a delay, a pair (login
from one address) blocked at the 3rd, an address at the 6th, a login at the 8th.

What it shows, in order (README "Brute-force defence" states the rule):
- failures through host 1 block the same attacker on host 2 (counts are in the database);
- a blocked attacker is refused even with the right password, as a wrong password looks;
- the owner of the login, from an address of their own, keeps logging in on both hosts,
  also once the login itself is blocked (a login-wide block only slows known addresses);
- an address blocked after failing on several logins is refused for any login;
- where the address is unknown (the authpipe door, Courier IMAP/POP3), a login-wide block
  refuses: the stated price of that door;
- the shipped fail2ban filter, run with the real ``fail2ban-regex`` over both hosts' logs,
  finds every failure from a known address, with that address, and nothing of the owner's.
"""

from __future__ import annotations

import base64
import re
import shutil
import smtplib
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.common.ports import free_port
from harness.common.tempdir import shared_tempdir
from harness.mariadb.server import MariaDB
from harness.postfix.config import vmaild_socket_dir
from harness.postfix.server import Postfix
from harness.stack import shipped
from harness.stack.seed import SeedDatabase, load_seed
from harness.vmaild.server import Vmaild, config_text
from tests.integration.conftest import require
from tests.integration.test_guard_fail2ban import COMMON, fail2ban_regex, installed
from vmaild import passwords

VICTIM, VICTIM_PW = "victim@example.test", "the-victims-password"
OTHER, OTHER_PW = "other@example.test", "the-others-password"
ATTACKER_A, ATTACKER_B, OWNER, ATTACKER_C = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
GUARD = (
    "fail_delay = 0.2\nfail_delay_max = 0.4\nfail_delay_after = 2\nfail_window = 600\n"
    "block_pair_after = 3\nblock_address_after = 6\nblock_login_after = 8\nblock_time = 600\n"
    "trusted_networks = 192.0.2.1/32\n"  # not loopback: the clients here are 127.0.0.x
)


@dataclass
class Host:
    vmaild: Vmaild
    postfix: Postfix
    metrics_port: int
    auth_socket: Path

    def metric(self, name: str, **labels: str) -> float:
        text = self.vmaild.metrics_text(self.metrics_port)
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = rf"^{re.escape(name)}(?:\{{{re.escape(want)}\}})? ([0-9.e+]+)$"
        m = re.search(pattern, text, re.M)
        return float(m.group(1)) if m else 0.0


@dataclass
class Hosts:
    db: MariaDB
    seed: SeedDatabase
    one: Host
    two: Host


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    require(MariaDB.missing_requirements() + Postfix.missing_requirements(), "MariaDB, Postfix")
    require([] if shutil.which("fail2ban-regex") and COMMON.exists() else ["fail2ban"], "fail2ban")
    tmp = shared_tempdir("vmaild-two-hosts-")
    db = MariaDB()
    started: list[Vmaild | Postfix] = []
    try:
        db.start()
        seed = load_seed(db)
        (tmp / "vmail").mkdir()
        built = []
        for name in ("one", "two"):
            shipped_cf = shipped.main_cf_settings(shipped.MAIN_CF)
            postfix = Postfix(
                {k: v for k, v in shipped_cf.items() if k.startswith("smtpd_sasl_")}
                | {"smtpd_tls_auth_only": "no"},
                basedir=tmp / f"postfix-{name}",
            )
            socket_dir = vmaild_socket_dir(postfix.queue_dir)
            metrics_port = free_port()
            auth_socket = tmp / f"auth-{name}.sock"
            conf = config_text(
                db_port=db.port,
                dbname=seed.dbname,
                user=seed.user,
                password=seed.password,
                metrics_port=metrics_port,
                extra=(
                    f"[auth]\nlisten = unix:{auth_socket}\npassword_rounds = 5000\n{GUARD}\n"
                    f"[sasl]\nlisten = unix:{socket_dir / 'auth'}\n\n"
                    f"[mailbox]\nbase = {tmp / 'vmail'}\n"
                ),
            )
            vmaild = Vmaild(conf, tmp / f"vmaild-{name}")
            built.append(Host(vmaild, postfix, metrics_port, auth_socket))
        built[0].vmaild.migrate()
        for address, password in ((VICTIM, VICTIM_PW), (OTHER, OTHER_PW)):
            db.query(
                "INSERT INTO users (email, password) VALUES (%s, %s)",
                (address, passwords.hash_password(password, "sha512_crypt", 5000)),
                database=seed.dbname,
            )
        for h in built:
            h.vmaild.start()
            started.append(h.vmaild)
            h.postfix.start()
            started.append(h.postfix)
        yield Hosts(db, seed, built[0], built[1])
    finally:
        for service in reversed(started):
            if isinstance(service, Postfix):
                service.cleanup()
            else:
                service.stop()
        db.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def smtp_auth(host: Host, client: str, user: str, password: str) -> int:
    """AUTH PLAIN from the loopback address ``client``; the reply code."""
    with smtplib.SMTP(
        host.postfix.host, host.postfix.smtp_port, timeout=60, source_address=(client, 0)
    ) as s:
        s.ehlo("client.example")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        code, _ = s.docmd("AUTH", f"PLAIN {token}")
        return code


def authpipe_login(host: Host, user: str, password: str) -> bool:
    """One AUTH on the host's authpipe socket (as vmaild-authpipe relays Courier's)."""
    body = f"imap\nlogin\n{user}\n{password}\n".encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(host.auth_socket))
        s.sendall(b"AUTH %d\n" % len(body) + body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply == b"FAIL\n" or reply.endswith(b"\n.\n"), reply  # never a tempfail here
    return reply != b"FAIL\n"


def test_brute_force_from_two_addresses_against_two_hosts(hosts: Hosts, tmp_path: Path) -> None:
    one, two = hosts.one, hosts.two
    # Attacker A guesses the victim's password through host 1: 535 each time, the 2nd and
    # 3rd answered after a delay, and the 3rd blocks the pair (A, victim).
    for guess in ("guess-1", "guess-2", "guess-3"):
        assert smtp_auth(one, ATTACKER_A, VICTIM, guess) == 535
    assert one.metric("vmaild_login_guard_delays_total") >= 2
    assert one.metric("vmaild_login_guard_blocks_total", kind="pair") == 1
    # The block is in the database: host 2 refuses A, even with the right password,
    # and looks exactly like a wrong password.
    assert smtp_auth(two, ATTACKER_A, VICTIM, VICTIM_PW) == 535
    assert two.metric("vmaild_login_guard_refusals_total", kind="pair") == 1
    # The owner, from an address of their own, logs in on both hosts.
    assert smtp_auth(two, OWNER, VICTIM, VICTIM_PW) == 235
    assert smtp_auth(one, OWNER, VICTIM, VICTIM_PW) == 235

    # Attacker B does the same through host 2: blocked as a pair too (6 failures on the
    # login now, from two addresses).
    for guess in ("guess-4", "guess-5", "guess-6"):
        assert smtp_auth(two, ATTACKER_B, VICTIM, guess) == 535
    assert smtp_auth(one, ATTACKER_B, VICTIM, VICTIM_PW) == 535

    # A turns to other names (unknown ones count like real ones): its 6th failure blocks
    # the address, and then A is refused for every login, here OTHER's right password.
    for name in ("nobody-1@example.test", "nobody-2@example.test", "nobody-3@example.test"):
        assert smtp_auth(two, ATTACKER_A, name, "whatever") == 535
    assert smtp_auth(one, ATTACKER_A, OTHER, OTHER_PW) == 535
    assert one.metric("vmaild_login_guard_refusals_total", kind="address") == 1

    # C brings the victim's login to its 8th failure: the login itself is blocked.
    for guess in ("guess-7", "guess-8"):
        assert smtp_auth(one, ATTACKER_C, VICTIM, guess) == 535
    blocks = sum(h.metric("vmaild_login_guard_blocks_total", kind="login") for h in (one, two))
    assert blocks == 1
    # The rule: a login-wide block alone never refuses a known address that is not itself
    # blocked. The owner still logs in, through either host; OTHER is untouched.
    assert smtp_auth(one, OWNER, VICTIM, VICTIM_PW) == 235
    assert smtp_auth(two, OWNER, VICTIM, VICTIM_PW) == 235
    assert smtp_auth(two, OWNER, OTHER, OTHER_PW) == 235
    # Where the address is unknown (authpipe: Courier IMAP/POP3), the login-wide block
    # refuses, even the right password; other accounts are not affected.
    assert not authpipe_login(one, VICTIM, VICTIM_PW)
    assert authpipe_login(two, OTHER, OTHER_PW)

    # Nothing bypassed the database: both hosts saw the same counts.
    rows = hosts.db.query(
        "SELECT kind, failures FROM login_failures WHERE subject LIKE %s AND kind = 'login'",
        (VICTIM,),
        database=hosts.seed.dbname,
    )
    assert [tuple(r) for r in rows] == [("login", 8)]

    # fail2ban over both hosts' logs: every failure from a known address, with that
    # address; none of the owner's logins; no refusal (it is not a new guess).
    log = tmp_path / "vmaild.log"
    log.write_text(one.vmaild.log() + two.vmaild.log())
    matched, _, ips = fail2ban_regex(log, installed(tmp_path))
    assert ips == Counter({ATTACKER_A: 6, ATTACKER_B: 3, ATTACKER_C: 2})
    assert matched == 11
    assert VICTIM_PW not in log.read_text() and "guess-" not in log.read_text()
