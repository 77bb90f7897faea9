"""Loopback ports and sockets: finding free ones and waiting until they answer."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable

from harness.common.wait import wait_until

LOOPBACK = "127.0.0.1"

# Seeded from the OS: two test runs started together do not walk the same
# sequence of ports.
_random = random.SystemRandom()


# Ports handed out by this process. The kernel may pick the same free port
# twice in a row, and a service given a port binds it only later, so the
# second caller would get a port the first is about to take (CI saw two maps
# of one vmaild.conf given the same port).
_handed_out: set[int] = set()

# Below the kernel's ephemeral range, outgoing connections (to MariaDB, SMTP
# clients, ...) never take a port that a test service is about to bind.
_FALLBACK_RANGE = (20000, 32767)


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = (int(n) for n in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _candidate_range() -> tuple[int, int]:
    """The ports to pick from: those below the ephemeral range, if enough."""
    low, _high = _ephemeral_range()
    if low - 1 - 10000 >= 2000:
        return 10000, low - 1
    return _FALLBACK_RANGE


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that is free and not handed out before.

    The port is picked at random below the kernel's ephemeral range and
    checked by binding it, so parallel test runs and a second instance of a
    service do not collide on fixed numbers, and no port is returned twice by
    one process. There is a small window before the service binds it; that is
    accepted for tests.
    """
    low, high = _candidate_range()
    for _ in range(200):
        port = _random.randint(low, high)
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port on {host} in {low}-{high} after 200 tries")


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unix_accepts(path: str | os.PathLike[str], timeout: float = 0.5) -> bool:
    """True if a connection to the unix socket at ``path`` succeeds right now.

    A stale socket file left by a dead server does not count: connecting to it
    fails with ECONNREFUSED.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
            return True
        except OSError:
            return False


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 10.0,
    *,
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Block until ``host:port`` accepts TCP connections (or raise)."""
    wait_until(lambda: port_accepts(host, port), timeout, f"{host}:{port} to accept", abort=abort)


def wait_for_unix(
    path: str | os.PathLike[str],
    timeout: float = 10.0,
    *,
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Block until the unix socket ``path`` accepts connections (or raise)."""
    wait_until(lambda: unix_accepts(path), timeout, f"unix socket {path} to accept", abort=abort)


def wait_for_port_closed(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until nothing accepts on ``host:port`` any more."""
    wait_until(lambda: not port_accepts(host, port), timeout, f"{host}:{port} to close")
