"""Process helpers: running commands with useful errors, and making sure what
we started is really gone.

Two facts about the machines this runs on shape this module:

* PID 1 is not a real init. Daemons that double-fork (Postfix's master,
  authdaemond's workers, authProg children) are re-parented to it and may sit
  as zombies for a while. ``kill(pid, 0)`` succeeds on a zombie, so "is it
  still running?" must read the process state from /proc instead.
* Several of the services fork helpers we never see directly, so cleanup works
  on process groups (we start every service in its own session) and, for
  Postfix, on "every process whose working directory is our queue directory".
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from harness.common.wait import HarnessTimeout, wait_until


class CommandError(RuntimeError):
    """A helper command failed; the message carries its output."""

    def __init__(self, cmd: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        self.cmd = list(cmd)
        self.result = result
        super().__init__(
            f"command {' '.join(self.cmd)!r} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )


def run(
    cmd: Sequence[str],
    *,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 60.0,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to completion, capturing text output.

    With ``check`` a non-zero exit raises :class:`CommandError` that includes
    stdout and stderr, so a failing fixture explains itself in the pytest log.
    """
    result = subprocess.run(
        list(cmd),
        input=input,
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )
    if check and result.returncode != 0:
        raise CommandError(cmd, result)
    return result


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    return raw[raw.rindex(")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def all_pids() -> list[int]:
    """Every pid currently in /proc."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    members = []
    for pid in all_pids():
        fields = _stat_fields(pid)
        # fields: state ppid pgrp ...
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(pid)
    return members


def pids_with_cwd_under(directory: str | os.PathLike[str]) -> list[int]:
    """Live processes whose working directory is ``directory`` or below it.

    Every Postfix daemon chdir()s to its queue_directory, so this finds all
    processes of one private Postfix instance and nothing else.
    """
    root = os.path.realpath(directory)
    found = []
    for pid in all_pids():
        if pid == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if (cwd == root or cwd.startswith(root + "/")) and pid_alive(pid):
            found.append(pid)
    return found


def signal_pids(pids: Iterable[int], sig: int) -> None:
    """Send ``sig`` to each pid, ignoring ones that vanished meanwhile."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def terminate_pids(pids: Iterable[int], timeout: float = 10.0) -> None:
    """SIGTERM ``pids``, wait for them to go, SIGKILL whatever is left."""
    pending = [p for p in pids if pid_alive(p)]
    if not pending:
        return
    signal_pids(pending, signal.SIGTERM)
    try:
        wait_until(
            lambda: not any(pid_alive(p) for p in pending), timeout, f"pids {pending} to exit"
        )
    except HarnessTimeout:
        signal_pids([p for p in pending if pid_alive(p)], signal.SIGKILL)
        wait_until(lambda: not any(pid_alive(p) for p in pending), 5.0, f"pids {pending} to die")


def stop_process(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None,
    *,
    sig: int = signal.SIGTERM,
    timeout: float = 10.0,
    whole_group: bool = True,
) -> int | None:
    """Stop a service we started with ``start_new_session=True``.

    Sends ``sig`` to the main process and waits for it; escalates to SIGKILL
    after ``timeout``. Then, with ``whole_group``, terminates anything still
    alive in its process group (forked workers, helper children) so that no
    stray process survives a fixture. Returns the exit status.
    """
    if proc is None:
        return None
    pgid = proc.pid  # session leader: pgid == pid
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
    if whole_group:
        terminate_pids(group_members(pgid), timeout=timeout)
    return proc.returncode


def tail(path: str | os.PathLike[str], lines: int = 30) -> str:
    """Last ``lines`` lines of a log file, for error messages."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def exited(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str], name: str, log: Path
) -> str | None:
    """An ``abort`` callback for :func:`wait_until`: explain an early exit."""
    rc = proc.poll()
    if rc is None:
        return None
    return f"{name} exited with status {rc}; last log lines:\n{tail(log)}"
