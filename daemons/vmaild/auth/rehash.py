"""Rehash on login: a password verified against a hash in a deprecated scheme (or not in
``password_scheme``) is stored again in the default scheme, in the background (the login
has been answered already), with an UPDATE conditional on the hash just verified, so a
change made meanwhile is never overwritten."""

from __future__ import annotations

import asyncio
import logging

from .. import passwords
from ..config import Config
from ..db import DatabaseError
from ..metrics import Metrics
from .accounts import Account
from .hashing import Hasher
from .login_cache import VerifiedLogins
from .rows import AccountRows

log = logging.getLogger("vmaild.auth")
# MySQL errors that mean "this schema cannot store a new hash": the seed's varchar(20)
# (1406 data too long), a missing column or table (1054, 1146), no UPDATE grant (1142).
SCHEMA_ERRORS = frozenset({1406, 1054, 1146, 1142, 1265})


class Rehasher:
    def __init__(
        self,
        cfg: Config,
        rows: AccountRows,
        hasher: Hasher,
        verified: VerifiedLogins,
        metrics: Metrics,
    ):
        self.query = cfg.auth.rehash_query
        self.enabled = cfg.auth.rehash
        self.rows = rows
        self.hasher = hasher
        self.verified = verified
        self.metrics = metrics
        self.tasks: set[asyncio.Task[None]] = set()
        self._running: set[str] = set()

    def maybe(self, account: Account, password: str, digest: bytes) -> None:
        if not self.enabled or account.address in self._running:
            return
        if not passwords.needs_update(account.password, self.hasher.scheme):
            return
        self._running.add(account.address)
        task = asyncio.get_running_loop().create_task(self._rehash(account, password, digest))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _rehash(self, account: Account, password: str, digest: bytes) -> None:
        try:
            new_hash = await self.hasher.hash(password)
            changed = await self.rows.source.update_password(
                self.query, account.address, account.password, new_hash
            )
        except DatabaseError as e:
            if self.rows.misfit("rehash_query", e):
                self.enabled = False
            elif e.errno in SCHEMA_ERRORS:
                log.warning(
                    "rehash off until reload: cannot store new hashes (%s); "
                    "run 'vmailctl db migrate' or set [auth] rehash = no",
                    e,
                )
                self.enabled = False
            else:
                log.warning("rehash for %s failed: %s", account.address, e)
            return
        except RuntimeError:  # pool shut down by a reload
            return
        finally:
            self._running.discard(account.address)
        if changed == 1:
            self.metrics.login_rehashes.inc()
            self.verified.add(account.address, new_hash, digest)
            old = passwords.parse(account.password).scheme
            log.info(
                "rehashed the password of %s: %s -> %s", account.address, old, self.hasher.scheme
            )
