"""Socket activation (systemd/vmaild.socket): the real ``vmaild serve`` started the way
systemd starts it, with Postfix's sockets passed from fd 3 on (harness/vmaild/activation.py
plays systemd: the test holds the sockets across vmaild processes).

What the socket unit is for: the sockets outlive a restart. A client that connects while
vmaild is down (an smtpd starting up, a lookup) waits in the backlog and is answered by
the next process, instead of ENOENT/ECONNREFUSED (an smtpd that cannot reach its SASL
socket exits, and Postfix's master throttles the service for 60 s). vmaild uses the
passed sockets as they are: no new bind, no chmod, and stop leaves the files.
"""

from __future__ import annotations

import os
import select
import shutil
import smtplib
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.common.tempdir import shared_tempdir
from harness.common.wait import wait_until
from harness.postfix.config import vmaild_socket_dir
from harness.postfix.server import Postfix
from harness.stack import seed, shipped
from harness.vmaild.activation import ListeningSockets
from harness.vmaild.server import Vmaild, config_text
from tests.integration.conftest import require

pytestmark = pytest.mark.integration

# SocketMode= here, so that a chmod by vmaild (its own sockets are 0660) would show.
MODE = 0o640
AUTHPIPE = Path(sys.executable).parent / "vmaild-authpipe"


@dataclass
class Activated:
    sockets: ListeningSockets
    paths: dict[str, Path]  # by FileDescriptorName=
    inodes: dict[str, int]
    vmaild: Vmaild

    def unchanged(self) -> bool:
        """Every passed socket file is still the one the "socket unit" bound, mode as set."""
        for name, path in self.paths.items():
            st = path.lstat()
            if (st.st_ino, stat.S_IMODE(st.st_mode)) != (self.inodes[name], MODE):
                return False
        return True


@pytest.fixture
def activated(module_seed_db: seed.SeedDatabase) -> Iterator[Activated]:
    tmp = shared_tempdir("vmaild-activation-")
    sockets = ListeningSockets()
    paths = {name: tmp / name for name in ("sasl", "socketmap", "policy", "authpipe", "retired")}
    for name, path in paths.items():
        sockets.unix(name, str(path), MODE)
    (tmp / "vmail").mkdir()
    conf = config_text(
        db_port=module_seed_db.mariadb.port,
        dbname=module_seed_db.dbname,
        user=module_seed_db.user,
        password=module_seed_db.password,
        extra=(
            f"[socketmap]\nlisten = unix:{paths['socketmap']}\n\n"
            f"[sasl]\nlisten = unix:{paths['sasl']}\n\n"
            f"[policy]\nlisten = unix:{paths['policy']}\n\n"
            f"[auth]\nlisten = unix:{paths['authpipe']}\npassword_rounds = 5000\n"
            "query = SELECT email AS address, password FROM users WHERE email='%s'\n\n"
            f"[mailbox]\nbase = {tmp / 'vmail'}\n"
        ),
    )
    vmaild = Vmaild(conf, tmp / "vmaild", sockets=sockets)
    inodes = {name: path.lstat().st_ino for name, path in paths.items()}
    try:
        yield Activated(sockets, paths, inodes, vmaild)
    finally:
        vmaild.stop()
        sockets.close()
        shutil.rmtree(tmp, ignore_errors=True)


def netstring(text: str) -> bytes:
    data = text.encode()
    return b"%d:%s," % (len(data), data)


def read_netstring(sock: socket.socket) -> str:
    head = b""
    while not head.endswith(b":"):
        head += sock.recv(1)
    size = int(head[:-1])
    body = b""
    while len(body) < size + 1:
        chunk = sock.recv(size + 1 - len(body))
        assert chunk, "connection closed"
        body += chunk
    return body[:-1].decode()


def read_lines_until(sock: socket.socket, last: bytes) -> list[bytes]:
    data = b""
    while not data.endswith(last + b"\n"):
        chunk = sock.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data.splitlines()


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(path))  # ENOENT or ECONNREFUSED would raise here
    return sock


def nothing_to_read(sock: socket.socket) -> bool:
    return not select.select([sock], [], [], 0)[0]


