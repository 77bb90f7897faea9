"""The processes :class:`harness.stack.mailstack.MailStack` runs differently from the plain
harness services: Postfix with the shipped master.cf entries, and vmaild as the mail
owner (systemd/vmaild.service: User=vmail)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

from harness.common.procs import run
from harness.postfix.server import Postfix
from harness.stack import shipped
from harness.vmaild.server import Vmaild


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
        kept = [e for i, e in enumerate(entries) if keys[i] not in keys[i + 1 :]]
        return "".join(line + "\n" for e in kept for line in e)


class VmaildAsUser(Vmaild):
    """``vmaild serve`` as an unprivileged user (systemd/vmaild.service: User=vmail).

    Same readiness protocol as :class:`harness.vmaild.server.Vmaild` (READY=1 on NOTIFY_SOCKET);
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
                [
                    "setpriv",
                    f"--reuid={self.user}",
                    f"--regid={self.user}",
                    "--init-groups",
                    sys.executable,
                    "-m",
                    "vmaild.cli",
                    "serve",
                    "-c",
                    str(self.config_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd="/",
            )
        self.wait_for("READY=1", timeout)
        return self


def can_run_python_as(user: str) -> bool:
    """Can ``user`` run this interpreter and import vmaild (as systemd's User= would)?"""
    probe = run(
        [
            "setpriv",
            f"--reuid={user}",
            f"--regid={user}",
            "--init-groups",
            sys.executable,
            "-c",
            "import vmaild.cli",
        ],
        check=False,
        cwd="/",
    )
    return probe.returncode == 0
