"""A steady load on one or more vmaild mail hosts, the way Postfix and Courier ask.

Per host, client threads that run until :meth:`Load.stop`:

* a Postfix ``tcp:`` table client (tcp_table(5): ``get KEY`` -> ``200 value``, ``500``
  not found, ``400`` temporary) on the mailboxes map, on one kept-open connection;
* a ``socketmap:`` client (netstrings, ``OK``/``NOTFOUND``/``TEMP``/``PERM``) on the
  mailboxes and forwardings maps, on one kept-open connection;
* a login client on the auth socket (Courier's ``AUTH`` request, one connection each, as
  vmaild-authpipe does): the right password of one account, now and then a wrong one of
  another (so the brute-force guard never blocks the right one);
* policy clients (``smtpd_access_policy`` at RCPT, one kept-open connection each) for one
  login that all hosts share, so that their sending counters race.

A :class:`Creator` thread adds and removes mailboxes with the real ``vmailctl`` all along,
each command with one host's configuration (so it tells that host), and writes what it did
into the :class:`harness.stack.ledger.Ledger`.

Each answer is appended to :attr:`Load.answers` (a list append is atomic in CPython); the
judging is done afterwards, by harness.stack.ledger.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.stack.ledger import (
    ABSENT,
    DYNAMIC,
    EXISTS,
    LOGIN,
    LOOKUP,
    POLICY,
    RIGHT,
    WRONG,
    Answer,
    Ledger,
)

TIMEOUT = 15.0  # seconds a client waits for one answer (Postfix: 100 s for tcp:)
PAUSE = 0.02  # between two requests of one client thread


@dataclass
class HostEndpoints:
    name: str
    mailboxes_port: int  # the mailboxes map's tcp: port
    socketmap_port: int
    auth_socket: Path
    policy_port: int
    config: Path  # its vmaild.conf, which vmailctl uses to tell it


def mailbox_value(address: str) -> str:
    """The seed's mailboxes query: domain/user/."""
    user, domain = address.split("@")
    return f"{domain}/{user}/"


class _Conn:
    """One kept-open client connection, reopened after a failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buf = b""

    def open(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
            self.buf = b""
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def read_until(self, end: bytes) -> bytes:
        assert self.sock is not None
        while end not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buf += chunk
        reply, _, self.buf = self.buf.partition(end)
        return reply

    def read_netstring(self) -> bytes:
        assert self.sock is not None
        while True:
            head, colon, rest = self.buf.partition(b":")
            if colon and len(rest) > int(head):
                if rest[int(head) : int(head) + 1] != b",":
                    raise ConnectionError("malformed netstring")
                self.buf = rest[int(head) + 1 :]
                return rest[: int(head)]
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buf += chunk


def tcp_get(conn: _Conn, key: str) -> tuple[str, str]:
    """One tcp: lookup: (outcome, reply line)."""
    sock = conn.open()
    sock.sendall(f"get {key}\n".encode())
    line = conn.read_until(b"\n").decode(errors="replace")
    code = line[:3]
    outcome = {"200": "found", "500": "notfound", "400": "4xx"}.get(code, "5xx")
    return (outcome if outcome != "found" else "found:" + line[4:]), line


def socketmap_get(conn: _Conn, name: str, key: str) -> tuple[str, str]:
    """One socketmap lookup: (outcome, reply)."""
    sock = conn.open()
    request = f"{name} {key}".encode()
    sock.sendall(b"%d:%s," % (len(request), request))
    reply = conn.read_netstring().decode(errors="replace")
    status, _, value = reply.partition(" ")
    outcome = {"OK": "found", "NOTFOUND": "notfound", "TEMP": "4xx"}.get(status, "5xx")
    return (outcome if outcome != "found" else "found:" + value), reply


def auth_login(path: Path, user: str, password: str) -> tuple[str, str]:
    """One Courier AUTH request for an IMAP login: ok, fail, or tempfail (vmaild closes
    the connection without an answer when it cannot decide)."""
    body = f"imap\nlogin\n{user}\n{password}\n".encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(str(path))
        s.sendall(b"AUTH %d\n" % len(body) + body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    text = reply.decode(errors="replace")
    if reply.startswith(b"FAIL"):
        return "fail", text
    return ("ok" if reply.endswith(b".\n") else "tempfail"), text[:60]


def encode_policy(request: dict[str, str]) -> bytes:
    """A policy request as Postfix writes it: name=value lines, then an empty line."""
    return ("".join(f"{k}={v}\n" for k, v in request.items()) + "\n").encode()


def policy_action(port: int, request: dict[str, str]) -> str:
    """One policy request on a connection of its own (PROTOCOLS.md section 3): the action,
    or "" when vmaild closed the connection without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(encode_policy(request))
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = sock.recv(4096)
            if not chunk:
                return ""
            reply += chunk
    return reply.decode().strip().removeprefix("action=")


