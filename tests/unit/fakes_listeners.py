"""A tcp: or socketmap: listener on a real loopback socket over a fake database, and a
client that sends a request whole or in 1-byte pieces (test_servers_tcp_table.py,
test_servers_socketmap.py); a flooding client, round-trip latencies and the log volume
(test_servers_base.py, test_servers_limits.py)."""

from __future__ import annotations

import asyncio
import logging
import select
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tests.unit.fakes import FakeApp, make_lookups
from vmaild.servers.base import start_listener
from vmaild.values import Listen

ROWS = {
    "joe@ex.com": [("ex.com/joe/",)],
    "100%@ex.com": [("pct",)],
    "a b@ex.com": [("value with spaces",)],
}


def run_server(
    factory_for: Callable[[FakeApp], Callable[[], asyncio.Protocol]],
    scenario: Callable[[int, object], Awaitable[None]],
    rows: dict[str, list[tuple[str, ...]]] = ROWS,
) -> None:
    async def main() -> None:
        lookups, db, metrics = make_lookups(rows)
        app = FakeApp(lookups=lookups, metrics=metrics)
        server = await start_listener(Listen(host="127.0.0.1", port=0), factory_for(app))
        port = server.sockets[0].getsockname()[1]
        try:
            await scenario(port, db)
        finally:
            server.close()
            for conn in list(app.connections):
                conn.transport.close()

    asyncio.run(asyncio.wait_for(main(), 20))


async def exchange(
    port: int, data: bytes, expect_bytes: int, pieces: bool = False, half_close: bool = False
) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if pieces:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
    else:
        writer.write(data)
    if half_close:
        writer.write_eof()
    got = b""
    while len(got) < expect_bytes:
        chunk = await reader.read(65536)
        if not chunk:
            break
        got += chunk
    writer.close()
    return got


def run_server_with_app(
    factory_for: Callable[[FakeApp], Callable[[], asyncio.Protocol]],
    scenario: Callable[[int, Any, FakeApp], Awaitable[None]],
    rows: dict[str, list[tuple[str, ...]]] = ROWS,
    timeout: float = 30,
) -> None:
    """As run_server, and the scenario gets the FakeApp too (its metrics, connections and
    connection limits)."""

    async def main() -> None:
        lookups, db, metrics = make_lookups(rows)
        app = FakeApp(lookups=lookups, metrics=metrics)
        server = await start_listener(Listen(host="127.0.0.1", port=0), factory_for(app))
        port = server.sockets[0].getsockname()[1]
        try:
            await scenario(port, db, app)
        finally:
            server.close()
            for conn in list(app.connections):
                conn.transport.close()

    asyncio.run(asyncio.wait_for(main(), timeout))


_FLOOD = r"""
import socket, sys, threading, time
address, read = sys.argv[1], sys.argv[2] == "1"
data = sys.stdin.buffer.read()
if address.startswith("/"):
    s = socket.socket(socket.AF_UNIX)
    s.connect(address)
else:
    s = socket.create_connection((address.rpartition(":")[0], int(address.rpartition(":")[2])))
sys.stdout.write("connected\n")
sys.stdout.flush()
def drain():
    while s.recv(65536):
        pass
t = threading.Thread(target=drain, daemon=True)
if read:
    t.start()
try:
    s.sendall(data)
except OSError:
    pass
sys.stdout.write("sent\n")
sys.stdout.flush()
t.join() if read else time.sleep(3600)
"""


class Flood:
    """Another client, in another process: it writes *data* as fast as the server takes
    it while reading (and dropping) every reply, or reads nothing at all (``read=False``).
    A process, not a thread: a thread would share the GIL with the server's loop."""

    def __init__(self, address: tuple[str, int] | str, data: bytes, read: bool = True):
        self.address = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
        self.data = data
        self.read = read
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Flood:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FLOOD, self.address, "1" if self.read else "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(self.data)
        self.proc.stdin.close()
        # Connected (the kernel completes the handshake without the server's accept).
        assert self.proc.stdout.readline() == b"connected\n"
        return self

    @property
    def sent(self) -> bool:
        """True once every byte was written to the socket."""
        assert self.proc is not None and self.proc.stdout is not None
        return bool(select.select([self.proc.stdout], [], [], 0)[0])

    @property
    def done(self) -> bool:
        """True once the flood is over: everything answered, or the server closed."""
        return self.proc is not None and self.proc.poll() is not None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            assert self.proc.stdout is not None
            self.proc.stdout.close()


async def latencies(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request: bytes,
    reply: bytes,
    count: int,
) -> list[float]:
    """Send *request* *count* times, one at a time as Postfix does; each round trip's
    seconds, checking every reply."""
    out = []
    for _ in range(count):
        started = time.perf_counter()
        writer.write(request)
        got = await reader.readexactly(len(reply))
        out.append(time.perf_counter() - started)
        assert got == reply
    return out


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class LogVolume(logging.Handler):
    """Counts the lines and bytes vmaild logs at INFO and above while installed."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    @property
    def size(self) -> int:
        return sum(len(line) + 1 for line in self.lines)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> LogVolume:
        logger = logging.getLogger("vmaild")
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("vmaild")
        logger.removeHandler(self)
        logger.setLevel(self._level)
