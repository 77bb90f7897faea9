"""App passwords, access switches and the login history through the real ``vmaild serve``
(its auth socket, as vmaild-authpipe relays Courier's requests) on a migrated seed database,
administered with the real ``vmailctl``.

Skipped while the login core does not consult app passwords and access switches yet
(checked by behaviour: with ``imap_access = app`` the main password must stop working).
The IMAP, POP3 and SMTP clients end to end are the lead's test, after the wiring.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness.common.ports import free_port
from harness.common.wait import wait_until
from harness.stack.seed import SeedDatabase
from harness.vmaild.server import Vmaild, config_text

pytestmark = pytest.mark.integration

VMAILCTL = str(Path(sys.executable).parent / "vmailctl")
USER, PASSWORD = "sales@raecoo.com", "password"  # a seed account and its DES password


def auth(sock: Path, service: str, user: str, password: str) -> bytes:
    """One AUTH request on vmaild's auth socket (PROTOCOLS.md 4.4), read to EOF."""
    body = f"{service}\nlogin\n{user}\n{password}\n".encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15)
        s.connect(str(sock))
        s.sendall(b"AUTH %d\n" % len(body) + body)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def ok(reply: bytes) -> bool:
    assert reply in (b"FAIL\n",) or reply.endswith(b"\n.\n"), reply  # never a tempfail here
    return reply.endswith(b"\n.\n")


def test_app_passwords_and_switches_through_vmaild(seed_db: SeedDatabase, tmp_path: Path) -> None:
    sock = tmp_path / "auth.sock"
    text = config_text(
        db_port=seed_db.mariadb.port,
        dbname=seed_db.dbname,
        user=seed_db.user,
        password=seed_db.password,
        metrics_port=free_port(),
        extra=f"[auth]\nlisten = unix:{sock}\nhistory_interval = 1\n"
        "fail_delay = 0\n"  # rapid wrong passwords on purpose: no early refusals here
        f"[mailbox]\nbase = {tmp_path}/vmail\n",
    )
    v = Vmaild(text, tmp_path / "vmaild")
    v.migrate()

    def ctl(*args: str) -> str:
        done = subprocess.run(
            [VMAILCTL, "-c", str(v.config_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def login(service: str, password: str) -> bool:
        return ok(auth(sock, service, USER, password))

    with v:
        assert login("imap", PASSWORD)
        ctl("user", "set", USER, "--imap", "app")
        if login("imap", PASSWORD):
            pytest.skip("the login core does not consult access switches yet (not wired)")
        app = json.loads(
            ctl("--json", "app-password", "add", USER, "--name", "phone", "--service", "imap,pop3")
        )["secret"]
        office = json.loads(
            ctl(
                "--json",
                "app-password",
                "add",
                USER,
                "--name",
                "office",
                "--network",
                "192.0.2.0/24",
            )
        )["secret"]
        assert login("imap", app)
        assert login("imap", app.upper().replace("-", ""))
        assert login("pop3", app) and login("pop3", PASSWORD)
        assert not login("smtp", app)  # not one of its services
        assert login("smtp", PASSWORD)
        # Restricted to networks: the authpipe path does not know the client's address.
        assert not login("imap", office)
        ctl("user", "set", USER, "--pop3", "off")
        assert not login("pop3", app) and not login("pop3", PASSWORD)
        seed_db.mariadb.query(
            "UPDATE app_passwords SET expires_at = NOW() - INTERVAL 1 SECOND WHERE name = 'phone'",
            database=seed_db.dbname,
        )
        assert not login("imap", app)
        seed_db.mariadb.query(
            "UPDATE app_passwords SET expires_at = NULL WHERE name = 'phone'",
            database=seed_db.dbname,
        )
        assert login("imap", app)
        ctl("app-password", "revoke", USER, "phone")
        assert not login("imap", app)  # at once

        def history() -> list[tuple[object, ...]]:
            return seed_db.mariadb.query(
                "SELECT service, last_address FROM login_history WHERE email = %s ORDER BY service",
                (USER,),
                database=seed_db.dbname,
            )

        wait_until(lambda: len(history()) == 3, timeout=30, what="the login history written")
        assert history() == [("imap", None), ("pop3", None), ("smtp", None)]
        shown = json.loads(ctl("--json", "user", "show", USER))
        assert shown["access"] == {"imap": "app", "pop3": "off", "smtp": "on"}
        assert set(shown["last_login"]) == {"imap", "pop3", "smtp"}
        used = json.loads(ctl("--json", "app-password", "list", USER))
        assert [(a["name"], a["last_used_at"]) for a in used] == [("office", None)]
