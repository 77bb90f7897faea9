"""auth/accounts.py against a real MariaDB: logins that arrive together are fetched in one
statement (the account query once per login, UNION ALL), and a query the server will not
take as a derived table falls back to one query per login, answering just the same."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from harness.stack.seed import SEED_USERS, SeedDatabase
from vmaild import config
from vmaild.auth.accounts import Account, AccountSource
from vmaild.db import Database


class CountingDatabase(Database):
    runs = 0

    async def run(self, fn: Any, *, retry: bool = False) -> Any:
        self.runs += 1
        return await super().run(fn, retry=retry)


@pytest.mark.parametrize(
    ("query", "batched"),
    [
        # The seed's layout, as an unmigrated database needs it (README).
        ("SELECT email AS address, password FROM users WHERE email='%s'", True),
        # Legal on its own, but a derived table cannot have two 'password' columns (1060).
        ("SELECT email AS address, password, password FROM users WHERE email='%s'", False),
    ],
)
def test_concurrent_fetches(module_seed_db: SeedDatabase, query: str, batched: bool) -> None:
    db_ = module_seed_db
    cfg = config.parse(
        f"[database]\nhosts = 127.0.0.1:{db_.mariadb.port}\nuser = {db_.user}\n"
        f"password = {db_.password}\ndbname = {db_.dbname}\n\n[auth]\nquery = {query}\n"
    )
    logins = [*SEED_USERS, "nobody@example.test", "ALICE@example.test"] * 4
    stored = dict(db_.mariadb.query("SELECT email, password FROM users", database=db_.dbname))

    async def fetch_all() -> tuple[list[Account | None], bool, int]:
        database = CountingDatabase(cfg.database)
        try:
            accounts = AccountSource(cfg, database)
            assert accounts.union  # both queries look wrappable; only the server can tell
            found = await asyncio.gather(*(accounts.fetch(login) for login in logins))
            return list(found), accounts.union, database.runs
        finally:
            database.close()

    found, union_after, runs = asyncio.run(fetch_all())
    for login, account in zip(logins, found, strict=True):
        if login == "nobody@example.test":
            assert account is None
        else:
            assert account is not None
            assert account.address.lower() == login.lower()
            assert account.password == stored[account.address]
    assert union_after is batched
    # The first login went alone; the 23 that came meanwhile, in one statement (batched),
    # or the refused statement and then their queries one by one, in one database job.
    assert runs == (2 if batched else 3)
