"""Finding Courier processes by executable, refusing to run next to a foreign
authdaemond, and stopping what a crashed harness run left behind."""

from __future__ import annotations

import os
from typing import Any

from .courier_paths import AUTHDAEMON_SOCKET, AUTHDAEMOND_BIN, COURIERTCPD
from .procs import all_pids, group_members, pid_alive, terminate_pids


def pids_of(executable: str) -> list[int]:
    """Every live process running ``executable`` in this mount namespace.

    A container on this machine (systemd-nspawn, ...) shows its processes in /proc too,
    but its authdaemond owns the socket of its own /run, not ours, and its processes are
    not ours to stop."""
    found = []
    own = os.readlink("/proc/self/ns/mnt")
    for pid in all_pids():
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            if exe != executable or os.readlink(f"/proc/{pid}/ns/mnt") != own:
                continue
        except OSError:
            continue
        if pid_alive(pid):
            found.append(pid)
    return found


def refuse_foreign_authdaemond() -> None:
    """Never take over an authdaemond the harness did not start."""
    pids = pids_of(AUTHDAEMOND_BIN)
    if pids:
        raise RuntimeError(
            f"an authdaemond not started by this harness is running (pids {pids}); it owns "
            f"{AUTHDAEMON_SOCKET}. Stop it first (/usr/sbin/authdaemond stop)."
        )


def recover_crashed_run(state: dict[str, Any]) -> None:
    """Stop the processes a crashed harness run left behind (by recorded pid
    and process group), before its backed-up files are restored.

    ``session_pids`` are the session leaders :class:`harness.courier.Courier`
    started: authdaemond, and couriertcpd for imapd, pop3d and the implicit-TLS
    (imapd-ssl, pop3d-ssl) listeners. A pid that now runs anything else was
    reused and is left alone."""
    for pid in state.get("session_pids", []):
        try:
            leader = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue  # gone (or a reboot happened); nothing to stop
        if leader in (AUTHDAEMOND_BIN, COURIERTCPD):
            terminate_pids(group_members(pid))