def test_sockets_outlive_a_restart_and_waiting_clients_are_answered(
    activated: Activated,
) -> None:
    a, v = activated, activated.vmaild
    v.start()
    log = v.log()
    for name in ("sasl", "socketmap", "policy"):
        assert f"listening: {name} on unix:{a.paths[name]} (socket passed by systemd)" in log
    assert (
        f"systemd passed retired (unix:{a.paths['retired']}), which no listener in the"
        " configuration names; closed" in log
    )
    assert a.unchanged()  # used as passed: not bound again, not chmodded

    lookup = connect(a.paths["socketmap"])
    lookup.sendall(netstring("domains raecoo.com"))
    assert read_netstring(lookup) == "OK raecoo.com"

    v.reload()  # SIGHUP keeps every listener: same sockets, same files
    lookup.sendall(netstring("domains raecoo.com"))
    assert read_netstring(lookup) == "OK raecoo.com"
    lookup.close()
    assert a.unchanged()
    first = v.proc.pid if v.proc is not None else 0

    assert v.stop() == 0
    assert a.unchanged()  # stop leaves systemd's files

    # vmaild is down: connections are accepted by the kernel into the backlog, and wait.
    waiting_lookup = connect(a.paths["socketmap"])
    waiting_lookup.sendall(netstring("mailboxes sales@raecoo.com"))
    waiting_sasl = connect(a.paths["sasl"])
    waiting_sasl.sendall(b"VERSION\t1\t2\nCPID\t4242\n")
    assert nothing_to_read(waiting_lookup) and nothing_to_read(waiting_sasl)

    v.start()  # the next process, given the same sockets, answers them
    assert v.proc is not None and v.proc.pid != first
    assert read_netstring(waiting_lookup) == "OK raecoo.com/sales/"
    handshake = read_lines_until(waiting_sasl, b"DONE")
    assert b"MECH\tPLAIN\tplaintext" in handshake
    assert f"SPID\t{v.proc.pid}".encode() in handshake  # the new process's pid
    waiting_lookup.close()
    waiting_sasl.close()

    assert v.stop() == 0
    assert a.unchanged()


def relay_reply(relay: subprocess.Popen[bytes]) -> bytes:
    """One reply of the relay on its stdout, as authdaemond reads it (4.4): to ``.``."""
    assert relay.stdout is not None
    data = b""
    while not (data.endswith(b"\n.\n") or data == b"FAIL\n"):
        ready, _, _ = select.select([relay.stdout], [], [], 30)
        assert ready, f"no reply from the relay after {data!r}"
        chunk = os.read(relay.stdout.fileno(), 4096)
        assert chunk, f"the relay exited ({relay.wait()}) after {data!r}"
        data += chunk
    return data


