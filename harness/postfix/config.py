"""A private Postfix instance's configuration: the default master.cf services, the
queue layout, the base main.cf settings, and writing them (see :mod:`harness.postfix.server`)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from harness.common.procs import run

#: Debian's default master.cf services, every one with chroot = n (column 5).
#: smtpd's listener is generated separately on 127.0.0.1:PORT.
DEFAULT_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
maildrop  unix  -       n       n       -       -       pipe
  flags=DRXhu user=vmail argv=/usr/bin/maildrop -d ${recipient}
"""

#: Queue subdirectories with owner, group and mode, as postfix-files lists
#: them. Creating them up front saves ~2 s on the first ``postfix start``,
#: whose post-install "create-missing" step otherwise makes each one with a
#: handful of shell commands.
QUEUE_DIRS: tuple[tuple[str, str, str, int], ...] = (
    ("active", "postfix", "root", 0o700),
    ("bounce", "postfix", "root", 0o700),
    ("corrupt", "postfix", "root", 0o700),
    ("defer", "postfix", "root", 0o700),
    ("deferred", "postfix", "root", 0o700),
    ("flush", "postfix", "root", 0o700),
    ("hold", "postfix", "root", 0o700),
    ("incoming", "postfix", "root", 0o700),
    ("private", "postfix", "root", 0o700),
    ("maildrop", "postfix", "postdrop", 0o730),
    ("public", "postfix", "postdrop", 0o710),
    ("pid", "root", "root", 0o755),
    ("saved", "postfix", "root", 0o700),
    ("trace", "postfix", "root", 0o700),
)

DEFAULT_MAIN_CF = "/etc/postfix/main.cf"

#: How far back :func:`cool_down` dates a file.
_COOL_DOWN_SECONDS = 10


def cool_down(*paths: str | os.PathLike[str]) -> None:
    """Backdate freshly written Postfix configuration files.

    Postfix treats a file modified within the last ~2 seconds as "hot" (it
    may still be being written) and re-reads it in 300 ms steps until it is
    older: libpostfix-util's "pausing to let %s cool down", visible only with
    -v. Every command and daemon that reads a just-written main.cf or
    mysql: .cf file then stalls 1.8-2.4 s (first ``postfix start`` 2.4 s
    instead of 0.25 s; ``postmap -q`` on a new mysql .cf 3.4 s instead of
    1.0 s). The harness writes files before anything reads them, so dating
    them back is safe and removes those stalls.
    """
    past = time.time() - _COOL_DOWN_SECONDS
    for path in paths:
        os.utime(path, (past, past))


def vmaild_socket_dir(queue_dir: Path, owner: str | int = "root") -> Path:
    """vmaild's sockets for Postfix in ``queue_dir``, as systemd/vmaild.tmpfiles makes
    /var/spool/postfix/vmaild: 2750, group postfix (main.cf names them ``vmaild/...``), with
    the queue directory and the directory above it 0755, as Postfix's own are."""
    socket_dir = queue_dir / "vmaild"
    socket_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(queue_dir.parent, 0o755)
    os.chmod(queue_dir, 0o755)
    shutil.chown(socket_dir, owner, "postfix")
    os.chmod(socket_dir, 0o2750)
    return socket_dir


class PostfixConfig:
    """The configuration half of :class:`harness.postfix.server.Postfix` (a mixin: the
    instance attributes below are set by ``Postfix.__init__``)."""

    basedir: Path
    config_dir: Path
    queue_dir: Path
    data_dir: Path
    log_dir: Path
    log_file: Path
    host: str
    smtp_port: int
    myhostname: str
    extra_main_cf: dict[str, str]
    extra_master_cf: list[str]
    smtpd_args: dict[str, str]

    def base_main_cf(self) -> dict[str, str]:
        """Settings every private instance needs, before the caller's extras."""
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "myhostname": self.myhostname,
            "myorigin": "$myhostname",
            "mydestination": "localhost",
            "mynetworks": "127.0.0.0/8",
            "relayhost": "",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.log_dir),
            # maildrop(1) delivers one recipient per invocation (-d ${recipient}).
            "maildrop_destination_recipient_limit": "1",
        }

    def master_cf_text(self) -> str:
        """The complete master.cf: our SMTP listener, defaults, extras."""
        lines = [f"{self.host}:{self.smtp_port} inet n - n - - smtpd"]
        lines += [f"  -o {k}={v}" for k, v in self.smtpd_args.items()]
        text = "\n".join(lines) + "\n" + DEFAULT_SERVICES
        if self.extra_master_cf:
            text += "\n".join(self.extra_master_cf) + "\n"
        return text

    def _postconf_edit(self, settings: Mapping[str, str]) -> None:
        if settings:
            run(
                [
                    "postconf",
                    "-c",
                    str(self.config_dir),
                    "-e",
                    *(f"{k}={v}" for k, v in settings.items()),
                ]
            )
            cool_down(self.config_dir / "main.cf")

    def _write_config(self) -> None:
        for d in (self.config_dir, self.queue_dir, self.data_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Postfix daemons run as `postfix` and must traverse to the queue.
        os.chmod(self.basedir, 0o755)
        os.chmod(self.queue_dir, 0o755)
        # master.lock and the caches live here; Postfix insists on owning it
        # ("fatal: open lock file .../master.lock: ... Permission denied").
        shutil.chown(self.data_dir, "postfix")
        os.chmod(self.data_dir, 0o700)
        for name, owner, group, mode in QUEUE_DIRS:
            path = self.queue_dir / name
            path.mkdir(exist_ok=True)
            shutil.chown(path, owner, group)
            os.chmod(path, mode)
        main_cf = self.config_dir / "main.cf"
        if not main_cf.exists():
            main_cf.write_text("# private instance written by the vmaild test harness\n")
            self._postconf_edit({**self.base_main_cf(), **self.extra_main_cf})
        (self.config_dir / "master.cf").write_text(self.master_cf_text())
        cool_down(main_cf, self.config_dir / "master.cf")

    def write_config_file(self, relpath: str, text: str, mode: int = 0o644) -> Path:
        """Write a file under the config dir, e.g. ``sasl/smtpd.conf`` (which
        Debian's Cyrus SASL reads from ``$config_directory/sasl/``)."""
        path = self.config_dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
        cool_down(path)
        return path

    def postconf_value(self, name: str) -> str:
        """The effective value of one main.cf parameter."""
        return run(["postconf", "-c", str(self.config_dir), "-h", name]).stdout.rstrip("\n")
