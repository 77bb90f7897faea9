"""The whole seed on vmaild, from the shipped files: MariaDB, vmaild, Courier, Postfix.

:class:`MailStack` runs what an administrator gets from ``make install`` (issue 6), on
loopback in a sandbox directory, for the end-to-end tests, the demo and the delivery
benchmark:

* MariaDB with the seed tutorial's SQL (schema, optionally its rows), then
  ``vmailctl db migrate``, exactly as a seed site upgrades;
* ``vmaild serve`` from scripts/vmaild.conf.example (ports and paths moved into the
  sandbox), running as the mail owner ``vmail`` like systemd/vmaild.service does;
* Courier's authdaemond running vmaild-authpipe as /etc/courier/authProg, imapd and pop3d
  (STARTTLS) and their SSL variants, with the settings of courier/*.vmaild;
* a private Postfix with postfix/main.cf.vmaild, main.cf.policy, master.cf.vmaild (the
  maildrop service running postfix/vmaild-maildrop), postfix/sasl/smtpd.conf, and a
  generated certificate for STARTTLS;
* the ACL entry of systemd/vmaild.tmpfiles that lets maildrop (as vmail) reach
  authdaemond's socket.

What is global (Courier's compiled-in paths, that ACL) is backed up or undone on stop.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from . import seed, shared_tempdir, shipped
from .courier import COURIER_ETC, COURIERTCPD, IMAPD, IMAPLOGIN, POP3D, POP3LOGIN, Courier
from .mariadb import MariaDB
from .ports import LOOPBACK, free_port, wait_for_port
from .postfix import Postfix
from .procs import exited, run, stop_process, tail
from .service import Service
from .tls import Certificate, make_certificate
from .vmaild import Vmaild
from .wait import wait_until

BIN = Path(sys.executable).parent
VMAILCTL = BIN / "vmailctl"
AUTHPIPE = BIN / "vmaild-authpipe"
COURIERTLS = "/usr/bin/couriertls"
AUTHDAEMON_DIR = Path("/run/courier/authdaemon")
ACL_XATTR = "system.posix_acl_access"
VMAIL_UID = VMAIL_GID = 5000
HOSTNAME = "mail.example.test"
#: Keys of courier/*.vmaild that only place the listeners (the harness picks loopback ports).
_LISTENER_KEYS = {"ADDRESS", "PORT", "SSLADDRESS", "SSLPORT", "IMAPDSSLSTART", "IMAPDSTARTTLS",
                  "POP3DSSLSTART", "MAILDIRPATH"}
#: sha512_crypt rounds for new hashes: the default 656,000 costs ~0.5 s per login.
TEST_PASSWORD_ROUNDS = 5000


class StackPostfix(Postfix):
    """A private Postfix whose master.cf takes the shipped entries over the harness's
    defaults of the same name (the shipped ``maildrop`` replaces Debian's)."""

    def master_cf_text(self) -> str:
        entries: list[list[str]] = []
        for line in super().master_cf_text().splitlines():
            if line[:1].isspace() and entries:
                entries[-1].append(line)
            elif line.strip():
                entries.append([line])
        keys = [shipped.master_service_key(e[0]) for e in entries]
        kept = [e for i, e in enumerate(entries) if keys[i] not in keys[i + 1:]]
        return "".join(line + "\n" for e in kept for line in e)


class VmaildAsUser(Vmaild):
    """``vmaild serve`` as an unprivileged user (systemd/vmaild.service: User=vmail).

    Same readiness protocol as :class:`harness.vmaild.Vmaild` (READY=1 on NOTIFY_SOCKET);
    the notification socket is made writable for that user."""

    def __init__(self, config: str, workdir: str | os.PathLike[str], user: str = "vmail"):
        super().__init__(config, workdir)
        self.user = user

    def start(self, timeout: float = 15.0) -> Vmaild:
        notify_path = str(self.workdir / "notify.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(notify_path)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(notify_path)
        os.chmod(notify_path, 0o666)  # sendto() needs write permission on the socket
        env = dict(os.environ, NOTIFY_SOCKET=notify_path, **self.env)
        env.pop("VMAILD_CONFIG", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups",
                 sys.executable, "-m", "vmaild.cli", "serve", "-c", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                cwd="/")
        self.wait_for("READY=1", timeout)
        return self


@dataclass
class TlsListener:
    """couriertcpd with couriertls in front of imaplogin/pop3login: /usr/sbin/imapd-ssl
    (pop3d-ssl) without courierlogger, on 127.0.0.1:port."""

    kind: str  # "imapd" or "pop3d"
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        login, daemon = (IMAPLOGIN, IMAPD) if self.kind == "imapd" else (POP3LOGIN, POP3D)
        prefix = "IMAP" if self.kind == "imapd" else "POP3"
        # What the -ssl start scripts set for the implicit-TLS listener.
        settings = {**self.env, f"{prefix}_TLS": "1", f"{prefix}_STARTTLS": "NO",
                    f"{prefix}_TLS_REQUIRED": "0"}
        assignments = "; ".join(f"{k}={_sh(v)}" for k, v in settings.items())
        argv = [COURIERTCPD, f"-address={LOOPBACK}", "-maxprocs=200", "-maxperip=200",
                "-nodnslookup", "-noidentlookup", f"-stderr={self.log}", str(self.port),
                COURIERTLS, "-server", "-tcpd", "-user=courier", login, daemon, "Maildir"]
        script = (f"set -a; . {COURIER_ETC / self.kind}; . {COURIER_ETC / (self.kind + '-ssl')}; "
                  f"{assignments}; exec " + " ".join(_sh(a) for a in argv))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["/bin/sh", "-c", script],
                                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd="/")
        proc = self.proc
        wait_for_port(LOOPBACK, self.port, timeout,
                      abort=lambda: exited(proc, f"{self.kind}-ssl", self.log))

    def stop(self) -> None:
        stop_process(self.proc, timeout=10.0)
        self.proc = None


def _can_run_python_as(user: str) -> bool:
    """Can ``user`` run this interpreter and import vmaild (as systemd's User= would)?"""
    probe = run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                 sys.executable, "-c", "import vmaild.cli"], check=False, cwd="/")
    return probe.returncode == 0


