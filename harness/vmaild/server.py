"""Run the real ``vmaild serve`` as a subprocess for tests, benchmarks and the demo.

Readiness is the daemon's own systemd notification: the harness binds a datagram socket,
passes it as NOTIFY_SOCKET and waits for ``READY=1`` -- the same signal systemd waits for
with ``Type=notify``, so the tests exercise it too. No sleeps, no port polling.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness.common.ports import free_port
from harness.stack import seed
from harness.vmaild.activation import ListeningSockets

# The tutorial's four queries, verbatim (the mailboxes one spans two lines, which the INI
# file keeps as an indented continuation line).
SEED_QUERIES = seed.SEED_QUERIES


def config_text(
    *,
    db_port: int,
    dbname: str,
    user: str,
    password: str,
    ports: dict[str, int] | None = None,
    socketmap_port: int | None = None,
    metrics_port: int | None = None,
    control_path: str | None = None,
    extra: str = "",
    cache: str = "",
    queries: dict[str, str] | None = None,
    catchall_maps: tuple[str, ...] = ("forwardings",),
    chains: dict[str, str] | None = None,
    map_options: dict[str, str] | None = None,
    snapshot: str = "",
    db_hosts: str | None = None,
    database: str = "",
) -> str:
    """A vmaild.conf for the seed's four maps against a private MariaDB.
    ``map_options``: more ``key = value`` lines for a map's section, by map name.
    ``snapshot``: ``[cache] snapshot``; off by default, so that no two test daemons share
    the default path's file. ``db_hosts``: ``[database] hosts`` instead of ``db_port``'s
    server (several, for a replicated database); ``database``: more ``[database]`` lines
    (``write_hosts``, ``max_lag``...)."""
    lines = [
        "[database]",
        f"hosts = {db_hosts or f'127.0.0.1:{db_port}'}",
        f"user = {user}",
        f"password = {password}",
        f"dbname = {dbname}",
        "connect_timeout = 1",
        "query_timeout = 2",
        "pool_size = 4",
        "retry_interval = 1",
        database.strip(),
        "",
    ]
    lines += ["[cache]", f"snapshot = {snapshot}", cache.strip(), ""]
    for name, query in (queries or SEED_QUERIES).items():
        lines += [f"[map {name}]", f"query = {query}"]
        if ports and name in ports:
            lines.append(f"tcp = 127.0.0.1:{ports[name]}")
        if name in catchall_maps:
            lines.append("catchall = yes")
        chain = (chains if chains is not None else {"forwardings": "email2email"}).get(name)
        if chain and chain in (queries or SEED_QUERIES):
            lines.append(f"chain = {chain}")
        if map_options and name in map_options:
            lines.append(map_options[name].strip())
        lines.append("")
    if socketmap_port:
        lines += ["[socketmap]", f"listen = 127.0.0.1:{socketmap_port}", ""]
    if metrics_port:
        lines += ["[metrics]", f"listen = 127.0.0.1:{metrics_port}", ""]
    if control_path:
        lines += ["[control]", f"listen = unix:{control_path}", ""]
    lines += ["[log]", "level = debug", "", extra]
    return "\n".join(lines) + "\n"


class Vmaild:
    """One ``vmaild serve`` process with its own config file and log."""

    def __init__(
        self,
        config: str,
        workdir: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        sockets: ListeningSockets | None = None,
    ):
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="vmaild-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "vmaild.conf"
        self.config_path.write_text(config)
        self.log_path = self.workdir / "vmaild.log"
        self.env = env or {}
        # Passed at every start, the way systemd passes vmaild.socket's (activation.py).
        self.sockets = sockets
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None

    def migrate(self) -> None:
        """``vmailctl db migrate`` on this instance's database (its config file); a failure
        raises with vmailctl's message."""
        vmailctl = Path(sys.executable).parent / "vmailctl"
        done = subprocess.run(
            [str(vmailctl), "-c", str(self.config_path), "db", "migrate"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"vmailctl db migrate: exit {done.returncode}: {done.stderr}")

    # -- process control ---------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> Vmaild:
        notify_path = str(self.workdir / "notify.sock")
        if os.path.exists(notify_path):
            os.unlink(notify_path)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(notify_path)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path, **self.env)
        env.pop("VMAILD_CONFIG", None)
        log = open(self.log_path, "ab")
        argv = [sys.executable, "-m", "vmaild.cli", "serve", "-c", str(self.config_path)]
        if self.sockets is not None:
            argv = self.sockets.command(argv)
        self.proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            pass_fds=self.sockets.pass_fds() if self.sockets is not None else (),
        )
        log.close()
        self.wait_for("READY=1", timeout)
        return self

    def wait_for(self, state: str, timeout: float = 15.0) -> None:
        """Wait for a notification line such as READY=1 (after start or SIGHUP)."""
        assert self._notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vmaild exited with {self.proc.returncode}:\n{self.log()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"vmaild did not send {state}:\n{self.log()}")
            self._notify.settimeout(min(left, 0.2))
            try:
                msg = self._notify.recv(4096).decode()
            except TimeoutError:
                continue
            if state in msg.split("\n"):
                return

    def reload(self, timeout: float = 15.0) -> None:
        """SIGHUP and wait until the daemon says it is ready again (reloaded or refused)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        self.wait_for("RELOADING=1", timeout)
        self.wait_for("READY=1", timeout)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> Vmaild:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- observation ---------------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def metrics_text(self, port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body: bytes = r.read()
            return body.decode()


def seed_ports() -> dict[str, int]:
    """A free port for each of the seed's four maps."""
    return {name: free_port() for name in SEED_QUERIES}
