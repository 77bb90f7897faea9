"""Account rows for both front doors: fetched on every request, the last one seen kept
for outages (stale-on-error).

A row is fetched on every login and lookup: it is cheap (batched, accounts.py), and it is
how a changed password or a disabled account is seen at once. While the database cannot
answer, the last row seen for the name stands in (``fresh`` False) for up to ``[cache]
ttl + stale_ttl``; with no such row the request is a temporary failure, never "unknown".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..config import Config
from ..db import Database, DatabaseError
from ..failures import TemporaryFailure
from ..schema_fit import SchemaFit
from .accounts import Account, AccountError, AccountSource
from .login_cache import BoundedTTL
from .names import shown_login, withheld

log = logging.getLogger("vmaild.auth")


class AccountRows:
    def __init__(
        self,
        cfg: Config,
        db: Database,
        clock: Callable[[], float] = time.monotonic,
        fit: SchemaFit | None = None,
    ):
        self.source = AccountSource(cfg, db)
        self.fit = fit  # reports a query that does not fit the schema, once
        c = cfg.cache
        self.seen: BoundedTTL[Account] = BoundedTTL(
            c.ttl + c.stale_ttl, max(cfg.auth.login_cache_size, 1), clock
        )

    def forget(self, login: str) -> None:
        """Drop the row kept for outages (its account changed: the change log)."""
        self.seen.pop(login.lower())

    async def fetch(self, login: str) -> tuple[Account | None, bool]:
        """(account or None, fresh). Not fresh: the database failed and the last row seen
        stands in; with no such row, TemporaryFailure."""
        key = login.lower()
        try:
            account = await self.source.fetch(login)
        except DatabaseError as e:
            stale = self.seen.get(key)
            if stale is None:
                if not self.misfit("query", e):
                    log.warning("account %s: database unavailable: %s", withheld(login), e)
                raise TemporaryFailure(str(e)) from e
            return stale, False
        except AccountError as e:
            log.error("account %s: %s (check [auth] query)", shown_login(login), e)
            raise TemporaryFailure(str(e)) from e
        if account is None:
            self.seen.pop(key)
        else:
            self.seen.put(key, account)
        return account, True

    def misfit(self, key: str, e: DatabaseError) -> bool:
        """True if [auth] ``key`` does not fit the schema (schema_fit logs that once)."""
        return self.fit is not None and self.fit.report("auth", key, e)
