"""A private Postfix instance: its own config, queue, data dir and log file.

Why it is safe next to the system Postfix and next to other instances:

* every command gets ``-c CONFIG_DIR``; /etc/postfix is only read (for
  ``meta_directory``: postfix-files, dynamicmaps.cf), never written;
* queue_directory, data_directory (master.lock, caches) and the maillog file
  live under the instance's temp dir, and smtpd listens on 127.0.0.1 on a
  free port given in master.cf;
* every service runs with chroot = n, so nothing has to be copied into a
  chroot and smtpd can reach the Courier authdaemond socket for SASL.

``alternate_config_directories`` in /etc/postfix/main.cf is NOT needed for
anything the harness does: Postfix only checks it in set-gid commands
(postqueue, postdrop) run by a non-root user. It matters if a non-root
process uses this instance, e.g. ``su nobody -c 'postqueue -c DIR -p'``
fails with "unauthorized configuration directory name" and "specify
alternate_config_directories = DIR ... in /etc/postfix/main.cf", and a
pipe(8) command run as vmail that calls sendmail inherits MAIL_CONFIG. For
that case pass ``register_config_dir=True``: the directory is added to that
one parameter for the life of the instance and removed again on stop.

Logging: there is no syslog daemon on the test machines, so the instance
logs through postlogd (``postlog`` service in master.cf) to ``maillog_file``,
whose directory must be listed in ``maillog_file_prefixes``.

The configuration (default services, queue layout, main.cf/master.cf writing)
is in :mod:`harness.postfix.config`, the alternate_config_directories edit in
:mod:`harness.postfix.altdirs`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import smtplib
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from email.message import EmailMessage
from pathlib import Path

from harness.common.ports import LOOPBACK, free_port, wait_for_port
from harness.common.procs import (
    pid_alive,
    pids_with_cwd_under,
    run,
    signal_pids,
    tail,
    terminate_pids,
)
from harness.common.service import Service
from harness.common.wait import HarnessTimeout, wait_until
from harness.postfix.altdirs import register_alternate_config_dir, unregister_alternate_config_dir
from harness.postfix.config import (
    PostfixConfig,
)

__all__ = ["Postfix"]


class Postfix(PostfixConfig, Service):
    """One private Postfix instance; use as a context manager."""

    REQUIRED_BINARIES = ("postfix", "postconf", "postmap", "postqueue", "postsuper")

    def __init__(
        self,
        main_cf: Mapping[str, str] | None = None,
        master_cf: str | Sequence[str] | None = None,
        *,
        basedir: str | os.PathLike[str] | None = None,
        smtp_port: int | None = None,
        smtpd_args: Mapping[str, str] | None = None,
        myhostname: str = "mail.example.test",
        register_config_dir: bool = False,
        start_timeout: float = 30.0,
    ) -> None:
        """``main_cf`` overrides/extends the base settings; ``master_cf`` is
        extra master.cf text (or lines) appended after the default services;
        ``smtpd_args`` become ``-o name=value`` options of the SMTP listener."""
        self._owns_basedir = basedir is None
        self.basedir = (
            Path(basedir) if basedir else Path(tempfile.mkdtemp(prefix="vmaild-postfix-"))
        )
        self.config_dir = self.basedir / "etc"
        self.queue_dir = self.basedir / "spool"
        self.data_dir = self.basedir / "data"
        self.log_dir = self.basedir / "log"
        self.log_file = self.log_dir / "maillog"
        self.host = LOOPBACK
        self.smtp_port = smtp_port or free_port()
        self.myhostname = myhostname
        self.extra_main_cf = dict(main_cf or {})
        if isinstance(master_cf, str):
            master_cf = master_cf.splitlines()
        self.extra_master_cf = list(master_cf or [])
        self.smtpd_args = dict(smtpd_args or {})
        self.register_config_dir = register_config_dir
        self.start_timeout = start_timeout
        self._registered = False
        self._started = False

    @classmethod
    def missing_requirements(cls) -> list[str]:
        """What this machine lacks to run an instance (empty list: all there)."""
        return [b for b in cls.REQUIRED_BINARIES if shutil.which(b) is None]

    # ------------------------------- configuration (the rest: PostfixConfig)
    def postconf(self, settings: Mapping[str, str], *, reload: bool = True) -> None:
        """Change main.cf settings (``postconf -c DIR -e``); reload if running."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        if not (self.config_dir / "main.cf").exists():
            self.extra_main_cf.update(settings)
            return
        self._postconf_edit(settings)
        if reload and self.running:
            self.reload()

    # -------------------------------------------------------------- lifecycle
    @property
    def master_pid(self) -> int | None:
        """The running master's pid, from queue_directory/pid/master.pid."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    @property
    def running(self) -> bool:
        return self.master_pid is not None

    def start(self) -> Postfix:
        """Write the configuration, start the master and wait for SMTP."""
        if self.running:
            return self
        self._write_config()
        if self.register_config_dir:
            register_alternate_config_dir(self.config_dir)
            self._registered = True
        self._started = True
        result = run(
            ["postfix", "-c", str(self.config_dir), "start"],
            check=False,
            timeout=self.start_timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"postfix -c {self.config_dir} start failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- maillog ---\n{tail(self.log_file)}"
            )
        wait_for_port(
            self.host,
            self.smtp_port,
            self.start_timeout,
            abort=lambda: None if self.running else f"master died:\n{tail(self.log_file)}",
        )
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the master and make sure every process of this instance is gone.

        ``postfix stop`` only signals the master and returns. We then wait for
        the master, and for every process whose working directory is our
        queue directory (all Postfix daemons chdir there), escalating to
        SIGKILL after ``timeout``.
        """
        if not self._started:
            return
        master = self.master_pid
        if master is not None:
            run(["postfix", "-c", str(self.config_dir), "stop"], check=False)
            try:
                wait_until(lambda: not pid_alive(master), timeout, "postfix master to exit")
            except HarnessTimeout:
                signal_pids([master], signal.SIGKILL)
        leftovers = pids_with_cwd_under(self.queue_dir)
        if leftovers:
            try:
                wait_until(
                    lambda: not pids_with_cwd_under(self.queue_dir),
                    timeout,
                    "postfix children to exit",
                )
            except HarnessTimeout:
                terminate_pids(pids_with_cwd_under(self.queue_dir), timeout=5.0)
        if self._registered:
            unregister_alternate_config_dir(self.config_dir)
            self._registered = False
        self._started = False

    def reload(self, timeout: float = 5.0) -> None:
        """``postfix reload`` and wait until the master has acted on it.

        Reload is asynchronous: the master re-reads its configuration and
        tells idle children to exit. We wait for the "reload" log line and,
        best effort, for the pre-reload children to go, so that the next
        connection sees the new settings. A child busy with an open session
        only exits when that session ends; we stop waiting after ``timeout``.
        """
        master = self.master_pid
        if master is None:
            raise RuntimeError("postfix is not running")
        old_children = [p for p in pids_with_cwd_under(self.queue_dir) if p != master]
        before = self.log_text().count("reload -- version")
        run(["postfix", "-c", str(self.config_dir), "reload"])
        wait_until(
            lambda: self.log_text().count("reload -- version") > before,
            max(timeout, 10.0),
            "postfix master to log its reload",
        )
        try:
            wait_until(
                lambda: not any(pid_alive(p) for p in old_children), timeout, "old postfix children"
            )
        except HarnessTimeout:
            pass

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Postfix {self.host}:{self.smtp_port} config={self.config_dir} {state}>"

    # ---------------------------------------------------------------- lookups
    def postmap_q(self, key: str, table: str) -> tuple[int, str, str]:
        """``postmap -c DIR -q KEY TABLE`` -> (exit status, stdout, stderr).

        Beware: postmap exits 1 both for "not found" (empty stderr) and for a
        table error such as an unreachable database ("fatal: ... query error"
        on stderr). Check stderr before reading rc 1 as "not found".
        """
        r = run(["postmap", "-c", str(self.config_dir), "-q", key, table], check=False)
        return r.returncode, r.stdout, r.stderr

    def postmap_bulk(self, keys: Iterable[str], table: str) -> tuple[int, dict[str, str], str]:
        """Look many keys up in one process (``postmap -q - TABLE``).

        Returns (exit status, {key: value} for the keys found, stderr).
        """
        text = "".join(f"{k}\n" for k in keys)
        r = run(["postmap", "-c", str(self.config_dir), "-q", "-", table], input=text, check=False)
        found: dict[str, str] = {}
        for line in r.stdout.splitlines():
            key, _, value = line.partition("\t")
            found[key] = value
        return r.returncode, found, r.stderr

    # ------------------------------------------------------------------ queue
    def flush(self) -> None:
        """Attempt delivery of every queued message now (``postqueue -f``)."""
        run(["postqueue", "-c", str(self.config_dir), "-f"])

    def queue(self) -> list[dict[str, object]]:
        """The queue as ``postqueue -j`` reports it (one dict per message)."""
        out = run(["postqueue", "-c", str(self.config_dir), "-j"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def queue_ids(self) -> list[str]:
        return [str(m["queue_id"]) for m in self.queue()]

    def queue_count(self) -> int:
        return len(self.queue())

    def delete_queue(self) -> None:
        """Delete every queued message (``postsuper -d ALL``)."""
        run(["postsuper", "-c", str(self.config_dir), "-d", "ALL"])

    def wait_for_empty_queue(self, timeout: float = 30.0, *, flush: bool = False) -> None:
        """Wait until the queue is empty; with ``flush`` ask for delivery of
        deferred mail (otherwise it would wait for the retry timers). A flush only
        moves what is deferred at that moment: an attempt still running then (say
        the second recipient of an alias) lands in the deferred queue afterwards,
        so flush again, at most once a second, while anything is deferred."""
        last_flush = 0.0

        def empty() -> bool:
            nonlocal last_flush
            entries = self.queue()
            if not entries:
                return True
            if (
                flush
                and time.monotonic() - last_flush >= 1.0
                and any(e.get("queue_name") == "deferred" for e in entries)
            ):
                self.flush()
                last_flush = time.monotonic()
            return False

        if flush:
            self.flush()
            last_flush = time.monotonic()
        try:
            wait_until(empty, timeout, "empty postfix queue", interval=0.05)
        except HarnessTimeout as exc:
            raise HarnessTimeout(f"{exc}; queue: {self.queue()}") from None

    # -------------------------------------------------------------------- log
    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_mark(self) -> int:
        """Current log length; pass it as ``since`` to only see later lines."""
        return len(self.log_text())

    def wait_for_log(self, pattern: str, timeout: float = 10.0, *, since: int = 0) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears in the maillog after
        offset ``since``; return the match."""
        rx = re.compile(pattern)
        try:
            found = wait_until(
                lambda: rx.search(self.log_text(), since), timeout, f"maillog /{pattern}/"
            )
        except HarnessTimeout as exc:
            raise HarnessTimeout(f"{exc}; log tail:\n{tail(self.log_file)}") from None
        assert found is not None  # wait_until returns only a truthy value
        return found

    def wait_for_removed(
        self, queue_ids: Iterable[str], timeout: float = 30.0, *, since: int = 0
    ) -> None:
        """Wait until the maillog says each of ``queue_ids`` left the queue (qmgr's
        ``QID: removed``). The queue being empty is not enough: the log goes through
        postlogd and can lag. Once ``removed`` is there, so is every ``status=`` line of
        that message (each delivery agent logs before it reports to qmgr, and postlogd
        writes what it receives in order)."""
        wanted = set(queue_ids)

        def missing() -> set[str]:
            text = self.log_text()
            return {q for q in wanted if not re.search(rf": {q}: removed$", text[since:], re.M)}

        try:
            wait_until(
                lambda: not missing(),
                timeout,
                f"'removed' for {len(wanted)} queue id(s) in the maillog",
                interval=0.05,
            )
        except HarnessTimeout as exc:
            raise HarnessTimeout(
                f"{exc}; still missing: {sorted(missing())}; log tail:\n{tail(self.log_file)}"
            ) from None

    # ------------------------------------------------------------------- SMTP
    def smtp(self, timeout: float = 10.0) -> smtplib.SMTP:
        """A connected smtplib client (use it as a context manager)."""
        return smtplib.SMTP(self.host, self.smtp_port, timeout=timeout)

    def send(
        self,
        sender: str,
        recipients: str | Sequence[str],
        *,
        subject: str = "harness test",
        body: str = "hello\n",
    ) -> dict[str, tuple[int, bytes]]:
        """Send a small message over SMTP; returns the refused recipients
        (smtplib raises SMTPRecipientsRefused if all of them were refused)."""
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = ", ".join(rcpts)
        msg["Subject"] = subject
        msg.set_content(body)
        with self.smtp() as client:
            return client.send_message(msg, from_addr=sender, to_addrs=rcpts)
