"""What every listener shares: binding TCP or unix sockets, and a sequential protocol.

Postfix's table and policy clients, and authdaemond, send one request and wait for its
reply before the next (PROTOCOLS.md §1.4, §2.4, §3.3), so each connection is served
strictly in order. ``SequentialProtocol`` answers what it can at once (a fresh cache hit
costs no task switch) and runs the rest as a coroutine with reading paused, which keeps
the order and bounds what one client can make the daemon buffer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..metrics import Metrics
from ..values import Listen
from .sockets import bind_unix

log = logging.getLogger("vmaild.server")


class ProtocolError(Exception):
    """The client broke the framing; the connection cannot continue."""


@dataclass(frozen=True, slots=True)
class ListenerContext:
    """What every listener shares with the daemon, whatever its protocol: the metrics
    (connections, protocol errors) and the set of open connections, which the daemon
    drains on stop. It outlives reloads; what a listener answers from comes through a
    getter instead (interfaces.py)."""

    metrics: Metrics
    connections: set[SequentialProtocol] = field(default_factory=set)


class SequentialProtocol(asyncio.Protocol):
    """Subclasses implement ``decode``, ``answer_now`` and ``answer``."""

    listener = "?"  # metric label, set by subclasses or per instance

    def __init__(self, ctx: ListenerContext):
        self.metrics = ctx.metrics
        self.connections = ctx.connections
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[Any] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self._paused_writing = False

    # -- to implement ----------------------------------------------------------------------

    def decode(self, data: bytes) -> list[Any]:
        """Feed bytes to the codec; raise ProtocolError (or the codec's error) to hang up."""
        raise NotImplementedError

    def answer_now(self, request: Any) -> bytes | None:
        """The reply if it needs no waiting, else None (then ``answer`` is awaited)."""
        return None

    async def answer(self, request: Any) -> bytes | None:
        """The reply; None means "close without replying" (after a logged error)."""
        raise NotImplementedError

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but have its methods.
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        self.metrics.connections.labels(self.listener).inc()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.metrics.connections.labels(self.listener).dec()
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.queue.extend(self.decode(data))
        except Exception as e:  # noqa: BLE001 - any codec error ends this client only
            # The codecs hand back what they decoded before the garbage: answer that,
            # then hang up (the framing is lost, there is no way to answer the rest).
            decoded = getattr(e, "decoded", None)
            if not decoded:
                self.protocol_error(str(e) or type(e).__name__)
                return
            self.metrics.protocol_errors.labels(self.listener).inc()
            log.warning(
                "%s: closing connection after %d requests: %s", self.listener, len(decoded), e
            )
            self.queue.extend(decoded)
            self.closing = True
        if self.task is None:
            self._run_queue()

    def eof_received(self) -> bool | None:
        # Half-close: finish what was asked, then close (returning None closes at once
        # when nothing is pending).
        if self.task is None and not self.queue:
            return None
        self.closing = True
        return True

    def pause_writing(self) -> None:
        self._paused_writing = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self.transport is not None and self.task is None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- helpers ---------------------------------------------------------------------------

    def protocol_error(self, reason: str, reply: bytes | None = None) -> None:
        self.metrics.protocol_errors.labels(self.listener).inc()
        log.warning("%s: closing connection: %s", self.listener, reason)
        if self.transport is not None:
            if reply:
                self.transport.write(reply)
            self.transport.close()
        self.queue.clear()

    def _run_queue(self) -> None:
        transport = self.transport
        assert transport is not None
        while self.queue and not transport.is_closing():
            request = self.queue.popleft()
            try:
                reply = self.answer_now(request)
            except Exception:  # noqa: BLE001
                log.exception("%s: internal error", self.listener)
                transport.close()
                return
            if reply is None:
                transport.pause_reading()
                self.task = asyncio.get_running_loop().create_task(self._answer_later(request))
                return
            transport.write(reply)
        if self.closing and not self.queue:
            transport.close()

    async def _answer_later(self, request: Any) -> None:
        transport = self.transport
        assert transport is not None
        try:
            reply = await self.answer(request)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("%s: internal error", self.listener)
            reply = None
        self.task = None
        if transport.is_closing():
            return
        if reply is None:
            transport.close()
            return
        transport.write(reply)
        if not self._paused_writing:
            transport.resume_reading()
        self._run_queue()

    @property
    def busy(self) -> bool:
        return self.task is not None


async def start_listener(
    listen: Listen, factory: Callable[[], asyncio.Protocol], mode: int = 0o660
) -> asyncio.Server:
    """Bind ``listen`` (TCP, or a unix socket with ``mode``) and serve ``factory``.

    A unix socket appears with its final mode, in a directory nobody else can write to
    (sockets.py); an unsafe directory raises OSError with one line."""
    loop = asyncio.get_running_loop()
    if listen.path is not None:
        sock = bind_unix(listen.path, mode)
        try:
            return await loop.create_unix_server(factory, sock=sock, backlog=1024)
        except BaseException:
            sock.close()
            raise
    assert listen.port is not None
    return await loop.create_server(
        factory, host=listen.host, port=listen.port, reuse_address=True, backlog=1024
    )
