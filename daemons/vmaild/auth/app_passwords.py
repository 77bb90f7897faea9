"""App passwords: ``contract.AppPasswordChecker`` against the ``app_passwords`` table.

One login asks one indexed SELECT (the ``email_name`` key's ``email`` prefix) for the
account's app passwords that allow the service and have not expired (by the database's
clock, the same for every host), then compares digests in constant time
(``hmac.compare_digest``) and checks the client's address against the password's networks.

Rules:
- Only passwords with the app password shape (``app_secrets.looks_like_app_password``) are
  looked up; the core checks that first, and so does :meth:`AppPasswords.matches`.
- An app password restricted to networks is accepted only from a client address the front
  door knows and that lies in one of them. When the address is unknown (authpipe: Courier
  does not pass it on), such an app password is NOT accepted: a restriction that cannot be
  checked is not waived. App passwords without networks work from anywhere.
- Nothing is cached: every login reads the table, so ``vmailctl app-password revoke``
  takes effect at the next login without a cache flush. (The core must not put app
  password logins into its verified-login cache either.)
- A database that cannot answer raises ``DatabaseError`` (the core answers a temporary
  failure): never "no such app password".
- A match updates ``last_used_at``, at most once a minute per app password and host, in a
  background task that never fails or delays the login (its errors are logged, once a
  minute at most).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..db import Database, DatabaseError
from ..metrics import Metrics
from . import app_secrets

if TYPE_CHECKING:
    from .accounts import Account
    from .contract import Client

log = logging.getLogger("vmaild.auth")

SERVICES = ("imap", "pop3", "smtp")  # the SET column's members (contract.SERVICES)
QUERY = (
    "SELECT id, secret_hash, networks FROM app_passwords "
    "WHERE email = %s AND FIND_IN_SET(%s, services) > 0 "
    "AND (expires_at IS NULL OR expires_at > NOW())"
)
TOUCH = "UPDATE app_passwords SET last_used_at = NOW() WHERE id = %s"
# For the core: ask the database only when a password has an app password's shape.
looks_like_app_password = app_secrets.looks_like_app_password


class AppPasswords:
    TOUCH_INTERVAL = 60.0  # seconds between last_used_at updates of one app password
    TOUCH_TRACKED = 100_000  # app passwords whose last update is remembered (oldest dropped)

    def __init__(
        self,
        cfg: Config,
        db: Database,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cfg = cfg
        self.db = db
        self.metrics = metrics
        self.clock = clock
        self._touched: OrderedDict[int, float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._touch_error_logged = -float("inf")

    @staticmethod
    def looks_like_app_password(password: str) -> bool:
        return app_secrets.looks_like_app_password(password)

    async def matches(
        self, account: Account, service: str, client: Client | None, password: str
    ) -> bool:
        """True if ``password`` is an app password of ``account`` valid now for
        ``service`` and ``client`` (see the module docstring for an unknown client).
        Raises DatabaseError when the database cannot answer."""
        if service not in SERVICES or not app_secrets.looks_like_app_password(password):
            return False
        wanted = app_secrets.digest(password)
        email = account.address
        rows = await self.db.run(lambda conn: _rows(conn, email, service), retry=True)
        found: int | None = None
        for row_id, stored, networks in rows:
            # Every row is compared, match or not: the time taken depends on the number of
            # the account's app passwords only, never on which one matched.
            same = hmac.compare_digest(str(stored).encode(), wanted.encode())
            if same and found is None and _allowed(networks, client, row_id):
                found = int(row_id)
        result = "ok" if found is not None else "fail"
        self.metrics.child(self.metrics.app_password_checks, result).inc()
        if found is not None:
            self._touch(found)
        return found is not None

    def _touch(self, row_id: int) -> None:
        now = self.clock()
        last = self._touched.get(row_id)
        if last is not None and now - last < self.TOUCH_INTERVAL:
            return
        self._touched[row_id] = now
        self._touched.move_to_end(row_id)
        while len(self._touched) > self.TOUCH_TRACKED:
            self._touched.popitem(last=False)
        task = asyncio.get_running_loop().create_task(self._write_touch(row_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_touch(self, row_id: int) -> None:
        try:
            await self.db.execute(TOUCH, (row_id,))
        except DatabaseError as e:
            now = self.clock()
            if now - self._touch_error_logged >= 60:
                self._touch_error_logged = now
                log.warning("app password last-used time not updated: %s", e)

    async def close(self) -> None:
        """Wait for last-used updates under way (stopping or reloading)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _rows(conn: Any, email: str, service: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(QUERY, (email, service))
        return list(cur.fetchall())


def _allowed(networks: Any, client: Client | None, row_id: Any) -> bool:
    if networks is None or not str(networks).strip():
        return True
    if client is None:
        return False  # restricted, and the front door does not know the address
    try:
        parsed = app_secrets.parse_networks(str(networks))
    except ValueError as e:
        # vmailctl checks what it stores; hand-typed SQL may not. Fail closed.
        log.warning("app password %s: ignoring it, bad networks column: %s", row_id, e)
        return False
    return app_secrets.within(client, parsed)
