"""Finding Courier processes by executable, refusing to run next to a foreign
authdaemond, stopping what a crashed harness run left behind, and finding the
vmaild-authpipe relays authdaemond started (and whom they run as)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

from harness.common.procs import all_pids, group_members, pid_alive, terminate_pids
from harness.courier.paths import AUTHDAEMON_SOCKET, AUTHDAEMOND_BIN, COURIERTCPD


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


def relay_pids(config: str | os.PathLike[str]) -> list[int]:
    """The vmaild-authpipe processes authdaemond started with ``VMAILD_CONFIG=config``
    (so not another run's, nor a container's)."""
    wanted = f"VMAILD_CONFIG={config}".encode()
    found = []
    for pid in all_pids():
        try:
            if b"vmaild-authpipe" in Path(f"/proc/{pid}/cmdline").read_bytes() and wanted in Path(
                f"/proc/{pid}/environ"
            ).read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found


def identity(pid: int) -> dict[str, list[str]]:
    """Uid, Gid (real, effective, saved, filesystem), Groups, NoNewPrivs and CapEff of a
    process, from /proc/PID/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        fields = {k: v.split() for k, _, v in (line.partition(":") for line in f)}
    return {k: fields[k] for k in ("Uid", "Gid", "Groups", "NoNewPrivs", "CapEff")}


def describe_identity(pid: int) -> str:
    """``vmail (uid 5000 gid 5000, no groups, no_new_privs)``, or what differs from that."""
    ids = identity(pid)
    uid, gid = ids["Uid"], ids["Gid"]
    try:
        name = pwd.getpwuid(int(uid[1])).pw_name
    except KeyError:
        name = f"uid {uid[1]}"
    parts = [
        f"uid {'/'.join(dict.fromkeys(uid))} gid {'/'.join(dict.fromkeys(gid))}",
        f"groups {','.join(ids['Groups'])}" if ids["Groups"] else "no groups",
    ]
    if ids["NoNewPrivs"] == ["1"]:
        parts.append("no_new_privs")
    if int(ids["CapEff"][0], 16):
        parts.append(f"capabilities {ids['CapEff'][0]}")
    return f"{name} ({', '.join(parts)})"


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

    ``session_pids`` are the session leaders :class:`harness.courier.server.Courier`
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
