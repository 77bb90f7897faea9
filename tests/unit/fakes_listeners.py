"""A tcp: or socketmap: listener on a real loopback socket over a fake database, and a
client that sends a request whole or in 1-byte pieces (test_servers_tcp_table.py,
test_servers_socketmap.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

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
