"""Every listener a running vmaild has (tcp:, socketmap, policy, auth, sasl, control), over real
sockets with fake services, fed hostile input: random bytes, valid requests with mutations,
huge lengths, NULs and CR/LF, partial frames, floods of pipelined requests, each ended by a
half-close, a close with replies unread, or a reset.

After each example: nothing reached the loop's exception handler and nothing was logged as
an internal error, the hostile connection was forgotten (``connections`` and the caps'
bookkeeping back to where they were), it cost a few log lines at most, and a well-formed
request on a new connection is answered right, at once.

The servers run on one event loop in a thread for the whole module; the hostile clients are
plain blocking sockets in the test's thread. Bounded: a fixed number of examples from a
fixed seed (``derandomize``), about 10 s in all.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from passlib.hash import sha512_crypt  # type: ignore[import-untyped]

from tests.unit.fakes import FakeApp, make_lookups
from tests.unit.fakes_auth import make_service
from tests.unit.fakes_listeners import ROWS
from vmaild.servers.base import start_listener
from vmaild.values import Listen

EXAMPLES = 150  # per listener
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# How long a hostile client may take to send and read, and a fresh request to be answered.
PATIENCE = 3.0
PROMPT = 1.0
# WARNING lines one hostile connection may cost: the first problem in full, a line a minute
# at most for the rest, and their count when the connection closes.
MAX_LOG_LINES = 3
MAX_LOG_LINE = 2048


def ns(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


POLICY_REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"client_address=192.0.2.1\nclient_name=mail.example.net\nhelo_name=mail.example.net\n"
    b"sender=a@example.net\nrecipient=joe@ex.com\nrecipient_count=0\nqueue_id=\n"
    b"instance=a5f.5f3b5d41.4a2.0\nsize=0\nsasl_username=\n\n"
)


@dataclass(frozen=True)
class Target:
    """One listener: a well-formed request, what answers it, and hostile extras that a
    random generator would hardly find (huge lengths, overlong lines)."""

    name: str
    request: bytes
    answered: Callable[[bytes], bool]
    extras: tuple[bytes, ...]


TARGETS = {
    "tcp": Target(
        "tcp:mailboxes",
        b"get joe@ex.com\n",
        lambda got: got == b"200 ex.com/joe/\n",
        (
            b"get " + b"a" * 70_000 + b"\n",
            b"get " + b"%" * 3000 + b"\n",
            b"get %zz%0%\n",
            b"\n" * 20_000,
            b"put a b\n" * 500,
            b"get joe@ex.com" * 5000,  # no line end at all
        ),
    ),
    "socketmap": Target(
        "socketmap",
        ns(b"mailboxes joe@ex.com"),
        lambda got: got == ns(b"OK ex.com/joe/"),
        (
            b"99999999999999999999:",
            b"4294967296:x",
            b"100001:" + b"x" * 100_001 + b",",
            b"-1:,",
            b"0:," * 20_000,
            b"00000000000000000000000000000000005:a b c,",
            ns(b"nosuchmap " + b"k" * 50_000),
            ns(b"mailboxes"),
            ns(b" "),
        ),
    ),
    "policy": Target(
        "policy",
        POLICY_REQUEST,
        lambda got: got == b"action=DUNNO\n\n",
        (
            b"a" * 200_000,
            b"request=smtpd_access_policy\n" * 5000,
            b"=\n\n",
            b"\n" * 5000,
            b"recipient=" + b"\x1b[31m\r" * 5000 + b"\n\n",
            b"".join(b"k%d=v\n" % i for i in range(500)) + b"\n",
        ),
    ),
    "auth": Target(
        "auth",
        b"PRE . login joe@example.test\n",
        lambda got: got.startswith(b"UID=5000\n") and got.endswith(b"\n.\n"),
        (
            b"AUTH 999999999\n",
            b"AUTH -1\n",
            b"AUTH 18446744073709551616\n",
            b"AUTH 20\nimap\nlogin\nx\n",
            b"RELAY 1\n" + b"PRE . login joe@example.test\n" * 300,
            b"RELAY 1\n" + b"AUTH 3\nx\n\n" * 500,
            b"PRE . login " + b"x" * 70_000 + b"\n",
            b"ENUMERATE\n" * 50,
            b"PASSWD a\tb\tc\n",
        ),
    ),
    "sasl": Target(
        "sasl",
        b"VERSION\t1\t0\nCPID\t42\nAUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1"
        b"\trip=192.0.2.1\tsecured\tresp=AGpvZUBleGFtcGxlLnRlc3QAczNjcmV0\n",
        lambda got: (
            got.startswith(b"VERSION\t1\t2\n")
            and got.endswith(b"DONE\nOK\t1\tuser=joe@example.test\n")
        ),
        (
            b"VERSION\t1\t0\nCPID\t1\n" + b"AUTH\t1\tLOGIN\tservice=smtp\n" * 50,
            b"VERSION\t1\t0\nCPID\t1\n"
            + b"".join(b"AUTH\t%d\tLOGIN\tservice=smtp\n" % i for i in range(1, 500)),
            b"VERSION\t1\t0\nCPID\t1\n" + b"".join(b"CONT\t%d\t=\n" % i for i in range(1, 500)),
            b"VERSION\t1\t0\nCPID\t1\nAUTH\t1\tPLAIN\tservice=smtp\tresp=" + b"A" * 70_000,
            b"VERSION\t9\t0\n",
            b"VERSION\t1\t0\nCPID\t1\nAUTH\t4294967295\tPLAIN\tservice=\x01t\tresp==\n",
        ),
    ),
    "control": Target(
        "control",
        b"ping\n",
        lambda got: got == b"ok\n",
        (b"x" * 10_000, b"flush\n" * 300, b"\0" * 300, b"ping\r\n" * 1000),
    ),
}


# -- the daemon: every listener on one loop in a thread ----------------------------------------


class Stub:
    """A policy service that answers DUNNO to everything."""

    async def decide(self, request: Any) -> str | None:
        return "DUNNO"


class Served:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))
        self.addresses: dict[str, tuple[str, int] | str] = {}
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> Served:
        self.thread.start()
        self.call(self._start())
        return self

    def call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(10)

    async def _start(self) -> None:
        service, db = self.auth_service = make_service(self.tmp, "rehash = no\nfail_delay = 0\n")
        db.add("joe@example.test", sha512_crypt.using(rounds=1000).hash("s3cret"))
        lookups, _, _ = make_lookups(ROWS)
        self.app = FakeApp(
            lookups=lookups,
            auth=service,
            policy=Stub(),
            metrics=service.metrics,
            authenticator=service,
        )
        app = self.app
        self.servers = []
        tcp: list[tuple[str, Callable[[], asyncio.Protocol]]] = [
            ("tcp", lambda: app.tcp_table("mailboxes")),
            ("socketmap", app.socketmap),
            ("policy", app.policy_listener),
        ]
        unix: list[tuple[str, Callable[[], asyncio.Protocol]]] = [
            ("auth", app.auth_listener),
            ("sasl", app.sasl_listener),
            ("control", app.control),
        ]
        for name, factory in tcp:
            server = await start_listener(Listen(host="127.0.0.1", port=0), factory)
            self.addresses[name] = ("127.0.0.1", server.sockets[0].getsockname()[1])
            self.servers.append(server)
        for name, factory in unix:
            path = str(self.tmp / "run" / f"{name}.sock")
            server = await start_listener(Listen(path=path), factory)
            self.addresses[name] = path
            self.servers.append(server)

    async def _stop(self) -> None:
        for server in self.servers:
            server.close()
        for conn in list(self.app.connections):
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0.05)

    def stop(self) -> None:
        self.call(self._stop())
        self.auth_service[0].close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def connect(self, name: str) -> socket.socket:
        address = self.addresses[name]
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX)
        else:
            sock = socket.socket(socket.AF_INET)
        sock.settimeout(PATIENCE)
        sock.connect(address)
        return sock

    def open_connections(self) -> tuple[int, int]:
        """Connections the listeners hold, and those the caps count (read from the loop)."""

        async def read() -> tuple[int, int]:
            return len(self.app.connections), sum(self.app.ctx.limits.open.values())

        result: tuple[int, int] = self.call(read())
        return result


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("fuzz")).start()
    try:
        yield s
    finally:
        s.stop()


class Warnings(logging.Handler):
    """The vmaild log lines at WARNING and above while installed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Warnings:
        logging.getLogger("vmaild").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("vmaild").removeHandler(self)