def policy_ask(conn: _Conn, login: str, recipient: str, instance: str) -> tuple[str, str]:
    """One RCPT-time request of an authenticated session: (outcome, action)."""
    request = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": "192.0.2.10",
        "sasl_username": login,
        "sender": login,
        "recipient": recipient,
        "recipient_count": "0",
        "instance": instance,
    }
    sock = conn.open()
    sock.sendall(encode_policy(request))
    action = conn.read_until(b"\n\n").decode(errors="replace").removeprefix("action=")
    if action == "DUNNO":
        return "accepted", action
    if action.startswith("450 4.7.1"):
        return "over", action
    return ("4xx" if action[:1] == "4" or action.startswith("DEFER") else "other"), action


class Load:
    """The client threads of every host; answers in :attr:`answers`."""

    def __init__(
        self,
        hosts: list[HostEndpoints],
        ledger: Ledger,
        existing: dict[str, str],
        aliases: dict[str, str],
        absent: str,
        login: tuple[str, str],
        decoy: str,
        policy_login: Callable[[], str],
        policy_recipient: str,
        policy_clients: int = 2,
    ) -> None:
        self.hosts = hosts
        self.ledger = ledger
        self.existing = existing  # address -> mailbox value, existing throughout
        self.aliases = aliases  # forwardings source -> destination, existing throughout
        self.absent = absent
        self.login, self.decoy = login, decoy
        self.policy_login = policy_login  # the login of the current phase
        self.policy_recipient = policy_recipient
        self.answers: list[Answer] = []
        self._halt = threading.Event()
        self._threads: list[threading.Thread] = []
        self._serial = 0
        self._serial_lock = threading.Lock()
        for h in hosts:
            self._spawn(f"tcp-{h.name}", self._tcp_loop, h)
            self._spawn(f"socketmap-{h.name}", self._socketmap_loop, h)
            self._spawn(f"login-{h.name}", self._login_loop, h)
            for i in range(policy_clients):
                self._spawn(f"policy-{h.name}{i}", self._policy_loop, h)

    def _spawn(self, name: str, loop: Callable[[HostEndpoints], None], h: HostEndpoints) -> None:
        self._threads.append(threading.Thread(target=loop, args=(h,), name=name, daemon=True))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._halt.set()
        for t in self._threads:
            t.join(TIMEOUT + 5)

    def _record(
        self, host: str, kind: str, key: str, expect: str, t0: float, got: str, raw: str
    ) -> None:
        self.answers.append(Answer(host, kind, key, expect, t0, time.monotonic(), got, raw))

    def _keys(self) -> list[tuple[str, str, str]]:
        """(address, expect, value) to look up this round."""
        keys = [(a, EXISTS, v) for a, v in self.existing.items()]
        keys.append((self.absent, ABSENT, ""))
        keys += [(a, DYNAMIC, mailbox_value(a)) for a in self.ledger.recent()]
        return keys

    def _lookup_loop(
        self,
        h: HostEndpoints,
        ask: Callable[[_Conn, str, str], tuple[str, str]],
        port: int,
        rounds: Callable[[], list[tuple[str, str, str, str]]],
    ) -> None:
        """Ask every (map, key) of ``rounds()`` over one kept connection, again and again,
        recording each answer, until halted."""
        conn = _Conn(port)
        while not self._halt.is_set():
            for name, key, expect, value in rounds():
                t0 = time.monotonic()
                try:
                    got, raw = ask(conn, name, key)
                except (OSError, ValueError) as e:
                    conn.close()
                    got, raw = "err", str(e)
                if got.startswith("found:"):
                    got = "found" if got == f"found:{value}" else "5xx"
                self._record(h.name, LOOKUP, key, expect, t0, got, raw)
                if self._halt.is_set():
                    break
            self._halt.wait(PAUSE)
        conn.close()

    def _mailboxes(self) -> list[tuple[str, str, str, str]]:
        return [("mailboxes", k, e, v) for k, e, v in self._keys()]

    def _mailboxes_and_aliases(self) -> list[tuple[str, str, str, str]]:
        aliases = [("forwardings", s, EXISTS, d) for s, d in self.aliases.items()]
        return self._mailboxes() + aliases

    def _tcp_loop(self, h: HostEndpoints) -> None:
        self._lookup_loop(
            h, lambda c, _name, key: tcp_get(c, key), h.mailboxes_port, self._mailboxes
        )

    def _socketmap_loop(self, h: HostEndpoints) -> None:
        self._lookup_loop(h, socketmap_get, h.socketmap_port, self._mailboxes_and_aliases)

    def _login_loop(self, h: HostEndpoints) -> None:
        n = 0
        while not self._halt.is_set():
            n += 1
            user, password, expect = (
                (self.decoy, f"not-the-password-{n}", WRONG) if n % 5 == 0 else (*self.login, RIGHT)
            )
            t0 = time.monotonic()
            try:
                got, raw = auth_login(h.auth_socket, user, password)
            except OSError as e:
                got, raw = "tempfail", str(e)
            self._record(h.name, LOGIN, user, expect, t0, got, raw)
            self._halt.wait(PAUSE)

    def _policy_loop(self, h: HostEndpoints) -> None:
        conn = _Conn(h.policy_port)
        while not self._halt.is_set():
            login = self.policy_login()
            with self._serial_lock:
                self._serial += 1
                instance = f"{h.name}.{self._serial}"  # a new mail transaction each time
            t0 = time.monotonic()
            try:
                got, raw = policy_ask(conn, login, self.policy_recipient, instance)
            except OSError as e:
                conn.close()
                got, raw = "4xx", f"connection: {e}"  # Postfix: default_action after retry
            self._record(h.name, POLICY, login, "", t0, got, raw)
            self._halt.wait(PAUSE)
        conn.close()


