"""Where a benchmark's CPU goes: CPU time per process role, read from /proc.

A rate alone does not say why one contender is slower. Counting each role's CPU time over
a phase and dividing by the requests served shows it: for logins, how much the client
processes, authdaemond, the relay, vmaild and MariaDB each spent per login. Roles are
matched by command line, so only this run's processes count (a MariaDB is recognised by
its datadir, vmaild by its config file), never another run's on the same machine.
Times come from each thread's schedstat (nanoseconds on the CPU), not from the 10 ms
ticks of /proc/PID/stat, which round a short phase to nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

# A role: its name and a test on (comm, command line).
Role = tuple[str, Callable[[str, str], bool]]


def roles_for(*, vmaild_config: str, mariadb_datadir: str) -> list[Role]:
    """The login benchmark's roles. The clients are forkserver workers ('multiprocessing'
    in their command line); the relay is vmaild-authpipe, however it was started."""
    return [
        ("clients", lambda comm, cmd: "multiprocessing" in cmd),
        ("authdaemond", lambda comm, cmd: comm == "authdaemond"),
        ("relay", lambda comm, cmd: "vmaild-authpipe" in cmd or "authpipe_main" in cmd),
        ("vmaild", lambda comm, cmd: "vmaild.cli" in cmd and vmaild_config in cmd),
        ("mariadb", lambda comm, cmd: comm == "mariadbd" and mariadb_datadir in cmd),
    ]


def snapshot(roles: Iterable[Role]) -> dict[int, tuple[str, float]]:
    """{pid: (role, seconds of CPU so far)} for every process that has a role."""
    roles = list(roles)
    out: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        for name, matches in roles:
            if matches(comm, cmd):
                out[int(entry)] = (name, _cpu_seconds(entry))
                break
    return out


def _cpu_seconds(pid: str) -> float:
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that just ended
            continue
    return total / 1e9


def per_request(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], requests: int
) -> dict[str, int]:
    """Microseconds of CPU per request by role, between two snapshots. A process or
    thread that ended in between is missed, so the figures are lower bounds."""
    spent: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        spent[role] = spent.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    return {role: round(seconds / max(requests, 1) * 1e6) for role, seconds in spent.items()}


def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process, from /proc/PID/stat (10 ms ticks: for runs of
    seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idle and iowait, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
