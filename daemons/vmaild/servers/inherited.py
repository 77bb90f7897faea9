"""Listening sockets passed by systemd (socket activation, sd_listen_fds(3)).

systemd's vmaild.socket binds Postfix's sockets and hands them to every vmaild it starts,
so they outlive a restart: a connection made while vmaild is down waits in the backlog
and is answered by the next process, instead of failing (an smtpd that finds no SASL
socket exits, and Postfix's master then throttles that service for a minute).

The protocol (sd_listen_fds(3), "file descriptor passing"): ``LISTEN_PID`` is the pid the
sockets are meant for (a variable inherited by another process is not ours), ``LISTEN_FDS``
how many, starting at fd 3 (SD_LISTEN_FDS_START), ``LISTEN_FDNAMES`` their names
(FileDescriptorName=), colon-separated. The variables are unset once read, as
sd_listen_fds(unset_environment=1) does, and the descriptors made close-on-exec.

A configured listener takes the inherited socket bound to its address (compared with
getsockname(), never by name) instead of binding one; the rest are bound as usual. An
inherited unix socket belongs to systemd: vmaild never unlinks it nor changes its mode
(SocketUser=, SocketGroup=, SocketMode= are the unit's). The pool keeps each inherited
socket for the life of the process and hands listeners a duplicate, so a listener closed
by a reload and reopened by a later one gets the same socket again.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

from ..values import Listen

log = logging.getLogger("vmaild.server")

SD_LISTEN_FDS_START = 3
# What a listener can be configured with (unix:/path, host:port). ListenStream= with
# Accept=no passes listening stream sockets; anything else (ListenDatagram=, a netlink
# socket) is nothing a vmaild listener can serve.
_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)

# A socket's address as compared: ("unix", path) or ("inet", ip, port).
Address = tuple[str, str] | tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class Passed:
    """One descriptor systemd passed, with its FileDescriptorName= ("unknown" if none)."""

    fd: int
    name: str


def passed_fds(environ: MutableMapping[str, str], pid: int) -> list[Passed]:
    """The descriptors passed to process ``pid`` according to ``environ``, whose
    LISTEN_* variables are removed (on ``os.environ`` that unsets them).

    Nothing for another process's variables (LISTEN_PID differs) or unusable ones; a
    malformed LISTEN_FDS is logged, never fatal: vmaild then binds as without systemd."""
    listen_pid = environ.pop("LISTEN_PID", None)
    listen_fds = environ.pop("LISTEN_FDS", None)
    names_raw = environ.pop("LISTEN_FDNAMES", None)
    if listen_pid is None or listen_fds is None:
        return []
    if not listen_pid.isdigit() or int(listen_pid) != pid:
        return []  # meant for the process that ran us (or garbage): not ours
    if not listen_fds.isdigit():
        log.warning("LISTEN_FDS=%r is not a number: no sockets taken from systemd", listen_fds)
        return []
    count = int(listen_fds)
    names = names_raw.split(":") if names_raw else []
    if len(names) != count:
        names = ["unknown"] * count  # sd_listen_fds_with_names(3) would refuse them all
    passed = [Passed(SD_LISTEN_FDS_START + i, names[i]) for i in range(count)]
    for p in passed:
        with contextlib.suppress(OSError):
            os.set_inheritable(p.fd, False)  # FD_CLOEXEC, as sd_listen_fds(3) sets it
    return passed


def unix_address(path: str) -> Address:
    return ("unix", os.path.normpath(path))


def inet_address(host: str, port: int) -> Address:
    return ("inet", str(ipaddress.ip_address(host.split("%", 1)[0])), port)


def address_of(sock: socket.socket) -> Address | None:
    """What a listener would be configured with to get this socket; None for an unnamed
    or abstract unix socket (no path to configure)."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if not name or isinstance(name, bytes) or name.startswith("\0"):
            return None
        return unix_address(name)
    return inet_address(name[0], name[1])


def addresses_of(listen: Listen) -> set[Address]:
    """The addresses a configured listener would bind: a unix path, or every address its
    host stands for (a name such as ``localhost`` may stand for 127.0.0.1 and ::1)."""
    if listen.path is not None:
        return {unix_address(listen.path)}
    assert listen.host is not None and listen.port is not None
    try:
        return {inet_address(listen.host, listen.port)}
    except ValueError:
        pass  # a name, not an IP literal
    try:
        infos = socket.getaddrinfo(
            listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError:
        return set()
    return {inet_address(str(info[4][0]), listen.port) for info in infos}


class InheritedSockets:
    """The listening sockets systemd passed, by address; empty without socket activation."""

    def __init__(self, sockets: list[tuple[socket.socket, str]] | None = None):
        self._by_address: dict[Address, tuple[socket.socket, str]] = {}
        self._taken: set[Address] = set()
        for sock, name in sockets or ():
            address = self._usable(sock, name)
            if address is None:
                sock.close()
            else:
                self._by_address[address] = (sock, name)

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None, pid: int | None = None
    ) -> InheritedSockets:
        """What systemd passed to this process (``os.environ``, ``os.getpid()``)."""
        environ = os.environ if environ is None else environ
        passed = passed_fds(environ, os.getpid() if pid is None else pid)
        sockets = []
        for p in passed:
            try:
                sockets.append((socket.socket(fileno=p.fd), p.name))
            except OSError as e:  # not a socket: a unit passing something else
                log.warning("systemd passed fd %d (%s), not a socket: %s; closed", p.fd, p.name, e)
                with contextlib.suppress(OSError):
                    os.close(p.fd)
        return cls(sockets)

    @staticmethod
    def _usable(sock: socket.socket, name: str) -> Address | None:
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            address = address_of(sock) if sock.family in _FAMILIES else None
        except OSError:
            listening, address = 0, None
        if sock.type != socket.SOCK_STREAM or not listening or address is None:
            log.warning(
                "systemd passed %s (%s), not a listening stream socket with an address; closed",
                name,
                _shown(sock),
            )
            return None
        return address

    def __len__(self) -> int:
        return len(self._by_address)

    def take(self, listen: Listen) -> socket.socket | None:
        """A duplicate of the inherited socket bound to ``listen``'s address, for the
        listener to own (and close); None when systemd passed none for it."""
        if not self._by_address:
            return None  # not socket-activated: no name to resolve
        for address in addresses_of(listen):
            if address in self._by_address:
                self._taken.add(address)
                return self._by_address[address][0].dup()
        return None

    def close_unclaimed(self) -> None:
        """Close, with one warning each, the sockets no configured listener took: vmaild
        would never answer on them (a socket unit that names a path vmaild.conf does not)."""
        for address, (sock, name) in list(self._by_address.items()):
            if address in self._taken:
                continue
            log.warning(
                "systemd passed %s (%s), which no listener in the configuration names; closed",
                name,
                _shown(sock),
            )
            sock.close()
            del self._by_address[address]

    def close(self) -> None:
        for sock, _ in self._by_address.values():
            sock.close()
        self._by_address.clear()


def _shown(sock: socket.socket) -> str:
    """An inherited socket's address for a log line: ``unix:/path`` or ``host:port``."""
    try:
        name = sock.getsockname()
    except OSError:
        return f"fd {sock.fileno()}"
    if sock.family == socket.AF_UNIX:
        return f"unix:{name!s}" if name else "an unnamed unix socket"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    if sock.family == socket.AF_INET:
        return f"{name[0]}:{name[1]}"
    return f"fd {sock.fileno()}"