# -- hostile input -------------------------------------------------------------------------------

SPECIAL = [b"\0", b"\r", b"\n", b"\r\n", b":", b",", b"=", b" ", b"\t", b"\xff", b"\x1b", b"9"]


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """*valid* with a few bytes replaced, inserted or deleted."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.one_of(st.sampled_from(SPECIAL), st.binary(min_size=1, max_size=1)))
        if op == "insert" or pos == len(data):
            data[pos:pos] = byte
        elif op == "replace":
            data[pos : pos + 1] = byte
        else:
            del data[pos]
    return bytes(data)


def payloads(target: Target) -> st.SearchStrategy[bytes]:
    valid = target.request
    return st.one_of(
        st.binary(max_size=2048),
        mutated(valid),
        st.sampled_from(target.extras),
        st.integers(2, 300).map(lambda n: valid * n),  # pipelined
        st.integers(0, len(valid) - 1).map(lambda k: valid[:k]),  # a partial frame
        st.lists(st.sampled_from([*SPECIAL, valid]), max_size=200).map(b"".join),
    )


@st.composite
def attacks(draw: st.DrawFn, target: Target) -> tuple[list[bytes], str]:
    """What to send, in which pieces, and how the client goes away."""
    data = b"".join(draw(st.lists(payloads(target), min_size=1, max_size=4)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    bounds = [0, *cuts, len(data)]
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    ending = draw(st.sampled_from(["half-close", "close", "reset"]))
    return chunks, ending


def send_reading(sock: socket.socket, chunks: list[bytes], until: float) -> bool:
    """Send *chunks* while reading (and dropping) whatever comes back, as a client that
    reads its replies; False when the server closed or *until* passed first."""
    sock.setblocking(False)
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            left = until - time.monotonic()
            if left <= 0:
                return False
            readable, writable, _ = select.select([sock], [sock], [], left)
            try:
                if readable and not sock.recv(65536):
                    return False
                if writable:
                    view = view[sock.send(view) :]
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:  # reset or broken pipe: the server hung up
                return False
        time.sleep(0)  # let the server see the piece on its own
    return True


def read_to_eof(sock: socket.socket, until: float) -> bool:
    """True if the server closed before *until*."""
    while (left := until - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            return False
        try:
            if not sock.recv(65536):
                return True
        except BlockingIOError:
            continue
        except OSError:
            return True
    return False


def attack(served: Served, target: str, chunks: list[bytes], ending: str) -> None:
    until = time.monotonic() + PATIENCE
    sock = served.connect(target)
    try:
        open_ = send_reading(sock, chunks, until)
        if ending == "half-close":
            if open_:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    open_ = False
            # Whatever was asked is answered, then the server closes (half-close rule).
            assert not open_ or read_to_eof(sock, until), "half-closed client never closed"
        elif ending == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


def ask(served: Served, name: str) -> bytes:
    """A well-formed request on a new connection: the reply (read until it is complete)."""
    target = TARGETS[name]
    sock = served.connect(name)
    try:
        sock.sendall(target.request)
        got = b""
        while not target.answered(got):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got
    finally:
        sock.close()


def wait_until(condition: Callable[[], bool], within: float) -> bool:
    until = time.monotonic() + within
    while not condition():
        if time.monotonic() > until:
            return False
        time.sleep(0.005)
    return True


def check(served: Served, name: str, chunks: list[bytes], ending: str) -> None:
    # No connection open (the last example's fresh one may take a moment to go).
    baseline = (0, 0)
    assert wait_until(lambda: served.open_connections() == baseline, PATIENCE)
    errors_before = len(served.errors)
    with Warnings() as warnings:
        attack(served, name, chunks, ending)
        # Forgotten once the client is gone: nothing left of it in the listener or the caps.
        assert wait_until(lambda: served.open_connections() == baseline, PATIENCE), (
            served.open_connections(),
            baseline,
        )
    assert served.errors[errors_before:] == []
    # A traceback logged (``log.exception``: "internal error") is a bug; an ERROR line for
    # a problem the client caused (an unknown map) is not.
    internal = [r.getMessage() for r in warnings.records if r.exc_info]
    assert internal == []
    lines = [r.getMessage() for r in warnings.records]
    assert len(lines) <= MAX_LOG_LINES, lines
    assert all(len(line) <= MAX_LOG_LINE for line in lines), [len(x) for x in lines]
    started = time.monotonic()
    reply = ask(served, name)
    assert TARGETS[name].answered(reply), reply
    assert time.monotonic() - started < PROMPT


@pytest.mark.parametrize("name", list(TARGETS))
def test_well_formed_requests_are_answered(served: Served, name: str) -> None:
    check(served, name, [TARGETS[name].request], "half-close")


@FUZZ
@given(attacks(TARGETS["tcp"]))
def test_fuzz_tcp_table(served: Served, attack_: tuple[list[bytes], str]) -> None:
    check(served, "tcp", *attack_)


@FUZZ
@given(attacks(TARGETS["socketmap"]))
def test_fuzz_socketmap(served: Served, attack_: tuple[list[bytes], str]) -> None:
    check(served, "socketmap", *attack_)


@FUZZ
@given(attacks(TARGETS["policy"]))
def test_fuzz_policy(served: Served, attack_: tuple[list[bytes], str]) -> None:
    check(served, "policy", *attack_)


@FUZZ
@given(attacks(TARGETS["auth"]))
def test_fuzz_auth(served: Served, attack_: tuple[list[bytes], str]) -> None:
    check(served, "auth", *attack_)


@FUZZ
@given(attacks(TARGETS["sasl"]))
def test_fuzz_sasl(served: Served, attack_: tuple[list[bytes], str]) -> None:
    check(served, "sasl", *attack_)


@FUZZ
@given(attacks(TARGETS["control"]))
def test_fuzz_control(served: Served, attack_: tuple[list[bytes], str]) -> None:
    check(served, "control", *attack_)
