"""``/metrics`` on the event loop (metrics_http.py): the HTTP it speaks, the cached
rendering, the cap on scrapes served at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from harness.common.ports import free_port
from vmaild.metrics import Metrics
from vmaild.metrics_http import MetricsEndpoint


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """vmaild runs on uvloop when it can (cli.py), whose transports differ in details."""
    global RUN
    RUN = uvloop.run if request.param == "uvloop" else asyncio.run
    return str(request.param)


RUN: Callable[..., object] = asyncio.run
METRICS = Metrics()


def serve(
    scenario: Callable[[MetricsEndpoint, int], Awaitable[None]], **kw: float
) -> MetricsEndpoint:
    global METRICS
    metrics = METRICS = Metrics()
    metrics.lookup_stats.observe("mailboxes", "hit", 0.00003)
    metrics.db_up.labels("127.0.0.1:3306").set(1)
    endpoint = MetricsEndpoint(metrics.render, **kw)  # type: ignore[arg-type]

    async def main() -> None:
        port = free_port()
        await endpoint.start("127.0.0.1", port)
        try:
            await scenario(endpoint, port)
        finally:
            endpoint.close()

    RUN(asyncio.wait_for(main(), 20))
    return endpoint


async def request(port: int, raw: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


GET = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nAccept-Encoding: gzip\r\n\r\n"


def test_a_scrape_gets_valid_prometheus_text() -> None:
    async def scenario(_: MetricsEndpoint, port: int) -> None:
        head, body = await request(port, GET)
        assert head.startswith(b"HTTP/1.0 200 OK\r\n")
        assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
        assert f"Content-Length: {len(body)}".encode() in head
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["vmaild_lookups"].samples[0].labels == {
            "map": "mailboxes",
            "outcome": "hit",
        }
        assert families["vmaild_db_up"].samples[0].value == 1

    serve(scenario)


def test_other_requests() -> None:
    async def scenario(_: MetricsEndpoint, port: int) -> None:
        head, body = await request(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK") and body == b""
        head, _ = await request(port, b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK")
        head, _ = await request(port, b"GET /other HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 404")
        head, _ = await request(port, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 405")
        head, _ = await request(port, b"\x16\x03\x01 hello\n\n")
        assert head.startswith(b"HTTP/1.0 400")
        head, _ = await request(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10_000)
        assert head.startswith(b"HTTP/1.0 431")

    serve(scenario)


def test_many_scrapes_share_few_renderings() -> None:
    async def scenario(endpoint: MetricsEndpoint, port: int) -> None:
        bodies = await asyncio.gather(*(request(port, GET) for _ in range(50)))
        assert all(head.startswith(b"HTTP/1.0 200 OK") for head, _ in bodies)
        assert endpoint.rendering.renders <= 2  # the first at once, the others shared

    serve(scenario, interval=0.3)


def test_a_scrape_never_gets_figures_older_than_itself() -> None:
    async def scenario(endpoint: MetricsEndpoint, port: int) -> None:
        _, before = await request(port, GET)
        assert b'vmaild_db_up{host="127.0.0.1:3306"} 1.0' in before
        METRICS.db_up.labels("127.0.0.1:3306").set(0)
        started = asyncio.get_running_loop().time()
        _, after = await request(port, GET)
        assert b'vmaild_db_up{host="127.0.0.1:3306"} 0.0' in after
        assert asyncio.get_running_loop().time() - started >= 0.2  # waited for its slot

    serve(scenario, interval=0.3)


def test_no_more_than_max_clients_at_once_and_idle_ones_time_out() -> None:
    async def scenario(endpoint: MetricsEndpoint, port: int) -> None:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert endpoint.active == 2
        waiting = asyncio.create_task(request(port, GET))
        await asyncio.sleep(0.1)
        assert not waiting.done() and endpoint.active == 2  # in the backlog, not accepted
        # the idle ones are closed after `timeout`; then the waiting scrape is served
        head, _ = await asyncio.wait_for(waiting, 5)
        assert head.startswith(b"HTTP/1.0 200 OK")
        for reader, writer in idle:
            assert await reader.read() == b""
            writer.close()
        await asyncio.sleep(0.05)
        assert endpoint.active == 0

    serve(scenario, max_clients=2, timeout=0.5)
