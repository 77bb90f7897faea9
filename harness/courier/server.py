"""Courier authdaemond, imapd and pop3d for tests, without systemd.

What is global and why: authdaemond's configuration file, its authpipe
program and its socket have compiled-in paths (/etc/courier/authdaemonrc,
/etc/courier/authProg, /run/courier/authdaemon/socket), and so does
authmysql's /etc/courier/authmysqlrc. :class:`Courier` therefore takes a
machine-wide lock, backs those files up, writes its own, and restores them on
stop (see :mod:`harness.common.sysfiles`; a crashed run is cleaned up by the next
one). Only one Courier can run per machine at a time.

What is private: imapd and pop3d. Instead of Debian's ``imapd start`` (which
reads ADDRESS/PORT from /etc/courier/imapd and daemonises through
courierlogger into syslog, which these machines lack), we run ``couriertcpd``
in the foreground the way that script builds its command line, on
127.0.0.1:<free port>, with the login programs' stderr going to a log file.
authdaemond is run in the foreground too (the binary itself never
daemonises; /usr/sbin/authdaemond only wraps it in courierlogger), with
stderr to a log file so DEBUG_LOGIN output is visible. The implicit-TLS
listeners (imapd-ssl, pop3d-ssl; :mod:`harness.courier.tls`) are started on
request with :meth:`Courier.start_tls_listener`; like imapd and pop3d they are
recorded for crash recovery and stopped with the rest.

Helpers: :mod:`harness.courier.paths` (compiled-in paths),
:mod:`harness.courier.files` (the global files' text),
:mod:`harness.courier.procs` (process lookup, crash recovery).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from harness.common.ports import LOOPBACK, free_port, wait_for_port, wait_for_unix
from harness.common.procs import exited, run, stop_process, tail, terminate_pids
from harness.common.service import Service
from harness.common.sysfiles import FileGuard
from harness.courier.files import (
    authdaemonrc_text,
    authprog_wrapper,
    in_packaged_frame,
    prepare_run_dirs,
    write_file,
)
from harness.courier.paths import (
    AUTHDAEMON_SOCKET,
    AUTHDAEMOND_BIN,
    AUTHDAEMONRC,
    AUTHMYSQL_LIB,
    AUTHMYSQLRC,
    AUTHPIPE_LIB,
    AUTHPROG,
    BASE_ENV,
    COURIER_ETC,
    COURIERTCPD,
    GAM_SERVER,
    IMAPD,
    IMAPLOGIN,
    POP3D,
    POP3LOGIN,
)
from harness.courier.procs import pids_of, recover_crashed_run, refuse_foreign_authdaemond
from harness.courier.tls import TlsListener

__all__ = ["Courier"]


class Courier(Service):
    """authdaemond (authpipe and/or authmysql) plus imapd and pop3d on loopback."""

    def __init__(
        self,
        auth_prog: str | os.PathLike[str] | None = None,
        *,
        auth_env: Mapping[str, str] | None = None,
        modules: str | None = None,
        authmysqlrc: str | None = None,
        debug_login: int = 0,
        daemons: int = 5,
        imap: bool = True,
        pop3: bool = True,
        starttls: bool = False,
        maxprocs: int = 200,
        maxperip: int = 200,
        login_env: Mapping[str, str] | None = None,
        basedir: str | os.PathLike[str] | None = None,
        start_timeout: float = 15.0,
        lock_timeout: float = 120.0,
    ) -> None:
        """
        auth_prog: program installed as /etc/courier/authProg (through a
            two-line wrapper that exports ``auth_env`` and execs it).
        modules: authdaemonrc authmodulelist; default "authpipe" if auth_prog
            is given, else "authmysql".
        authmysqlrc: full text for /etc/courier/authmysqlrc (see
            :func:`harness.stack.seed.authmysqlrc_text`), needed for authmysql.
        debug_login: DEBUG_LOGIN (0, 1, or 2 = also log passwords).
        maxperip: couriertcpd's per-IP limit. All test clients come from
            127.0.0.1, so Debian's 4 (pop3d) / 20 (imapd) would throttle
            benchmarks; the default here is generous.
        login_env: extra variables for imapd/pop3d (after /etc/courier/imapd
            etc. are sourced), e.g. {"IMAP_CAPABILITY": "..."}.
        """
        self.auth_prog = Path(auth_prog) if auth_prog else None
        self.auth_env = dict(auth_env or {})
        self.modules = modules or ("authpipe" if auth_prog else "authmysql")
        self.authmysqlrc = authmysqlrc
        if "authpipe" in self.modules.split() and self.auth_prog is None:
            raise ValueError("authpipe needs auth_prog")
        if "authmysql" in self.modules.split() and authmysqlrc is None:
            raise ValueError("authmysql needs authmysqlrc")
        self.debug_login = debug_login
        self.daemons = daemons
        self.want_imap = imap
        self.want_pop3 = pop3
        self.starttls = starttls
        self.maxprocs = maxprocs
        self.maxperip = maxperip
        self.login_env = dict(login_env or {})
        self._owns_basedir = basedir is None
        self.basedir = (
            Path(basedir) if basedir else Path(tempfile.mkdtemp(prefix="vmaild-courier-"))
        )
        self.authdaemond_log = self.basedir / "authdaemond.log"
        self.imapd_log = self.basedir / "imapd.log"
        self.pop3d_log = self.basedir / "pop3d.log"
        self.host = LOOPBACK
        self.imap_port = free_port() if imap else None
        self.pop3_port = free_port() if pop3 else None
        self.socket = AUTHDAEMON_SOCKET
        self.start_timeout = start_timeout
        self.lock_timeout = lock_timeout
        self._guard = FileGuard("courier", [AUTHDAEMONRC, AUTHPROG, AUTHMYSQLRC])
        self._authdaemond: subprocess.Popen[bytes] | None = None
        self._imapd: subprocess.Popen[bytes] | None = None
        self._pop3d: subprocess.Popen[bytes] | None = None
        self._tls_listeners: list[TlsListener] = []
        self._gam_before: set[int] = set()

    # --------------------------------------------------------- requirements
    @classmethod
    def missing_requirements(cls, modules: str = "authpipe") -> list[str]:
        """What this machine lacks (empty list: all there)."""
        needed = [
            AUTHDAEMOND_BIN,
            COURIERTCPD,
            IMAPLOGIN,
            IMAPD,
            POP3LOGIN,
            POP3D,
            "/usr/sbin/authtest",
        ]
        if "authpipe" in modules:
            needed.append(AUTHPIPE_LIB)
        if "authmysql" in modules:
            needed.append(AUTHMYSQL_LIB)
        missing = [p for p in needed if not os.path.exists(p)]
        if os.geteuid() != 0:
            missing.append("root privileges (global /etc/courier and /run/courier paths)")
        return missing

    # ------------------------------------------------------ global config
    def _write_global_files(self) -> None:
        write_file(
            AUTHDAEMONRC,
            authdaemonrc_text(self.modules, self.daemons, self.debug_login),
            0o640,
            group="courier",
        )
        if self.auth_prog is not None:
            # authdaemond checks access(X_OK) once at start; if the program is
            # not executable then, authpipe is disabled until a restart.
            write_file(AUTHPROG, authprog_wrapper(self.auth_prog, self.auth_env), 0o755)
        if self.authmysqlrc is not None:
            write_file(
                AUTHMYSQLRC,
                in_packaged_frame(self.authmysqlrc, AUTHMYSQLRC),
                0o640,
                group="courier",
            )

    def set_auth_prog(
        self, auth_prog: str | os.PathLike[str], auth_env: Mapping[str, str] | None = None
    ) -> None:
        """Install another authProg and restart authdaemond to pick it up
        (before :meth:`start`, just remember it)."""
        self.auth_prog = Path(auth_prog)
        self.auth_env = dict(auth_env or {})
        if self._guard.held:  # only ever write /etc/courier after backing it up
            write_file(AUTHPROG, authprog_wrapper(self.auth_prog, self.auth_env), 0o755)
            self.restart_authdaemond()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Courier:
        """Lock and back up the global files, write ours, start authdaemond,
        then imapd and pop3d; each step waits until its socket accepts."""
        if self.running:
            return self
        missing = self.missing_requirements(self.modules)
        if missing:
            raise RuntimeError(f"cannot run Courier here, missing: {', '.join(missing)}")
        os.chmod(self.basedir, 0o755)
        self._guard.acquire(self.lock_timeout, recover=recover_crashed_run)
        self._gam_before = set(pids_of(GAM_SERVER))
        try:
            refuse_foreign_authdaemond()
            self._write_global_files()
            self.start_authdaemond()
            if self.want_imap:
                self._imapd = self._start_tcpd(
                    "imapd", self.imap_port, IMAPLOGIN, IMAPD, self.imapd_log
                )
            if self.want_pop3:
                self._pop3d = self._start_tcpd(
                    "pop3d", self.pop3_port, POP3LOGIN, POP3D, self.pop3d_log
                )
            self._record_pids()
        except BaseException:
            self.stop()
            raise
        return self

    def start_authdaemond(self) -> None:
        """Start authdaemond in the foreground of its own session, the way
        /usr/sbin/authdaemond would (sourcing authdaemonrc with ``set -a``)
        but without courierlogger, and wait for its socket."""
        if self._authdaemond is not None and self._authdaemond.poll() is None:
            return
        prepare_run_dirs()
        if AUTHDAEMON_SOCKET.exists() or AUTHDAEMON_SOCKET.is_symlink():
            AUTHDAEMON_SOCKET.unlink()  # stale: we checked nobody else runs one
        script = f"set -a; . {AUTHDAEMONRC}; exec {AUTHDAEMOND_BIN}"
        with open(self.authdaemond_log, "ab") as log:
            self._authdaemond = subprocess.Popen(
                ["/bin/sh", "-c", script],
                env=BASE_ENV,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        proc = self._authdaemond
        wait_for_unix(
            AUTHDAEMON_SOCKET,
            self.start_timeout,
            abort=lambda: exited(proc, "authdaemond", self.authdaemond_log),
        )
        self._record_pids()

    def stop_authdaemond(self) -> None:
        """Stop authdaemond, its workers and their authProg children.

        SIGTERM to the master makes it kill its workers and exit; the authProg
        children see EOF on stdin. Anything left in the process group is
        terminated. The stale socket file is removed, so clients fail with
        ENOENT (what they see when the service is down) instead of
        ECONNREFUSED.
        """
        if self._authdaemond is None:
            return  # never touch a socket some other authdaemond owns
        stop_process(self._authdaemond, timeout=10.0)
        self._authdaemond = None
        if AUTHDAEMON_SOCKET.exists() or AUTHDAEMON_SOCKET.is_symlink():
            AUTHDAEMON_SOCKET.unlink()

    def restart_authdaemond(self) -> None:
        """Restart authdaemond only (new authProg, new config, outage tests)."""
        self.stop_authdaemond()
        self.start_authdaemond()

    def _start_tcpd(
        self, name: str, port: int | None, login: str, daemon: str, log: Path
    ) -> subprocess.Popen[bytes]:
        """Run couriertcpd like /usr/sbin/imapd (or pop3d) does, in the
        foreground, on 127.0.0.1:port."""
        assert port is not None
        conf = "imapd" if name == "imapd" else "pop3d"
        starttls_var = "IMAP_STARTTLS" if name == "imapd" else "POP3_STARTTLS"
        overrides = {starttls_var: "YES" if self.starttls else "NO", **self.login_env}
        assignments = "; ".join(f"{k}={shlex.quote(v)}" for k, v in overrides.items())
        tcpd = [
            COURIERTCPD,
            f"-address={self.host}",
            f"-maxprocs={self.maxprocs}",
            f"-maxperip={self.maxperip}",
            "-nodnslookup",
            "-noidentlookup",
            f"-stderr={log}",
            str(port),
            login,
            daemon,
            "Maildir",
        ]
        script = (
            "set -a; prefix=/usr; exec_prefix=/usr; sbindir=/usr/sbin; bindir=/usr/bin; "
            "libexecdir=/usr/lib/courier; "
            f". {COURIER_ETC / conf}; . {COURIER_ETC / (conf + '-ssl')}; "
            f"{assignments}; unset AUTH_MKHOMEDIR_SKEL; "
            f"exec {shlex.join(tcpd)}"
        )
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", script],
                env={"PATH": BASE_ENV["PATH"]},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        wait_for_port(self.host, port, self.start_timeout, abort=lambda: exited(proc, name, log))
        return proc

    def start_tls_listener(self, kind: str, port: int, log: Path) -> TlsListener:
        """Start the implicit-TLS listener ``kind`` ("imapd": IMAPS, "pop3d": POP3S)
        on 127.0.0.1:port with :attr:`login_env`, once Courier runs. Like imapd and
        pop3d it is recorded for crash recovery and stopped by :meth:`stop`."""
        if not self._guard.held:
            raise RuntimeError("start Courier before its TLS listeners")
        listener = TlsListener(kind, port, self.login_env, log)
        self._tls_listeners.append(listener)  # stop() stops it even if start fails
        listener.start(self.start_timeout)
        self._record_pids()
        return listener

    def _record_pids(self) -> None:
        procs = [self._authdaemond, self._imapd, self._pop3d]
        procs += [listener.proc for listener in self._tls_listeners]
        pids = [p.pid for p in procs if p is not None]
        if self._guard.held:
            self._guard.record(session_pids=pids)

    def stop(self) -> None:
        """Stop everything, restore the global files, release the lock."""
        for proc in (self._imapd, self._pop3d):
            stop_process(proc, timeout=10.0)
        self._imapd = self._pop3d = None
        for listener in self._tls_listeners:
            listener.stop()
        self._tls_listeners = []
        terminate_pids([p for p in pids_of(GAM_SERVER) if p not in self._gam_before])
        self.stop_authdaemond()
        if self._guard.held:
            self._guard.release()

    def __repr__(self) -> str:
        return f"<Courier modules={self.modules!r} imap={self.imap_port} pop3={self.pop3_port}>"

    @property
    def running(self) -> bool:
        return self._authdaemond is not None and self._authdaemond.poll() is None

    # --------------------------------------------------------------- probes
    def authtest(
        self, user: str, password: str | None = None, service: str = "imap"
    ) -> tuple[int, str, str]:
        """``authtest -s SERVICE USER [PASSWORD]`` -> (exit status, stdout, stderr).

        Without a password it is a plain account lookup (authpipe PRE).
        """
        cmd = ["authtest", "-s", service, user]
        if password is not None:
            cmd.append(password)
        r = run(cmd, check=False, timeout=60)
        return r.returncode, r.stdout, r.stderr

    def log_text(self) -> str:
        """authdaemond's stderr (DEBUG_LOGIN output) plus imapd/pop3d logs."""
        return "\n".join(
            f"==> {p.name} <==\n{tail(p, 10_000)}"
            for p in (self.authdaemond_log, self.imapd_log, self.pop3d_log)
        )
