"""The implicit-TLS Courier listeners (IMAPS, POP3S): /usr/sbin/imapd-ssl and
pop3d-ssl without courierlogger. :meth:`harness.courier.server.Courier.start_tls_listener`
starts them, so that they are recorded for crash recovery and stopped with the
rest of Courier."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.common.ports import LOOPBACK, wait_for_port
from harness.common.procs import exited, stop_process
from harness.courier.paths import (
    COURIER_ETC,
    COURIERTCPD,
    COURIERTLS,
    IMAPD,
    IMAPLOGIN,
    POP3D,
    POP3LOGIN,
)


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
        settings = {
            **self.env,
            f"{prefix}_TLS": "1",
            f"{prefix}_STARTTLS": "NO",
            f"{prefix}_TLS_REQUIRED": "0",
        }
        assignments = "; ".join(f"{k}={_sh(v)}" for k, v in settings.items())
        argv = [
            COURIERTCPD,
            f"-address={LOOPBACK}",
            "-maxprocs=200",
            "-maxperip=200",
            "-nodnslookup",
            "-noidentlookup",
            f"-stderr={self.log}",
            str(self.port),
            COURIERTLS,
            "-server",
            "-tcpd",
            "-user=courier",
            login,
            daemon,
            "Maildir",
        ]
        script = (
            f"set -a; . {COURIER_ETC / self.kind}; . {COURIER_ETC / (self.kind + '-ssl')}; "
            f"{assignments}; exec " + " ".join(_sh(a) for a in argv)
        )
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", script],
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        proc = self.proc
        wait_for_port(
            LOOPBACK, self.port, timeout, abort=lambda: exited(proc, f"{self.kind}-ssl", self.log)
        )

    def stop(self) -> None:
        stop_process(self.proc, timeout=10.0)
        self.proc = None


def _sh(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"
