"""Socket activation as systemd does it (sd_listen_fds(3)), for tests.

``ListeningSockets`` plays vmaild.socket: the test process binds and listens, and keeps the
sockets across every vmaild it starts, so a connection made between two of them waits in
the backlog as it would under systemd. Each start goes through this file run as a
script, the launcher: it moves the passed descriptors to 3, 4, ... in order, sets
LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (its own pid, which exec keeps) and execs the
command, exactly what systemd does between fork and exec.

    python activation.py NAME=FD [NAME=FD ...] -- COMMAND [ARG ...]

(``systemd-socket-activate`` cannot stand in: its sockets die with the process it
execs, and a restart is the point.)
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys

LAUNCHER = os.path.abspath(__file__)
SD_LISTEN_FDS_START = 3


class ListeningSockets:
    """Listening sockets held by the test, passed to each process started with them."""

    def __init__(self) -> None:
        self.sockets: list[tuple[str, socket.socket]] = []

    def unix(self, name: str, path: str, mode: int = 0o660) -> socket.socket:
        """A unix socket at ``path`` with ``mode`` (SocketMode=), listening."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(64)
        self.sockets.append((name, sock))
        return sock

    def tcp(self, name: str, host: str = "127.0.0.1") -> int:
        """A TCP socket on ``host`` and a free port, listening; returns the port."""
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen(64)
        self.sockets.append((name, sock))
        port: int = sock.getsockname()[1]
        return port

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run through the launcher, with these sockets; Popen needs pass_fds()."""
        passed = [f"{name}={sock.fileno()}" for name, sock in self.sockets]
        return [sys.executable, LAUNCHER, *passed, "--", *argv]

    def pass_fds(self) -> tuple[int, ...]:
        return tuple(sock.fileno() for _, sock in self.sockets)

    def close(self) -> None:
        for _, sock in self.sockets:
            sock.close()
        self.sockets.clear()


def launch(args: list[str]) -> None:
    """The launcher: NAME=FD ... -- COMMAND ARG ...; does not return."""
    split = args.index("--")
    pairs = [arg.split("=", 1) for arg in args[:split]]
    command = args[split + 1 :]
    # Out of the way first: a passed fd may sit where another one has to go.
    high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for _, fd in pairs]
    for _, fd in pairs:
        os.close(int(fd))
    for i, spare in enumerate(high):
        os.dup2(spare, SD_LISTEN_FDS_START + i)  # inheritable: exec keeps it
        os.close(spare)
    os.environ["LISTEN_FDS"] = str(len(pairs))
    os.environ["LISTEN_FDNAMES"] = ":".join(name for name, _ in pairs)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execvp(command[0], command)


if __name__ == "__main__":
    launch(sys.argv[1:])