class Creator(threading.Thread):
    """Adds a new mailbox, then removes the one added two steps before, with vmailctl,
    alternating the hosts whose configuration (and so whose notification) it uses."""

    def __init__(self, vmailctl: Path, hosts: list[HostEndpoints], ledger: Ledger, domain: str):
        super().__init__(name="creator", daemon=True)
        self.vmailctl = vmailctl
        self.hosts = hosts
        self.ledger = ledger
        self.domain = domain
        self.failures: list[str] = []
        self.commands = 0
        self._halt = threading.Event()

    def _run(self, host: HostEndpoints, *args: str, stdin: str = "") -> bool:
        self.commands += 1
        try:
            done = subprocess.run(
                [str(self.vmailctl), "-c", str(host.config), *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            self.failures.append(f"{args}: timed out")
            return False
        if done.returncode != 0:
            self.failures.append(f"{args}: exit {done.returncode}: {done.stderr.strip()[-200:]}")
        return done.returncode == 0

    def _op(self, n: int, key: str, add: bool) -> bool:
        return self.op(self.hosts[n % len(self.hosts)], key, add)

    def op(self, host: HostEndpoints, key: str, add: bool, pinned: bool = False) -> bool:
        """One ``vmailctl user add``/``remove`` with ``host``'s configuration (it tells
        that host), recorded in the ledger; also callable from another thread. A pinned
        key is looked up until the end of the run."""
        t0 = time.monotonic()
        if add:
            self.ledger.begin(key, pinned)
            ok = self._run(host, "user", "add", key, "--password-stdin", stdin="new-pw-1\n")
        else:
            ok = self._run(host, "user", "remove", key)
        self.ledger.record(key, add, t0, time.monotonic(), ok, host.name)
        return ok

    def run(self) -> None:
        added: list[str] = []
        n = 0
        while not self._halt.is_set():
            key = f"new{n}@{self.domain}"
            if self._op(n, key, True):
                added.append(key)
            n += 1
            if len(added) > 2 and not self._halt.is_set():
                self._op(n, added.pop(0), False)
            self._halt.wait(0.2)

    def stop(self) -> None:
        self._halt.set()
        self.join(90)
