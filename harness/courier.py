"""Courier authdaemond, imapd and pop3d for tests, without systemd.

What is global and why: authdaemond's configuration file, its authpipe
program and its socket have compiled-in paths (/etc/courier/authdaemonrc,
/etc/courier/authProg, /run/courier/authdaemon/socket), and so does
authmysql's /etc/courier/authmysqlrc. :class:`Courier` therefore takes a
machine-wide lock, backs those files up, writes its own, and restores them on
stop (see :mod:`harness.sysfiles`; a crashed run is cleaned up by the next
one). Only one Courier can run per machine at a time.

What is private: imapd and pop3d. Instead of Debian's ``imapd start`` (which
reads ADDRESS/PORT from /etc/courier/imapd and daemonises through
courierlogger into syslog, which these machines lack), we run ``couriertcpd``
in the foreground the way that script builds its command line, on
127.0.0.1:<free port>, with the login programs' stderr going to a log file.
authdaemond is run in the foreground too (the binary itself never
daemonises; /usr/sbin/authdaemond only wraps it in courierlogger), with
stderr to a log file so DEBUG_LOGIN output is visible.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .ports import LOOPBACK, free_port, wait_for_port, wait_for_unix
from .procs import (
    all_pids,
    exited,
    group_members,
    pid_alive,
    run,
    stop_process,
    tail,
    terminate_pids,
)
from .service import Service
from .sysfiles import FileGuard

COURIER_ETC = Path("/etc/courier")
AUTHDAEMONRC = COURIER_ETC / "authdaemonrc"
AUTHPROG = COURIER_ETC / "authProg"
AUTHMYSQLRC = COURIER_ETC / "authmysqlrc"
RUN_COURIER = Path("/run/courier")
AUTHDAEMON_DIR = RUN_COURIER / "authdaemon"
AUTHDAEMON_SOCKET = AUTHDAEMON_DIR / "socket"
#: Written by courierlogger when the packaged init script runs authdaemond.
AUTHDAEMON_PIDFILE = AUTHDAEMON_DIR / "pid"

AUTHDAEMOND_BIN = "/usr/lib/courier/courier-authlib/authdaemond"
COURIERTCPD = "/usr/sbin/couriertcpd"
IMAPLOGIN = "/usr/lib/courier/courier/imaplogin"
IMAPD = "/usr/bin/imapd"
POP3LOGIN = "/usr/lib/courier/courier/courierpop3login"
POP3D = "/usr/lib/courier/courier/courierpop3d"
#: imapd/pop3d (libgamin) spawn this file-alteration monitor on first use; it
#: detaches and would otherwise linger ~30 s after the harness stops.
GAM_SERVER = "/usr/libexec/gam_server"
AUTHPIPE_LIB = "/usr/lib/courier-authlib/libauthpipe.so"
AUTHMYSQL_LIB = "/usr/lib/courier-authlib/libauthmysql.so"

#: The environment authdaemond (and so authProg) gets: as bare as under init.
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


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
            :func:`harness.seed.authmysqlrc_text`), needed for authmysql.
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
    def _authdaemonrc_text(self) -> str:
        """The packaged authdaemonrc with our three settings replaced, so all
        other defaults stay as Debian ships them."""
        text = AUTHDAEMONRC.read_text() if AUTHDAEMONRC.exists() else ""
        for key, value in (
            ("authmodulelist", f'"{self.modules}"'),
            ("daemons", str(self.daemons)),
            ("DEBUG_LOGIN", str(self.debug_login)),
        ):
            line = f"{key}={value}"
            text, n = re.subn(rf"^{key}=.*$", line, text, flags=re.M)
            if n == 0:
                text += f"\n{line}\n"
        return text

    def _authprog_wrapper(self) -> str:
        assert self.auth_prog is not None
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.auth_env.items())
        return (
            "#!/bin/sh\n"
            "# Installed by the vmaild test harness (harness/courier.py); the original\n"
            "# is restored when the harness stops. authdaemond runs this as root.\n"
            f'{exports}exec {shlex.quote(str(self.auth_prog))} "$@"\n'
        )

    def _write_global_files(self) -> None:
        _write(AUTHDAEMONRC, self._authdaemonrc_text(), 0o640, group="courier")
        if self.auth_prog is not None:
            # authdaemond checks access(X_OK) once at start; if the program is
            # not executable then, authpipe is disabled until a restart.
            _write(AUTHPROG, self._authprog_wrapper(), 0o755)
        if self.authmysqlrc is not None:
            _write(
                AUTHMYSQLRC,
                _in_packaged_frame(self.authmysqlrc, AUTHMYSQLRC),
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
            _write(AUTHPROG, self._authprog_wrapper(), 0o755)
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
        self._guard.acquire(self.lock_timeout, recover=_recover_crashed_run)
        self._gam_before = set(_pids_of(GAM_SERVER))
        try:
            _refuse_foreign_authdaemond()
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
        _prepare_run_dirs()
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

    def _record_pids(self) -> None:
        pids = [p.pid for p in (self._authdaemond, self._imapd, self._pop3d) if p is not None]
        if self._guard.held:
            self._guard.record(session_pids=pids)

    def stop(self) -> None:
        """Stop everything, restore the global files, release the lock."""
        for proc in (self._imapd, self._pop3d):
            stop_process(proc, timeout=10.0)
        self._imapd = self._pop3d = None
        terminate_pids([p for p in _pids_of(GAM_SERVER) if p not in self._gam_before])
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


# ------------------------------------------------------------------ helpers
def _write(path: Path, text: str, mode: int, group: str | None = None) -> None:
    if path.is_symlink():
        path.unlink()  # never write through a symlink into someone else's file
    path.write_text(text)
    os.chmod(path, mode)
    shutil.chown(path, "root", group or "root")


_MARKER = "##NAME: MARKER:0"
#: Used only if /etc/courier/authmysqlrc is missing (courier-authlib 0.71.4).
_FALLBACK_AUTHMYSQLRC = (
    "##VERSION: $Id: 01c3b327e4d5b8f4123500ce4c8d0ef7a690c10d-20210515150130$\n"
    f"{_MARKER}\n#\n# Do not remove this section from this configuration file. This section\n"
    "# must be present at the end of this file.\n"
)


def _in_packaged_frame(settings: str, packaged: Path) -> str:
    """Put ``settings`` into the packaged file's frame.

    authmysql rejects a config file that lacks the sysconftool marker section
    at its end ("ERR: marker line not found in /etc/courier/authmysqlrc
    (probably forgot to run sysconftool after an upgrade)", and every login
    then fails). The tutorial edits the packaged file and so keeps it. We
    take the packaged file, drop its active settings (keeping comments, the
    ##VERSION line and the marker section) and insert ours before the marker.
    """
    if _MARKER in settings:
        return settings
    base = packaged.read_text(errors="replace") if packaged.exists() else ""
    if _MARKER not in base:
        base = _FALLBACK_AUTHMYSQLRC
    head, _, marker_tail = base.partition(_MARKER)
    kept = [line for line in head.splitlines() if not line.strip() or line.lstrip().startswith("#")]
    return "\n".join(kept) + "\n\n" + settings.rstrip("\n") + "\n\n" + _MARKER + marker_tail


def _prepare_run_dirs() -> None:
    """What the package's tmpfiles.d entry does at boot (no systemd here)."""
    RUN_COURIER.mkdir(exist_ok=True)
    shutil.chown(RUN_COURIER, "root", "courier")
    os.chmod(RUN_COURIER, 0o775)
    AUTHDAEMON_DIR.mkdir(exist_ok=True)
    shutil.chown(AUTHDAEMON_DIR, "courier", "courier")
    os.chmod(AUTHDAEMON_DIR, 0o750)


def _pids_of(executable: str) -> list[int]:
    """Every live process running ``executable``."""
    found = []
    for pid in all_pids():
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if exe == executable and pid_alive(pid):
            found.append(pid)
    return found


def _refuse_foreign_authdaemond() -> None:
    """Never take over an authdaemond the harness did not start."""
    pids = _pids_of(AUTHDAEMOND_BIN)
    if pids:
        raise RuntimeError(
            f"an authdaemond not started by this harness is running (pids {pids}); it owns "
            f"{AUTHDAEMON_SOCKET}. Stop it first (/usr/sbin/authdaemond stop)."
        )


def _recover_crashed_run(state: dict[str, Any]) -> None:
    """Stop the processes a crashed harness run left behind (by recorded pid
    and process group), before its backed-up files are restored."""
    for pid in state.get("session_pids", []):
        try:
            leader = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue  # gone (or a reboot happened); nothing to stop
        if leader in (AUTHDAEMOND_BIN, COURIERTCPD):
            terminate_pids(group_members(pid))
