"""The login history: ``contract.LoginRecorder``, the last successful login per account
and service, in the ``login_history`` table (shown by ``vmailctl user show``).

A login must not cost a database write. :meth:`LoginHistory.record` only notes the latest
(time, client address) per (account, service) in memory; :meth:`run` writes what is
pending every ``[auth] history_interval`` seconds (60) as one multi-row upsert. However
many logins an account makes, it costs at most one row write per service and interval on
each host.

Bounded: at most ``[auth] history_pending`` entries wait; past that the least recently
recorded are dropped (counted; logged at the first and at every 10,000th). A database
that cannot answer keeps the entries pending (newer logins replace them) for the next
round, and is logged once until a write works again. :meth:`start` runs the loop in a
task; :meth:`close` ends it and writes what is pending.

Several hosts share the table: the upsert keeps the newer of the stored and the written
time (``GREATEST``), so a host that writes late never moves a login back in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..db import Database, DatabaseError

if TYPE_CHECKING:
    from .contract import Client

log = logging.getLogger("vmaild.auth")

Key = tuple[str, str]  # (account address, service)
Entry = tuple[float, str | None]  # (unix time, client address)
# Rows per statement: a flush of many accounts stays a few statements of bounded size.
CHUNK = 500
MAX_ADDRESS = 255
MAX_SERVICE = 32
# ON DUPLICATE KEY UPDATE assigns left to right, each seeing the ones before: the address
# is decided before last_at moves, so it follows the newer of the two logins.
UPSERT = (
    "INSERT INTO login_history (email, service, last_at, last_address) VALUES {rows} "
    "ON DUPLICATE KEY UPDATE "
    "last_address = IF(VALUES(last_at) >= last_at, VALUES(last_address), last_address), "
    "last_at = GREATEST(last_at, VALUES(last_at))"
)


class LoginHistory:
    def __init__(
        self,
        cfg: Config,
        db: Database,
        clock: Callable[[], float] = time.time,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.db = db
        self.clock = clock  # wall-clock seconds: the time stored for a login
        self.sleep = sleep
        self.interval = cfg.auth.history_interval
        self.max_pending = max(1, cfg.auth.history_pending)
        self._pending: OrderedDict[Key, Entry] = OrderedDict()
        self._lock = asyncio.Lock()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # the last write failed (logged once)
        self.dropped = 0  # entries dropped because too many were pending
        self.writes = 0  # statements written (for tests and debugging)

    def __len__(self) -> int:
        return len(self._pending)

    def record(self, address: str, service: str, client: Client | None) -> None:
        """Note a successful login. No I/O, never blocks, never raises."""
        if not address or len(address) > MAX_ADDRESS:
            return
        key = (address, service[:MAX_SERVICE])
        self._put(key, (self.clock(), None if client is None else str(client)))

    def _put(self, key: Key, entry: Entry) -> None:
        old = self._pending.get(key)
        if old is not None and old[0] > entry[0]:
            return  # a newer login is already pending (a failed write put an old one back)
        self._pending[key] = entry
        self._pending.move_to_end(key)
        if len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning(
                    "login history: more than %d logins waiting to be written; "
                    "%d of the oldest dropped so far",
                    self.max_pending,
                    self.dropped,
                )

    def start(self) -> asyncio.Task[None]:
        """Run :meth:`run` in a task of its own (:meth:`close` ends it)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    async def run(self) -> None:
        """Write pending entries every ``interval`` seconds until closed or cancelled."""
        while not self._closed:
            await self.sleep(self.interval)
            if self._closed:
                break
            await self.flush()

    async def flush(self) -> bool:
        """Write what is pending now; False if the database could not take it (the
        entries stay pending). Never raises DatabaseError."""
        async with self._lock:
            if not self._pending:
                return True
            batch, self._pending = self._pending, OrderedDict()
            items = list(batch.items())
            try:
                await self.db.run(lambda conn: _write(conn, items), retry=True, write=True)
            except DatabaseError as e:
                for key, entry in items:  # back in, older than anything recorded meanwhile
                    if key not in self._pending:
                        self._pending[key] = entry
                        self._pending.move_to_end(key, last=False)
                while len(self._pending) > self.max_pending:
                    self._pending.popitem(last=False)
                    self.dropped += 1
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "login history not written (%s); %d entries kept for the next try",
                        e,
                        len(self._pending),
                    )
                return False
            self.writes += (len(items) + CHUNK - 1) // CHUNK
            if self._failing:
                self._failing = False
                log.info("login history written again")
            return True

    async def close(self) -> None:
        """Stop the loop (the task :meth:`start` made) and write what is pending (one
        try). A flush under way is finished, not cut off."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            async with self._lock:  # let a running flush end; the loop then sleeps
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()


def _write(conn: Any, items: list[tuple[Key, Entry]]) -> None:
    with conn.cursor() as cur:
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            # FROM_UNIXTIME: the server turns the instant into its session's time zone,
            # whatever the zones of this host and the server are.
            rows = ", ".join(["(%s, %s, FROM_UNIXTIME(%s), %s)"] * len(chunk))
            params: list[Any] = []
            for (email, service), (when, client) in chunk:
                params += [email, service, int(when), client]
            cur.execute(UPSERT.format(rows=rows), params)
