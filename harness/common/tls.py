"""A self-signed certificate for STARTTLS, IMAPS and POP3S, made with openssl.

The seed makes one for Postfix (``openssl req -x509 ... -keyout smtpd.key``) and another for
Courier (``mkimapdcert``); scripts/install.sh makes one set for both, and so does this
module for a sandbox: ``mail.key`` and ``mail.crt`` (Postfix ``smtpd_tls_chain_files``) and
``mail.pem``, key and certificate in one file (Courier ``TLS_CERTFILE``). The harness uses
an EC P-256 key (generated in milliseconds); install.sh uses RSA 2048 like the seed.
"""

from __future__ import annotations

import os
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path

from harness.common.procs import run


@dataclass(frozen=True)
class Certificate:
    key: Path
    cert: Path
    pem: Path  # key + certificate, for Courier's TLS_CERTFILE
    hostname: str

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly this certificate (and checks the name)."""
        ctx = ssl.create_default_context(cafile=str(self.cert))
        return ctx


def make_certificate(
    directory: str | os.PathLike[str], hostname: str, days: int = 30
) -> Certificate:
    """Write mail.key, mail.crt and mail.pem for ``hostname`` under ``directory``.

    mail.key is 0600 root (Postfix reads it as root before it drops privileges);
    mail.pem is 0640 root:courier like Debian's /etc/courier/imapd.pem, because the
    couriertls that imapd/pop3d start for STARTTLS runs as ``courier``.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key, cert, pem = d / "mail.key", d / "mail.crt", d / "mail.pem"
    run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            str(days),
            "-subj",
            f"/CN={hostname}",
            "-addext",
            f"subjectAltName=DNS:{hostname}",
        ]
    )
    pem.write_bytes(key.read_bytes() + cert.read_bytes())
    os.chmod(key, 0o600)
    os.chmod(pem, 0o640)
    shutil.chown(pem, "root", "courier")
    os.chmod(cert, 0o644)
    os.chmod(d, 0o755)
    return Certificate(key, cert, pem, hostname)
