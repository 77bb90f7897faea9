"""Operating the daemon: detaching with a pid file, draining on SIGTERM, unix sockets."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from harness.common.ports import free_port
from harness.common.procs import pid_alive, run
from harness.common.wait import wait_until
from harness.stack import seed
from harness.vmaild.server import Vmaild, config_text, seed_ports

pytestmark = pytest.mark.integration


def conf(db: seed.SeedDatabase, **kw: object) -> str:
    return config_text(
        db_port=db.mariadb.port, dbname=db.dbname, user=db.user, password=db.password, **kw
    )  # type: ignore[arg-type]


def test_daemon_mode_writes_pidfile_and_stops_on_sigterm(
    module_seed_db: seed.SeedDatabase, tmp_path: Path
) -> None:
    ports = seed_ports()
    cfg = tmp_path / "vmaild.conf"
    cfg.write_text(conf(module_seed_db, ports=ports))
    pidfile = tmp_path / "vmaild.pid"
    r = run(
        [
            sys.executable,
            "-m",
            "vmaild.cli",
            "serve",
            "--daemon",
            "--pidfile",
            str(pidfile),
            "-c",
            str(cfg),
        ],
        check=False,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr  # the parent returns once detached
    pid = int(
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the pid file")
    )
    try:
        table = f"tcp:127.0.0.1:{ports['mailboxes']}"
        out = wait_until(
            lambda: run(["postmap", "-q", "sales@raecoo.com", table], check=False).stdout.strip(),
            10,
            "an answer",
        )
        assert out == "raecoo.com/sales/"
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pid_alive(pid), 15, "the daemon to exit")
    assert not pidfile.exists()


def test_pidfile_without_daemon_is_a_usage_error(tmp_path: Path) -> None:
    cfg = tmp_path / "v.conf"
    cfg.write_text("[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n")
    r = run(
        [sys.executable, "-m", "vmaild.cli", "serve", "--pidfile", "/tmp/x", "-c", str(cfg)],
        check=False,
    )
    assert r.returncode == 2 and "--pidfile goes with --daemon" in r.stderr


def test_broken_config_stops_startup_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "v.conf"
    cfg.write_text(
        "[database]\nhosts = 127.0.0.1\nuser = u\ndbname = d\n[map x]\ntcp = 1.2.3.4:0\n"
    )
    r = run([sys.executable, "-m", "vmaild.cli", "serve", "-c", str(cfg)], check=False)
    assert r.returncode == 1
    assert r.stderr == f"vmaild: {cfg}: [map x] tcp: bad port '0' (1-65535)\n"


def test_sigterm_lets_a_request_in_progress_finish(
    module_seed_db: seed.SeedDatabase, tmp_path: Path
) -> None:
    port = free_port()
    slow = {"slow": "SELECT email FROM users WHERE email='%s' AND SLEEP(1) = 0"}
    with Vmaild(conf(module_seed_db, ports={"slow": port}, queries=slow), tmp_path) as v:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"get sales@raecoo.com\n")
        # SIGTERM only once the query is really running in MariaDB.
        running = (
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE INFO LIKE '%%SLEEP(1)%%' AND INFO NOT LIKE '%%PROCESSLIST%%'"
        )
        wait_until(lambda: module_seed_db.mariadb.query(running)[0][0] > 0, 10, "the slow query")
        assert v.proc is not None
        v.proc.send_signal(signal.SIGTERM)
        s.settimeout(10)
        assert s.recv(100) == b"200 sales@raecoo.com\n"
        assert v.proc.wait(15) == 0
        s.close()


def test_socketmap_on_a_unix_socket(module_seed_db: seed.SeedDatabase, tmp_path: Path) -> None:
    path = tmp_path / "sockmap.sock"
    extra = f"[socketmap]\nlisten = unix:{path}\n"
    with Vmaild(conf(module_seed_db, extra=extra), tmp_path):
        assert oct(path.stat().st_mode & 0o777) == "0o660"
        r = run(
            ["postmap", "-q", "sales@raecoo.com", f"socketmap:unix:{path}:email2email"], check=False
        )
        assert r.stdout.strip() == "sales@raecoo.com"
    assert not path.exists()


def test_stale_socket_file_is_replaced(module_seed_db: seed.SeedDatabase, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # a socket file nobody listens on, as a crash leaves it
    with Vmaild(conf(module_seed_db, extra=f"[socketmap]\nlisten = unix:{path}\n"), tmp_path):
        r = run(["postmap", "-q", "raecoo.com", f"socketmap:unix:{path}:domains"], check=False)
        assert r.stdout.strip() == "raecoo.com"


def test_port_in_use_fails_startup(module_seed_db: seed.SeedDatabase, tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        v = Vmaild(conf(module_seed_db, ports={"domains": port}), tmp_path)
        with pytest.raises(RuntimeError, match="exited with 1"):
            v.start()
        assert "cannot listen" in v.log()
    finally:
        busy.close()


def test_query_timeout_is_a_temporary_failure(
    module_seed_db: seed.SeedDatabase, tmp_path: Path
) -> None:
    """A query slower than query_timeout is abandoned: 400 within about the timeout."""
    import time

    port = free_port()
    slow = {"slow": "SELECT email FROM users WHERE email='%s' AND SLEEP(5) = 0"}
    cfg = conf(module_seed_db, ports={"slow": port}, queries=slow).replace(
        "query_timeout = 2", "query_timeout = 1"
    )
    with Vmaild(cfg, tmp_path):
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(10)
        started = time.monotonic()
        s.sendall(b"get sales@raecoo.com\n")
        reply = s.recv(100)
        took = time.monotonic() - started
        s.close()
    assert reply == b"400 temporary%20lookup%20failure\n"
    assert took < 4, took
