"""saslauthd + pam_mysql, the seed tutorial's SMTP AUTH back end, on a private socket.

The seed runs ``saslauthd -a pam -c -r`` and an /etc/pam.d/smtp that asks pam_mysql
(``crypt=1``: crypt(3) of the stored hash) for every login. Here the PAM service gets a
name of its own (``vmaild-sasl-<pid>``), so nothing of the machine's is overwritten: Postfix
passes its ``smtpd_sasl_service`` to libsasl, which hands it to saslauthd as the PAM
service. The file is removed again on cleanup, and saslauthd is stopped by the PID it
wrote. Requires the sasl2-bin and libpam-mysql packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from harness.common.ports import wait_for_unix
from harness.common.procs import group_members, terminate_pids
from harness.common.wait import wait_until

SASLAUTHD = "/usr/sbin/saslauthd"
PAM_MYSQL = "/lib/x86_64-linux-gnu/security/pam_mysql.so"
PAM_DIR = Path("/etc/pam.d")


class Saslauthd:
    """``saslauthd -a pam`` on ``rundir/mux`` for the PAM service :attr:`service`."""

    def __init__(
        self,
        rundir: Path,
        *,
        db_port: int,
        dbname: str,
        user: str,
        password: str,
        workers: int = 5,
        cache: bool = True,
    ) -> None:
        self.rundir = rundir
        self.service = f"vmaild-sasl-{os.getpid()}"
        self.pam_file = PAM_DIR / self.service
        self.workers = workers
        self.cache = cache
        # The seed's pam.d/smtp, pointed at this run's database (pam_mysql: host:port).
        options = (
            f"user={user} passwd={password} host=127.0.0.1:{db_port} db={dbname} "
            "table=users usercolumn=email passwdcolumn=password crypt=1"
        )
        self.pam_text = f"auth    required   {PAM_MYSQL} {options}\n"
        self.pam_text += f"account sufficient {PAM_MYSQL} {options}\n"
        self.pid: int | None = None

    @staticmethod
    def missing_requirements() -> list[str]:
        return [p for p in (SASLAUTHD, PAM_MYSQL) if not Path(p).exists()]

    @property
    def mux(self) -> Path:
        return self.rundir / "mux"

    def smtpd_conf(self) -> str:
        """libsasl's smtpd.conf for a Postfix that asks this saslauthd (as the seed's)."""
        return f"pwcheck_method: saslauthd\nsaslauthd_path: {self.mux}\nmech_list: PLAIN LOGIN\n"

    def start(self) -> Saslauthd:
        self.rundir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.rundir, 0o755)
        self.pam_file.write_text(self.pam_text)
        argv = [SASLAUTHD, "-a", "pam", "-m", str(self.rundir), "-n", str(self.workers), "-r"]
        if self.cache:
            argv.append("-c")  # the seed's OPTIONS="-c -m ... -r": successful logins cached
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
        pidfile = self.rundir / "saslauthd.pid"
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "saslauthd pid")
        self.pid = int(pidfile.read_text().split()[0])
        wait_for_unix(str(self.mux), 10)
        return self

    def test_login(self, user: str, password: str) -> bool:
        """``testsaslauthd`` against this instance: what smtpd's libsasl will get."""
        r = subprocess.run(
            ["testsaslauthd", "-u", user, "-p", password, "-s", self.service, "-f", str(self.mux)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return r.returncode == 0 and '0: OK "Success."' in r.stdout

    def cleanup(self) -> None:
        if self.pid is not None:
            # saslauthd daemonises into a session of its own: its workers share its group.
            terminate_pids([self.pid, *group_members(self.pid)])
            self.pid = None
        self.pam_file.unlink(missing_ok=True)
        shutil.rmtree(self.rundir, ignore_errors=True)
