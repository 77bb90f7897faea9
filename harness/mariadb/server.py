"""A private MariaDB server for tests, benchmarks and the demo.

Each :class:`MariaDB` owns a data directory and a run directory under a temp
dir and listens on 127.0.0.1 on a free port plus its own unix socket. It never
reads /etc/mysql (``--no-defaults``), so it cannot collide with a system
server, and starts in well under a second.

Outage tests need the *same* server to go away and come back: :meth:`stop`
then :meth:`start` reuse the datadir and the port; :meth:`kill` simulates a
crash; :meth:`pause`/:meth:`resume` simulate a hung server (connections are
accepted by the kernel but nothing answers, so clients run into timeouts).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.common.ports import LOOPBACK, free_port, unix_accepts, wait_for_unix
from harness.common.procs import exited, run, stop_process, tail
from harness.common.service import Service
from harness.common.wait import wait_until

if TYPE_CHECKING:  # pymysql is imported lazily so `import harness` stays light
    import pymysql  # type: ignore[import-untyped]  # pymysql ships no type hints

_IDENT = re.compile(r"^[A-Za-z0-9_]{1,64}$")

#: Debian's packaged server defaults to utf8mb4; with --no-defaults it would be
#: latin1_swedish_ci. Match what a real deployment sees.
_CHARSET_ARGS = ("--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci")


def _ident(name: str) -> str:
    """Backtick-quote a database name after checking it is a plain identifier."""
    if not _IDENT.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f"`{name}`"


class MariaDB(Service):
    """Private mariadbd on 127.0.0.1:<free port> with its own socket."""

    REQUIRED_BINARIES = ("mariadbd", "mariadb-install-db", "mariadb")

    def __init__(
        self,
        basedir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        self._owns_basedir = basedir is None
        self.basedir = (
            Path(basedir) if basedir else Path(tempfile.mkdtemp(prefix="vmaild-mariadb-"))
        )
        self.datadir = self.basedir / "data"
        self.rundir = self.basedir / "run"
        self.host = LOOPBACK
        self.port = port or free_port()
        self.socket = self.rundir / "mysqld.sock"
        self.error_log = self.rundir / "mysqld.err"
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # ------------------------------------------------------------------ life
    @classmethod
    def missing_requirements(cls) -> list[str]:
        """What this machine lacks to run the server (empty list: all there)."""
        missing = [b for b in cls.REQUIRED_BINARIES if shutil.which(b) is None]
        try:
            import pymysql  # noqa: F401
        except ImportError:
            missing.append("python module pymysql")
        return missing

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def _initialise(self) -> None:
        """Create the system tables once; later starts reuse the datadir."""
        # mkdtemp makes 0700 directories; mysqld runs as `mysql` and must
        # traverse the base dir, and must own the run dir to bind its socket.
        os.chmod(self.basedir, 0o755)
        self.rundir.mkdir(exist_ok=True)
        shutil.chown(self.rundir, "mysql", "mysql")
        if (self.datadir / "mysql").is_dir():
            return
        run(
            [
                "mariadb-install-db",
                "--no-defaults",
                "--user=mysql",
                f"--datadir={self.datadir}",
                f"--tmpdir={self.rundir}",  # never the shared /tmp
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                *_CHARSET_ARGS,
            ],
            timeout=120,
        )

    def start(self) -> MariaDB:
        """Start the server (initialising the datadir first if needed) and wait
        until root can log in over the socket and the TCP port answers."""
        if self.running:
            return self
        self._initialise()
        log = open(self.basedir / "mariadbd.out", "ab")
        try:
            self._proc = subprocess.Popen(
                [
                    "mariadbd",
                    "--no-defaults",
                    "--user=mysql",
                    f"--datadir={self.datadir}",
                    f"--socket={self.socket}",
                    f"--tmpdir={self.rundir}",
                    f"--port={self.port}",
                    f"--bind-address={self.host}",
                    f"--pid-file={self.rundir / 'mysqld.pid'}",
                    f"--log-error={self.error_log}",
                    "--skip-name-resolve",
                    *_CHARSET_ARGS,
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        proc = self._proc

        def abort() -> str | None:
            return exited(proc, "mariadbd", self.error_log)

        try:
            wait_for_unix(self.socket, self.start_timeout, abort=abort)
            wait_until(
                self._root_login_works, self.start_timeout, "mariadb root login", abort=abort
            )
        except BaseException:
            self.kill()  # never leave a half-started server behind
            raise
        return self

    def _root_login_works(self) -> bool:
        import pymysql

        try:
            self.root_conn().close()
            return True
        except pymysql.err.OperationalError:
            return False

    def stop(self, timeout: float = 60.0) -> None:
        """Clean shutdown (SIGTERM, wait for exit). The datadir is kept."""
        if self._proc is None:
            return
        if self._paused:
            self.resume()
        stop_process(self._proc, timeout=timeout)
        self._proc = None

    def kill(self) -> None:
        """Crash the server (SIGKILL). :meth:`start` recovers the same datadir."""
        if self._proc is None:
            return
        self._paused = False
        stop_process(self._proc, sig=signal.SIGKILL, timeout=10.0)
        self._proc = None

    def restart(self) -> MariaDB:
        """Stop and start again on the same port and datadir."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connects hang instead of failing."""
        if self._proc is not None and not self._paused:
            os.kill(self._proc.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        if self._proc is not None and self._paused:
            os.kill(self._proc.pid, signal.SIGCONT)
            self._paused = False

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MariaDB {self.host}:{self.port} socket={self.socket} {state}>"

    # --------------------------------------------------------------- clients
    def root_conn(self, database: str | None = None, **kwargs: Any) -> pymysql.Connection:
        """A pymysql connection as root over the unix socket (socket auth:
        the test process runs as root, which is what MariaDB checks)."""
        import pymysql

        params: dict[str, Any] = {
            "unix_socket": str(self.socket),
            "user": "root",
            "database": database,
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": 5,
        }
        params.update(kwargs)
        return pymysql.connect(**params)

    def connect(
        self, user: str, password: str, database: str | None = None, **kwargs: Any
    ) -> pymysql.Connection:
        """A pymysql connection as ``user`` over TCP, like the daemon makes."""
        import pymysql

        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": user,
            "password": password,
            "database": database,
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": 5,
        }
        params.update(kwargs)
        return pymysql.connect(**params)

    def query(
        self, sql: str, args: Any = None, database: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement as root and return all rows."""
        conn = self.root_conn(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def execute_script(self, sql: str, database: str | None = None) -> str:
        """Run a multi-statement SQL script with the ``mariadb`` CLI as root.

        The CLI (not pymysql) is used on purpose: it splits statements the way
        an administrator pasting the seed tutorial would, and reports the
        failing line. Returns the client's stdout.
        """
        cmd = [
            "mariadb",
            "--no-defaults",
            "--protocol=socket",
            f"--socket={self.socket}",
            "--user=root",
            "--default-character-set=utf8mb4",
            "--batch",
        ]
        if database:
            cmd.append(database)
        return run(cmd, input=sql, timeout=120).stdout

    def create_database(self, name: str, user: str, password: str) -> None:
        """Create a utf8mb4 database and a user with ALL on it.

        The user exists for host 127.0.0.1 (TCP from loopback, what Postfix's
        mysql: tables and vmaild use; the server runs with
        --skip-name-resolve) and for localhost (unix socket, what Courier's
        authmysql uses with MYSQL_SERVER localhost). Idempotent: re-running
        resets the password.
        """
        db = _ident(name)
        conn = self.root_conn()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"CREATE DATABASE IF NOT EXISTS {db} "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
                )
                for host in ("127.0.0.1", "localhost"):
                    cur.execute(
                        "CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (user, host, password)
                    )
                    cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, password))
                    cur.execute(f"GRANT ALL ON {db}.* TO %s@%s", (user, host))
        finally:
            conn.close()

    def drop_database(self, name: str) -> None:
        """Drop a database if it exists (users are left alone)."""
        self.query(f"DROP DATABASE IF EXISTS {_ident(name)}")

    def log_text(self) -> str:
        """The server's error log (start-up notes, crash recovery, warnings)."""
        return tail(self.error_log, 10_000)

    def accepts(self) -> bool:
        """True if the unix socket accepts connections right now."""
        return unix_accepts(self.socket)