def test_a_courier_relay_rides_through_a_restart(activated: Activated) -> None:
    """vmaild-local.socket: Courier's logins and maildrop's lookups reach vmaild through a
    vmaild-authpipe relay that keeps its connection. A restart closes that connection; the
    relay's next request connects again into the passed socket's backlog and is answered by
    the next vmaild, where without the socket unit it would find nobody listening and exit
    (authdaemond: a temporary failure, a refused login, a deferred delivery)."""
    a, v = activated, activated.vmaild
    v.start()
    env = {**os.environ, "VMAILD_CONFIG": str(v.config_path)}
    relay = subprocess.Popen(
        [str(AUTHPIPE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    assert relay.stdin is not None
    try:
        pre = b"PRE . imap sales@raecoo.com\n"
        relay.stdin.write(pre)
        relay.stdin.flush()
        assert b"ADDRESS=sales@raecoo.com\n" in relay_reply(relay)

        assert v.stop() == 0  # the relay's connection is closed with it
        assert a.unchanged()
        relay.stdin.write(pre)  # vmaild is down: the relay connects into the backlog
        relay.stdin.flush()
        assert not select.select([relay.stdout], [], [], 0.5)[0]
        assert relay.poll() is None

        v.start()
        assert b"ADDRESS=sales@raecoo.com\n" in relay_reply(relay)
        assert relay.poll() is None  # the same relay: it never gave up
    finally:
        relay.stdin.close()
        assert relay.wait(timeout=10) == 0


def test_without_passed_sockets_vmaild_binds_and_removes_its_own(
    module_seed_db: seed.SeedDatabase,
) -> None:
    """`vmaild serve` by hand (or the harness): as before the socket unit."""
    tmp = shared_tempdir("vmaild-activation-")
    path = tmp / "socketmap"
    conf = config_text(
        db_port=module_seed_db.mariadb.port,
        dbname=module_seed_db.dbname,
        user=module_seed_db.user,
        password=module_seed_db.password,
        extra=f"[socketmap]\nlisten = unix:{path}\n",
    )
    try:
        with Vmaild(conf, tmp / "vmaild") as v:
            assert f"listening: socketmap on unix:{path}\n" in v.log()
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
            lookup = connect(path)
            lookup.sendall(netstring("domains raecoo.com"))
            assert read_netstring(lookup) == "OK raecoo.com"
            lookup.close()
        assert not path.exists()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_an_smtpd_started_while_vmaild_restarts_waits_instead_of_exiting(
    module_seed_db: seed.SeedDatabase,
) -> None:
    """The case the socket unit is for: a new smtpd process (max_use=1: one per session)
    asks vmaild/auth for its mechanisms while vmaild is down. It waits in the backlog and
    its client gets 235 from the next vmaild; without the socket it would exit "fatal: no
    SASL authentication mechanisms" and the master would throttle the service for 60 s."""
    require(Postfix.missing_requirements(), "Postfix")
    tmp = shared_tempdir("vmaild-activation-")
    sockets = ListeningSockets()
    settings = shipped.main_cf_settings(shipped.MAIN_CF)
    postfix = Postfix(
        {
            **{k: v for k, v in settings.items() if k.startswith("smtpd_sasl_")},
            "smtpd_tls_auth_only": "no",
        },
        smtpd_args={"max_use": "1"},
        basedir=tmp / "postfix",
    )
    vmaild: Vmaild | None = None
    try:
        # As shipped: vmaild.tmpfiles' directory, vmaild.socket's socket (0660, group postfix).
        socket_dir = vmaild_socket_dir(postfix.queue_dir)
        assert settings["smtpd_sasl_path"] == "vmaild/auth"
        systemd = sockets.unix("sasl", str(socket_dir / "auth"), 0o660)
        (tmp / "vmail").mkdir()
        conf = config_text(
            db_port=module_seed_db.mariadb.port,
            dbname=module_seed_db.dbname,
            user=module_seed_db.user,
            password=module_seed_db.password,
            extra=(
                # The seed's schema as loaded (README "Logins"), left as it is.
                "[auth]\nquery = SELECT email AS address, password FROM users"
                " WHERE email='%s'\nrehash = no\n\n"
                f"[sasl]\nlisten = unix:{socket_dir / 'auth'}\n\n"
                f"[mailbox]\nbase = {tmp / 'vmail'}\n"
            ),
        )
        vmaild = Vmaild(conf, tmp / "vmaild", sockets=sockets)
        vmaild.start()
        postfix.start()
        user = "bob@example.test"
        assert smtp_login(postfix, user, seed.SEED_USERS[user]) == 235

        mark = postfix.log_mark()
        vmaild.stop()
        with ThreadPoolExecutor(1) as pool:
            during = pool.submit(smtp_login, postfix, user, seed.SEED_USERS[user])
            # Ready when the new smtpd has connected to vmaild/auth: systemd would see the
            # listening socket readable now (and start vmaild.service if it were stopped).
            wait_until(lambda: select.select([systemd], [], [], 0.2)[0], 30, "smtpd's connection")
            assert not during.done()
            vmaild.start()
            assert during.result(timeout=60) == 235
        log = postfix.log_text()[mark:]
        assert "fatal" not in log and "throttling" not in log, log
    finally:
        postfix.cleanup()
        if vmaild is not None:
            vmaild.stop()
        sockets.close()
        shutil.rmtree(tmp, ignore_errors=True)


def smtp_login(postfix: Postfix, user: str, password: str) -> int:
    with smtplib.SMTP(postfix.host, postfix.smtp_port, timeout=60) as s:
        s.ehlo()
        s.user, s.password = user, password
        try:
            return s.auth("PLAIN", s.auth_plain, initial_response_ok=True)[0]
        except smtplib.SMTPResponseException as e:
            return e.smtp_code
