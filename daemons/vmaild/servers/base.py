"""What every listener shares: binding TCP or unix sockets, and a sequential protocol.

Postfix's table and policy clients, and authdaemond, send one request and wait for its
reply before the next (PROTOCOLS.md §1.4, §2.4, §3.3), so each connection is served
strictly in order. ``SequentialProtocol`` answers what it can at once (a fresh cache hit
costs no task switch) and runs the rest as a coroutine with reading paused, which keeps
the order and bounds what one client can make the daemon buffer.

Fairness: a client that pipelines (a flood of requests, valid or not) must not hold the
event loop. Each turn feeds the decoder at most ``TURN_BYTES`` of what was read and
answers at most ``TURN_REQUESTS`` requests, then yields (``loop.call_soon``) so that every
other connection gets its turn; reading stays paused while anything read is unanswered
or the client does not read its replies (``pause_writing``), so the input and the output
one connection can pile up are bounded too. Problems a client causes are logged once per
connection (then counted, one line a minute at most, and summed up when it closes).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..logsafe import Throttle, shown
from ..metrics import Metrics
from ..values import Listen
from .limits import ConnectionLimits
from .sockets import bind_unix

log = logging.getLogger("vmaild.server")

# What one connection may do before the others get a turn: decode this many bytes of its
# input, answer this many requests. A turn costs well under a millisecond either way.
TURN_BYTES = 1024
TURN_REQUESTS = 64


class ProtocolError(Exception):
    """The client broke the framing; the connection cannot continue."""


@dataclass(frozen=True, slots=True)
class ListenerContext:
    """What every listener shares with the daemon, whatever its protocol: the metrics
    (connections, protocol errors), the set of open connections, which the daemon
    drains on stop, and the per-listener caps and idle timeouts (limits.py). It outlives
    reloads; what a listener answers from comes through a getter instead (interfaces.py)."""

    metrics: Metrics
    connections: set[SequentialProtocol] = field(default_factory=set)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)


class SequentialProtocol(asyncio.Protocol):
    """Subclasses implement ``decode``, ``answer_now`` and ``answer``."""

    listener = "?"  # metric label, set by subclasses or per instance

    def __init__(self, ctx: ListenerContext):
        self.metrics = ctx.metrics
        self.connections = ctx.connections
        self.limits = ctx.limits
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[Any] = collections.deque()
        # Bytes read but not fed to the decoder yet (a flood is decoded a turn at a time).
        self.pending: memoryview | bytes = b""
        self.task: asyncio.Task[None] | None = None
        self.closing = False
        self.last_active = 0.0
        self._admitted = False
        self._paused_writing = False
        self._paused_reading = False
        self._turn: asyncio.Handle | None = None  # the next turn, when one is scheduled
        self._out: list[bytes] = []  # this turn's replies, written at its end
        self._problems: Throttle | None = None  # created by the first problem logged

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
        if not self.limits.admit(self.listener, self.metrics):
            # Over the cap: closed at once (a FIN, nothing written), never left hanging.
            self.closing = True
            transport.close()
            return
        self._admitted = True
        self.last_active = time.monotonic()
        self.connections.add(self)
        self.metrics.connections.labels(self.listener).inc()
        self.limits.watch(self.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self.limits.release(self.listener)
        self.connections.discard(self)
        self.metrics.connections.labels(self.listener).dec()
        if self.task is not None:
            self.task.cancel()
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        if self._problems is not None and (held := self._problems.pending()):
            log.warning("%s: %d more problems on the connection just closed", self.listener, held)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        self.pending = bytes(self.pending) + data if self.pending else data
        if self.task is None and self._turn is None:
            self._run_queue()

    def eof_received(self) -> bool | None:
        # Half-close: finish what was asked, then close (returning None closes at once
        # when nothing is pending).
        if self.task is None and not self.queue and not self.pending:
            return None
        self.closing = True
        return True

    def pause_writing(self) -> None:
        self._paused_writing = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self.task is None and self._turn is None:
            self._run_queue()

    # -- helpers ---------------------------------------------------------------------------

    def problem(self, message: str, *args: Any, level: int = logging.WARNING) -> None:
        """Log a problem this client caused (a bad request, an unknown map): the first on
        the connection in full, later ones counted (one line a minute at most, and the
        rest when the connection closes), so a flood of bad lines costs a few log lines.
        Client data among *args* must already be :func:`~vmaild.logsafe.shown`."""
        if self._problems is None:
            self._problems = Throttle()
        count = self._problems.event()
        if count is None or not log.isEnabledFor(level):
            return
        more = f" ({count - 1} more since the last line)" if count > 1 else ""
        log.log(level, "%s: " + message + "%s", self.listener, *args, more)

    def bad_request(self, reason: str) -> None:
        """A malformed or oversized request: counted, and logged as :meth:`problem`."""
        self.metrics.child(self.metrics.protocol_errors, self.listener).inc()
        self.problem("bad request: %s", shown(reason))

    def protocol_error(self, reason: str, reply: bytes | None = None) -> None:
        self.metrics.child(self.metrics.protocol_errors, self.listener).inc()
        self.problem("closing connection: %s", shown(reason))
        self._flush()  # the replies to the requests before this one go first
        if self.transport is not None:
            if reply:
                self.transport.write(reply)
            self.transport.close()
        self.queue.clear()
        self.pending = b""

    def close_if_idle(self, idle_since: float) -> bool:
        """The idle sweep (limits.py): close if nothing arrived since *idle_since* and no
        request is in progress or unanswered."""
        if self.last_active >= idle_since or self.busy or self.queue or self.pending:
            return False
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.close()
        return True

    def _feed(self) -> None:
        """Decode the next slice of what was read (at most TURN_BYTES) into the queue."""
        pending = self.pending
        if len(pending) > TURN_BYTES and isinstance(pending, bytes):
            pending = memoryview(pending)  # slices without copying the rest each turn
        data, self.pending = pending[:TURN_BYTES], pending[TURN_BYTES:]
        if not self.pending:
            self.pending = b""
        try:
            self.queue.extend(self.decode(bytes(data)))
        except Exception as e:  # noqa: BLE001 - any codec error ends this client only
            # The codecs hand back what they decoded before the garbage: answer that,
            # then hang up (the framing is lost, there is no way to answer the rest).
            decoded = getattr(e, "decoded", None)
            if not decoded:
                self.protocol_error(str(e) or type(e).__name__)
                return
            self.metrics.child(self.metrics.protocol_errors, self.listener).inc()
            self.problem("closing connection after %d requests: %s", len(decoded), shown(str(e)))
            self.queue.extend(decoded)
            self.pending = b""
            self.closing = True

    def _run_queue(self) -> None:
        """One turn: feed and answer until the budget is spent, a request must wait, the
        client stops reading, or nothing is left; then schedule the next turn if needed.
        The turn's replies go out in one write (one system call, not one each)."""
        self._turn = None
        transport = self.transport
        assert transport is not None
        if self._paused_writing:
            self._update_reading()  # the client is not reading: resume_writing() goes on
            return
        out = self._out
        budget = TURN_REQUESTS
        fed = False
        while not transport.is_closing():
            if not self.queue:
                if not self.pending or fed:
                    break
                self._feed()
                fed = True
                continue
            if budget == 0:
                break
            budget -= 1
            request = self.queue.popleft()
            try:
                reply = self.answer_now(request)
            except Exception:  # noqa: BLE001
                log.exception("%s: internal error", self.listener)
                self._flush()
                transport.close()
                return
            if reply is None:
                self._flush()
                self.task = asyncio.get_running_loop().create_task(self._answer_later(request))
                self._update_reading()
                return
            out.append(reply)
        self._flush()
        if transport.is_closing():
            return
        more = bool(self.queue or self.pending)
        if more and not self._paused_writing:
            self._turn = asyncio.get_running_loop().call_soon(self._run_queue)
        elif self.closing and not more:
            transport.close()
            return
        self._update_reading()

    def _flush(self) -> None:
        """Write the replies collected in this turn, in order."""
        if self._out:
            data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(data)

    def _update_reading(self) -> None:
        """Read only while nothing read is unanswered and the client reads its replies."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        pause = bool(
            self.task is not None
            or self._turn is not None
            or self.queue
            or self.pending
            or self._paused_writing
        )
        if pause != self._paused_reading:
            self._paused_reading = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

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
        self.last_active = time.monotonic()  # idle from the reply on, not from the request
        if transport.is_closing():
            return
        if reply is None:
            transport.close()
            return
        transport.write(reply)
        self._run_queue()

    @property
    def busy(self) -> bool:
        return self.task is not None


async def start_listener(
    listen: Listen,
    factory: Callable[[], asyncio.Protocol],
    mode: int = 0o660,
    sock: socket.socket | None = None,
) -> asyncio.Server:
    """Bind ``listen`` (TCP, or a unix socket with ``mode``) and serve ``factory``; or
    serve ``sock``, already bound to it (systemd's, inherited.py: used as it is).

    A unix socket appears with its final mode, in a directory nobody else can write to
    (sockets.py); an unsafe directory raises OSError with one line."""
    loop = asyncio.get_running_loop()
    if sock is not None:
        try:
            if sock.family == socket.AF_UNIX:
                # Python 3.13 would unlink the path when the server closes: it is systemd's.
                keep: dict[str, Any] = (
                    {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
                )
                return await loop.create_unix_server(factory, sock=sock, backlog=1024, **keep)
            return await loop.create_server(factory, sock=sock, backlog=1024)
        except BaseException:
            sock.close()
            raise
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