def _sh(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


@dataclass
class Delivery:
    """One ``status=`` line of the maillog."""

    queue_id: str
    to: str
    relay: str
    status: str
    text: str


_STATUS = re.compile(r" postfix/(?P<svc>[\w/-]+)\[\d+\]: (?P<qid>[0-9A-F]+): to=<(?P<to>[^>]*)>,"
                     r".*? relay=(?P<relay>[^,]+),.*? status=(?P<status>\w+) (?P<text>.*)$",
                     re.M)


@dataclass
class MailStack(Service):
    """The seed on vmaild, everything on loopback; use as a context manager."""

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
        self.base = self.sandbox / "vmail"          # [mailbox] base, the seed's /home/vmail
        self.rundir = self.sandbox / "run"          # RuntimeDirectory=vmaild
        self.tls_dir = self.sandbox / "tls"
        self.ports = {name: free_port() for name in ("socketmap", "policy", "metrics")}
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

    # ------------------------------------------------------------ configuration
    def vmaild_config(self) -> str:
        """scripts/vmaild.conf.example with the sandbox's database, ports and paths."""
        cp = shipped.vmaild_example()
        cp["database"].update(hosts=f"127.0.0.1:{self.mariadb.port}", user=self.db.user,
                              password=self.db.password, dbname=self.db.dbname,
                              connect_timeout="1", retry_interval="1")
        cp["socketmap"]["listen"] = f"127.0.0.1:{self.ports['socketmap']}"
        cp["policy"]["listen"] = f"127.0.0.1:{self.ports['policy']}"
        cp["metrics"]["listen"] = f"127.0.0.1:{self.ports['metrics']}"
        cp["auth"]["listen"] = f"unix:{self.rundir / 'auth.sock'}"
        cp["auth"]["password_rounds"] = str(TEST_PASSWORD_ROUNDS)
        cp["control"]["listen"] = f"unix:{self.rundir / 'control.sock'}"
        cp["mailbox"]["base"] = str(self.base)
        cp["log"]["level"] = self.log_level
        for section, values in self.extra_vmaild.items():
            if not cp.has_section(section):
                cp.add_section(section)
            cp[section].update(values)
        return shipped.ini_text(cp)

    def replacements(self) -> dict[str, str]:
        """Production addresses and paths in the shipped files -> the sandbox's."""
        example = shipped.vmaild_example()
        reps = {example[section]["listen"]: f"127.0.0.1:{self.ports[section]}"
                for section in ("socketmap", "policy", "metrics")}
        tls = shipped.INSTALLED_TLS_DIR
        reps[f"{tls}/mail.key"] = str(self.tls_dir / "mail.key")
        reps[f"{tls}/mail.crt"] = str(self.tls_dir / "mail.crt")
        reps[f"{tls}/mail.pem"] = str(self.tls_dir / "mail.pem")
        reps[shipped.INSTALLED_WRAPPER] = str(self.wrapper)
        return reps

    def postfix_main_cf(self) -> dict[str, str]:
        reps = self.replacements()
        settings = {**shipped.main_cf_settings(shipped.MAIN_CF),
                    **shipped.main_cf_settings(shipped.MAIN_CF_POLICY)}
        settings = {k: shipped.relocate(v, reps) for k, v in settings.items()}
        if not self.tls:
            for key in ("smtpd_tls_chain_files", "smtpd_tls_security_level",
                        "smtpd_tls_auth_only", "smtpd_tls_loglevel"):
                settings.pop(key, None)
        # Test clients connect from 127.0.0.1 and play the internet: with loopback in
        # mynetworks (the harness default) permit_mynetworks would let them relay.
        settings["mynetworks"] = "192.0.2.1/32"
        return {**settings, **self.extra_main_cf}

    def postfix_master_cf(self) -> list[str]:
        """The shipped entries, except the public ``smtp inet`` listener: the harness
        listens on 127.0.0.1:<free port> instead, with the same columns (checked)."""
        reps = self.replacements()
        entries = []
        for entry in shipped.master_cf_entries():
            name, kind = shipped.master_service_key(entry)
            if kind == "inet":
                columns = entry.split()[2:7]
                if columns != ["n", "-", "n", "-", "-"] or entry.split()[7] != "smtpd":
                    raise ValueError(f"unexpected shipped listener {entry!r}: the harness "
                                     "runs smtpd with private=n unpriv=- chroot=n")
                continue
            entries.append(shipped.relocate(entry, reps))
        return entries

    def courier_login_env(self) -> dict[str, str]:
        """courier/{imapd,imapd-ssl,pop3d,pop3d-ssl}.vmaild, evaluated after the packaged
        files, minus the listener placement."""
        env: dict[str, str] = {}
        for name in ("imapd", "imapd-ssl", "pop3d", "pop3d-ssl"):
            env.update(shipped.courier_settings(name))
        reps = self.replacements()
        env = {k: shipped.relocate(v, reps) for k, v in env.items() if k not in _LISTENER_KEYS}
        env["TLS_CACHEFILE"] = ""  # the packaged cache file is global; go without one
        if not self.tls:
            env = {k: v for k, v in env.items() if "TLS" not in k}
        return env

    # ------------------------------------------------------------------ lifecycle
    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        """The start-up steps in order (the demo prints one line after each)."""
        return [("tls", self._make_certificate), ("mariadb", self._start_mariadb),
                ("vmaild", self._start_vmaild), ("courier", self._start_courier),
                ("postfix", self._start_postfix)]

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
        self.config_path.parent.mkdir(exist_ok=True)
        self.config_path.write_text(self.vmaild_config())
        os.chmod(self.config_path, 0o644)
        self.migrate_output = self.vmailctl("db", "migrate").stdout.strip()
        shutil.copy(shipped.MAILDROP_WRAPPER, self.wrapper)
        os.chmod(self.wrapper, 0o755)
        if self.vmaild_user and not _can_run_python_as(self.vmaild_user):
            self.notes.append(f"vmaild runs as root: {self.vmaild_user} cannot run "
                              f"{sys.executable} with the vmaild package (checkout not "
                              "readable by it?)")
            self.vmaild_user = ""
        if self.vmaild_user:
            self.vmaild = VmaildAsUser(self.config_path.read_text(), self.config_path.parent,
                                       user=self.vmaild_user)
        else:
            self.vmaild = Vmaild(self.config_path.read_text(), self.config_path.parent)
        self.vmaild.start()

    def _start_courier(self) -> None:
        self.courier = Courier(AUTHPIPE, auth_env={"VMAILD_CONFIG": str(self.config_path)},
                               starttls=self.tls, login_env=self.courier_login_env(),
                               basedir=self.sandbox / "courier",
                               lock_timeout=self.lock_timeout)
        (self.sandbox / "courier").mkdir(exist_ok=True)
        self.courier.start()
        self._apply_acl()
        if self.tls:
            for kind in ("imapd", "pop3d"):
                listener = TlsListener(kind, free_port(), self.courier.login_env,
                                       self.sandbox / "courier" / f"{kind}-ssl.log")
                self.tls_listeners[kind] = listener
                listener.start()

    def _start_postfix(self) -> None:
        self.postfix = StackPostfix(self.postfix_main_cf(), self.postfix_master_cf(),
                                    basedir=self.sandbox / "postfix", myhostname=HOSTNAME)
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
        lines = [line for line in (shipped.SYSTEMD_DIR / "vmaild.tmpfiles").read_text()
                 .splitlines() if line.startswith("a")]
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
    def vmailctl(self, *args: str, input: str | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        """``vmailctl -c <sandbox config> ARGS`` (as root, like an administrator)."""
        return run([str(VMAILCTL), "-c", str(self.config_path), *args], input=input,
                   check=check, timeout=120)

    def add_user(self, address: str, password: str, *extra: str) -> None:
        self.vmailctl("user", "add", address, "--password-stdin", *extra, input=password + "\n")

    def maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.base / domain / local

    def messages(self, address: str) -> list[Path]:
        box = self.maildir(address)
        found: list[Path] = []
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                found += [p for p in (box / sub).iterdir() if p.is_file()]
        return sorted(found)

    def count_tagged(self, address: str, tag: str) -> int:
        """How many messages in the Maildir carry ``tag`` (a unique Subject token)."""
        needle = tag.encode()
        return sum(1 for p in self.messages(address) if needle in p.read_bytes())

    def wait_for_messages(self, address: str, count: int, timeout: float = 30.0) -> list[Path]:
        assert self.postfix is not None
        try:
            wait_until(lambda: len(self.messages(address)) >= count, timeout,
                       f"{count} message(s) in {self.maildir(address)}", interval=0.05)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n--- maillog ---\n{tail(self.postfix.log_file, 40)}") from None
        return self.messages(address)

    def smtp(self, timeout: float = 30.0) -> smtplib.SMTP:
        assert self.postfix is not None
        return smtplib.SMTP(LOOPBACK, self.postfix.smtp_port, timeout=timeout)

    def client_tls(self) -> ssl.SSLContext:
        """Clients check the sandbox certificate and its name, as a careful MUA would."""
        assert self.cert is not None
        ctx = self.cert.client_context()
        ctx.check_hostname = False  # we connect to 127.0.0.1, the certificate names HOSTNAME
        return ctx

    def message(self, sender: str, recipients: Sequence[str], subject: str,
                body: str = "hello\n") -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = subject
        msg.set_content(body)
        return msg

    def send(self, sender: str, recipients: str | Sequence[str], subject: str,
             body: str = "hello\n", *, login: tuple[str, str] | None = None,
             starttls: bool = False) -> dict[str, tuple[int, bytes]]:
        """Send one message through Postfix; ``login`` implies STARTTLS (AUTH is offered
        only under TLS, smtpd_tls_auth_only). Returns smtplib's refused recipients."""
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        with self.smtp() as client:
            client.ehlo("client.example.net")
            if starttls or login:
                client.starttls(context=self.client_tls())
                client.ehlo("client.example.net")
            if login:
                client.login(*login)
            return client.send_message(self.message(sender, rcpts, subject, body),
                                       from_addr=sender, to_addrs=rcpts)

    @contextlib.contextmanager
    def imap(self, address: str, password: str, *, implicit_tls: bool = False
             ) -> Iterator[imaplib.IMAP4]:
        """A logged-in IMAP session: STARTTLS on the imapd port (IMAP_TLS_REQUIRED=1 in
        courier/imapd-ssl.vmaild), or IMAPS on the imapd-ssl port."""
        assert self.courier is not None and self.courier.imap_port is not None
        client: imaplib.IMAP4
        if implicit_tls:
            client = imaplib.IMAP4_SSL(LOOPBACK, self.tls_listeners["imapd"].port,
                                       ssl_context=self.client_tls(), timeout=30)
        else:
            client = imaplib.IMAP4(LOOPBACK, self.courier.imap_port, timeout=30)
            if self.tls:
                client.starttls(ssl_context=self.client_tls())
        try:
            client.login(address, password)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    @contextlib.contextmanager
    def pop3(self, address: str, password: str, *, implicit_tls: bool = False
             ) -> Iterator[poplib.POP3]:
        """A logged-in POP3 session (STLS on the pop3d port, or POP3S)."""
        assert self.courier is not None and self.courier.pop3_port is not None
        client: poplib.POP3
        if implicit_tls:
            client = poplib.POP3_SSL(LOOPBACK, self.tls_listeners["pop3d"].port,
                                     context=self.client_tls(), timeout=30)
        else:
            client = poplib.POP3(LOOPBACK, self.courier.pop3_port, timeout=30)
            if self.tls:
                client.stls(context=self.client_tls())
        try:
            client.user(address)
            client.pass_(password)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.quit()

    def imap_subjects(self, address: str, password: str, **kw: bool) -> list[str]:
        with self.imap(address, password, **kw) as m:
            typ, data = m.select("INBOX")
            count = int(data[0] or 0) if typ == "OK" else 0
            if not count:
                return []
            typ, fetched = m.fetch(f"1:{count}", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            return [part[1].decode().strip().removeprefix("Subject: ")  # type: ignore[index]
                    for part in fetched if isinstance(part, tuple)]

    def pop3_subjects(self, address: str, password: str, **kw: bool) -> list[str]:
        with self.pop3(address, password, **kw) as p:
            count = p.stat()[0]
            subjects = []
            for i in range(1, count + 1):
                lines = p.top(i, 0)[1]
                subjects += [line.decode()[9:] for line in lines if line.startswith(b"Subject: ")]
            return subjects

    def deliveries(self, since: int = 0) -> list[Delivery]:
        """Every ``status=`` line in the maillog after offset ``since``."""
        assert self.postfix is not None
        return [Delivery(m["qid"], m["to"], m["relay"], m["status"], m["text"])
                for m in _STATUS.finditer(self.postfix.log_text(), since)]

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

    def submit(self, sender: str, recipient: str, subject: str, body: str = "hello\n", *,
               login: tuple[str, str] | None = None, size: bool = True) -> Submission:
        """One message to one recipient, step by step, the way an MTA client sees it:
        the RCPT or DATA reply, and the queue id when Postfix took the message. ``size``
        False leaves out SIZE= (the policy service then cannot refuse a big message at
        RCPT, only maildrop's quota can)."""
        data = self.message(sender, [recipient], subject, body).as_bytes()
        with self.smtp() as client:
            client.ehlo("client.example.net")
            if login:
                client.starttls(context=self.client_tls())
                client.ehlo("client.example.net")
                client.login(*login)
            options = [f"SIZE={len(data)}"] if size else []
            code, text = client.mail(sender, options)
            if code == 250:
                code, text = client.rcpt(recipient)
            if code not in (250, 251):
                client.rset()
                return Submission(code, text.decode(errors="replace"), None)
            code, text = client.data(data)
        reply = text.decode(errors="replace")
        queued = re.search(r"queued as ([0-9A-F]+)", reply)
        return Submission(code, reply, queued.group(1) if queued else None)


@dataclass(frozen=True)
class Submission:
    """What an SMTP client got for one message (see :meth:`MailStack.submit`)."""

    code: int
    text: str
    queue_id: str | None

    @property
    def accepted(self) -> bool:
        return self.queue_id is not None

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500
