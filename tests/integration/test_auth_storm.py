"""50 concurrent logins must not block vmaild's event loop (README.md, "The event loop
never waits"): while they are verified, tcp: lookups keep their latency.

Not a performance test: the bound is generous. The logins go straight to vmaild's ``[auth]``
socket, 50 at once (authdaemond would let only its 5 workers through), each for a different
account so that none is answered from the verified-login cache, all with a sha512_crypt hash
at passlib's default cost (656,000 rounds: a few hundred ms of CPU each). The lookups mix
cache hits (answered on the event loop itself) and misses (a database query each).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import CourierSession
from tests.integration.test_auth import Stack, auth_stack
from vmaild import passwords

LOGINS = 50
P99_BOUND = 0.050


@pytest.fixture(scope="module")
def stack(courier: CourierSession) -> Iterator[Stack]:
    with auth_stack(courier) as s:
        yield s


def login(stack: Stack, user: str, password: str) -> bytes:
    body = f"imap\nlogin\n{user}\n{password}\n".encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(120)
        s.connect(str(stack.auth_socket))
        s.sendall(b"AUTH %d\n" % len(body) + body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply


class Lookups:
    """Sequential tcp_table requests on one connection, each timed."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.n = 0

    def one(self) -> float:
        self.n += 1
        key = "sales@raecoo.com" if self.n % 2 else f"nobody-{self.n}@example.test"
        started = time.perf_counter()
        self.sock.sendall(f"get {key}\n".encode())
        line = self.file.readline()
        elapsed = time.perf_counter() - started
        assert line[:3] in (b"200", b"500"), line
        return elapsed

    def run_while(self, busy: threading.Event | None, seconds: float = 0.0) -> list[float]:
        times, end = [], time.monotonic() + seconds
        while (busy is not None and busy.is_set()) or time.monotonic() < end:
            times.append(self.one())
            time.sleep(0.002)
        return times

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def test_fifty_concurrent_logins_do_not_block_lookups(stack: Stack) -> None:
    heavy = passwords.hash_password("storm-pw", "sha512_crypt")  # passlib's default cost
    users = [stack.add_user("storm-pw", stored=heavy) for _ in range(LOGINS)]
    lookups = Lookups(stack.ports["mailboxes"])
    try:
        before = lookups.run_while(None, seconds=1.0)
        replies: dict[str, bytes] = {}
        busy = threading.Event()
        busy.set()
        threads = [
            threading.Thread(target=lambda u=u: replies.__setitem__(u, login(stack, u, "storm-pw")))
            for u in users
        ]
        started = time.monotonic()
        for t in threads:
            t.start()

        def wait_all() -> None:
            for t in threads:
                t.join(300)
            busy.clear()

        waiter = threading.Thread(target=wait_all)
        waiter.start()
        during = lookups.run_while(busy)
        waiter.join()
        storm = time.monotonic() - started
    finally:
        lookups.close()
    assert all(replies[u].endswith(b"\n.\n") for u in users), replies
    assert storm > 1.0, "the logins were too cheap to prove anything"
    report = (
        f"{len(during)} lookups during {storm:.1f} s of {LOGINS} logins: "
        f"p99 {p99(during) * 1000:.1f} ms (before: {p99(before) * 1000:.1f} ms)"
    )
    print(report)
    assert p99(during) < P99_BOUND, report
