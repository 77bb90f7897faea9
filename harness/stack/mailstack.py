"""The whole seed on vmaild, from the shipped files: MariaDB, vmaild, Courier, Postfix.

:class:`MailStack` runs what an administrator gets from ``make install`` (README.md,
"Installing on a mail host"), on loopback in a sandbox directory, for the end-to-end tests,
the demo and the delivery benchmark:

* MariaDB with the seed tutorial's SQL (schema, optionally its rows), then
  ``vmailctl db migrate``, exactly as a seed site upgrades;
* ``vmaild serve`` from scripts/vmaild.conf.example (ports and paths moved into the
  sandbox), running as the mail owner ``vmail`` like systemd/vmaild.service does;
* Courier's authdaemond running vmaild-authpipe as /etc/courier/authProg, imapd and pop3d
  (STARTTLS) and their SSL variants, with the settings of courier/*.vmaild;
* a private Postfix with postfix/main.cf.vmaild (SMTP AUTH on vmaild's [sasl] socket),
  main.cf.policy, master.cf.vmaild (the maildrop service running postfix/vmaild-maildrop),
  postfix/sasl/smtpd.conf (the Cyrus alternative), and a generated certificate for STARTTLS;
* the ACL entry of systemd/vmaild.tmpfiles that lets maildrop (as vmail) reach
  authdaemond's socket.

What is global (Courier's compiled-in paths, that ACL) is backed up or undone on stop.

The configuration is built in :mod:`harness.stack.config`, the client side (SMTP, IMAP,
POP3, Maildirs, maillog) is in :mod:`harness.stack.clients`, and the variants of Postfix and
vmaild it runs in :mod:`harness.stack.procs`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.common.ports import free_port
from harness.common.procs import run
from harness.common.service import Service
from harness.common.tempdir import shared_tempdir
from harness.common.tls import Certificate, make_certificate
from harness.courier.server import Courier
from harness.courier.tls import TlsListener
from harness.mariadb.server import MariaDB
from harness.postfix.config import vmaild_socket_dir
from harness.stack import seed, shipped
from harness.stack.clients import StackClients
from harness.stack.config import StackConfig
from harness.stack.procs import StackPostfix, VmaildAsUser, can_run_python_as
from harness.vmaild.server import Vmaild

__all__ = [
    "ACL_XATTR",
    "AUTHDAEMON_DIR",
    "AUTHPIPE",
    "BIN",
    "HOSTNAME",
    "VMAIL_GID",
    "VMAIL_UID",
    "VMAILCTL",
    "MailStack",
]

BIN = Path(sys.executable).parent
VMAILCTL = BIN / "vmailctl"
AUTHPIPE = BIN / "vmaild-authpipe"
AUTHDAEMON_DIR = Path("/run/courier/authdaemon")
ACL_XATTR = "system.posix_acl_access"
VMAIL_UID = VMAIL_GID = 5000
HOSTNAME = "mail.example.test"


@dataclass
class MailStack(StackConfig, StackClients, Service):
    """The seed on vmaild, everything on loopback; use as a context manager.

    Configuration methods come from :class:`~harness.stack.config.StackConfig`, client
    methods (send, imap, pop3, submit, ...) from :class:`~harness.stack.clients.StackClients`."""

    basedir: Path | None = None
    seed_rows: bool = True
    vmaild_user: str = "vmail"
    tls: bool = True
    log_level: str = "info"
    extra_vmaild: dict[str, dict[str, str]] = field(default_factory=dict)
    extra_main_cf: dict[str, str] = field(default_factory=dict)
    lock_timeout: float = 600.0

    def __post_init__(self) -> None:
        self._owns_basedir = self.basedir is None
        self.sandbox = Path(self.basedir) if self.basedir else shared_tempdir("vmaild-stack-")
        self.sandbox.mkdir(parents=True, exist_ok=True)
        os.chmod(self.sandbox, 0o755)
        self.base = self.sandbox / "vmail"  # [mailbox] base, the seed's /home/vmail
        self.rundir = self.sandbox / "run"  # RuntimeDirectory=vmaild
        self.tls_dir = self.sandbox / "tls"
        self.ports = {name: free_port() for name in ("metrics", "submission")}
        # vmaild's sockets for Postfix, in the private Postfix's queue directory as in
        # production (/var/spool/postfix/vmaild): main.cf names them relative to it.
        self.postfix_dir = self.sandbox / "postfix"
        self.socket_dir = self.postfix_dir / "spool" / "vmaild"
        self.sockets = {name: self.socket_dir / name for name in ("socketmap", "policy")}
        self.sockets["sasl"] = self.socket_dir / "auth"  # main.cf: smtpd_sasl_path = vmaild/auth
        self.mariadb = MariaDB(self.sandbox / "mariadb")
        self.db = seed.SeedDatabase(self.mariadb)
        self.vmaild: Vmaild | None = None
        self.courier: Courier | None = None
        self.postfix: StackPostfix | None = None
        self.cert: Certificate | None = None
        self.tls_listeners: dict[str, TlsListener] = {}
        self._acl_before: bytes | None = None
        self._acl_applied = False
        self.config_path = self.sandbox / "vmaild" / "vmaild.conf"
        # pipe(8) runs the wrapper as vmail: a copy in the sandbox is reachable wherever
        # the checkout is (a repository under /root is not).
        self.wrapper = self.sandbox / "vmaild-maildrop"
        self.notes: list[str] = []
        self.timings: dict[str, float] = {}
        self.migrate_output = ""

    # ------------------------------------------------------------------ lifecycle
    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        """The start-up steps in order (the demo prints one line after each)."""
        return [
            ("tls", self._make_certificate),
            ("mariadb", self._start_mariadb),
            ("vmaild", self._start_vmaild),
            ("courier", self._start_courier),
            ("postfix", self._start_postfix),
        ]

    def start(self) -> MailStack:
        try:
            for name, step in self.steps():
                self.run_step(name, step)
        except BaseException:
            self.stop()
            raise
        return self

    def run_step(self, name: str, step: Callable[[], None]) -> None:
        started = time.monotonic()
        step()
        self.timings[name] = time.monotonic() - started

    def _make_certificate(self) -> None:
        if self.tls:
            self.cert = make_certificate(self.tls_dir, HOSTNAME)

    def _start_mariadb(self) -> None:
        self.mariadb.basedir.mkdir(exist_ok=True)
        self.mariadb.start()
        seed.load_seed(self.mariadb, rows=self.seed_rows)

    def _start_vmaild(self) -> None:
        # The seed's /home/vmail: owned by vmail (maildrop refuses a HOME owned by anyone
        # else, "Home directory owned by wrong user"), not world-writable.
        for path, mode in ((self.base, 0o750), (self.rundir, 0o750)):
            path.mkdir(exist_ok=True)
            os.chown(path, VMAIL_UID, VMAIL_GID)
            os.chmod(path, mode)
        # systemd/vmaild.tmpfiles: 2750 vmail:postfix (the queue directory above it is
        # root's, 0755, as Postfix makes it).
        vmaild_socket_dir(self.socket_dir.parent, VMAIL_UID)
        self.config_path.parent.mkdir(exist_ok=True)
        self.config_path.write_text(self.vmaild_config())
        os.chmod(self.config_path, 0o644)
        self.migrate_output = self.vmailctl("db", "migrate").stdout.strip()
        shutil.copy(shipped.MAILDROP_WRAPPER, self.wrapper)
        os.chmod(self.wrapper, 0o755)
        if self.vmaild_user and not can_run_python_as(self.vmaild_user):
            self.notes.append(
                f"vmaild runs as root: {self.vmaild_user} cannot run "
                f"{sys.executable} with the vmaild package (checkout not "
                "readable by it?)"
            )
            self.vmaild_user = ""
            # vmaild refuses socket directories owned by another user than itself or root.
            for path in (self.rundir, self.socket_dir):
                os.chown(path, 0, -1)
        if self.vmaild_user:
            self.vmaild = VmaildAsUser(
                self.config_path.read_text(), self.config_path.parent, user=self.vmaild_user
            )
        else:
            self.vmaild = Vmaild(self.config_path.read_text(), self.config_path.parent)
        self.vmaild.start()

    def _start_courier(self) -> None:
        self.courier = Courier(
            AUTHPIPE,
            auth_env={"VMAILD_CONFIG": str(self.config_path)},
            starttls=self.tls,
            login_env=self.courier_login_env(),
            basedir=self.sandbox / "courier",
            lock_timeout=self.lock_timeout,
        )
        (self.sandbox / "courier").mkdir(exist_ok=True)
        self.courier.start()
        self._apply_acl()
        if self.tls:  # Courier records them for crash recovery and stops them with itself
            for kind in ("imapd", "pop3d"):
                self.tls_listeners[kind] = self.courier.start_tls_listener(
                    kind, free_port(), self.sandbox / "courier" / f"{kind}-ssl.log"
                )

    def _start_postfix(self) -> None:
        self.postfix = StackPostfix(
            self.postfix_main_cf(),
            self.postfix_master_cf(),
            basedir=self.postfix_dir,
            myhostname=HOSTNAME,
        )
        self.postfix.write_config_file("sasl/smtpd.conf", shipped.SASL_CONF.read_text())
        self.postfix.start()

    def stop(self) -> None:
        """Stop everything that runs, undo the global changes; keeps the sandbox."""
        if self.postfix is not None:
            self.postfix.stop()
        for listener in self.tls_listeners.values():
            listener.stop()
        self._remove_acl()
        if self.courier is not None:
            self.courier.stop()
        if self.vmaild is not None:
            self.vmaild.stop()
        self.mariadb.stop()

    def service_dir(self) -> Path:
        return self.sandbox

    # ------------------------------------------------------ the tmpfiles ACL entry
    def _apply_acl(self) -> None:
        """Apply the ``a`` lines of systemd/vmaild.tmpfiles with systemd-tmpfiles itself
        (as at boot), remembering the directory's previous ACL for :meth:`_remove_acl`."""
        try:
            self._acl_before = os.getxattr(AUTHDAEMON_DIR, ACL_XATTR)
        except OSError:
            self._acl_before = None
        lines = [
            line
            for line in (shipped.SYSTEMD_DIR / "vmaild.tmpfiles").read_text().splitlines()
            if line.startswith("a")
        ]
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
            f.write("\n".join(lines) + "\n")
        try:
            run(["systemd-tmpfiles", "--create", f.name])
        finally:
            os.unlink(f.name)
        self._acl_applied = True

    def _remove_acl(self) -> None:
        if not self._acl_applied:
            return
        with contextlib.suppress(FileNotFoundError):
            if self._acl_before is None:
                with contextlib.suppress(OSError):
                    os.removexattr(AUTHDAEMON_DIR, ACL_XATTR)
            else:
                os.setxattr(AUTHDAEMON_DIR, ACL_XATTR, self._acl_before)
        self._acl_applied = False

    # ------------------------------------------------------------------ helpers
    def vmailctl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``vmailctl -c <sandbox config> ARGS`` (as root, like an administrator)."""
        return run(
            [str(VMAILCTL), "-c", str(self.config_path), *args],
            input=input,
            check=check,
            timeout=120,
        )

    def add_user(self, address: str, password: str, *extra: str) -> None:
        self.vmailctl("user", "add", address, "--password-stdin", *extra, input=password + "\n")

    def metrics(self) -> str:
        assert self.vmaild is not None
        return self.vmaild.metrics_text(self.ports["metrics"])

    def stop_vmaild(self) -> None:
        assert self.vmaild is not None
        self.vmaild.stop()

    def start_vmaild(self) -> None:
        assert self.vmaild is not None
        self.vmaild.start()

    def kill_vmaild(self) -> None:
        assert self.vmaild is not None and self.vmaild.proc is not None
        os.killpg(self.vmaild.proc.pid, signal.SIGKILL)
        self.vmaild.proc.wait()
        self.vmaild.stop()

    # ------------------------------------------------------------- the queue
    def hold_delivery(self) -> None:
        """Keep accepted mail in the queue (``defer_transports = maildrop``)."""
        assert self.postfix is not None
        self.postfix.postconf({"defer_transports": "maildrop"})

    def release_delivery(self) -> None:
        """Undo :meth:`hold_delivery` and ask for delivery of everything queued now."""
        assert self.postfix is not None
        run(["postconf", "-c", str(self.postfix.config_dir), "-X", "defer_transports"])
        self.postfix.reload()
        self.postfix.flush()
