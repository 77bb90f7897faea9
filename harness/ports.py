"""Loopback ports and sockets: finding free ones and waiting until they answer."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from .wait import wait_until

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    The kernel picks it (bind to port 0), so parallel test runs and a second
    instance of a service do not collide on fixed numbers. There is a small
    window before the service binds it; that is accepted for tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
