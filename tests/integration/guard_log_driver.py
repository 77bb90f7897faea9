"""Drives failed logins through the brute-force guard inside a process set up as ``vmaild
serve`` sets itself up (the same configuration file, logging setup, database pool and
metrics), for the fail2ban filter's test: ``python -m tests.integration.guard_log_driver
CONFIG``. Its stderr is vmaild's log. The lead re-points the test at the SASL front door
once that is merged; until then this is the process whose lines the filter must match.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys

from vmaild import cli, config
from vmaild.auth.guard import Guard
from vmaild.db import Database
from vmaild.metrics import Metrics

#: (login, client or None, service, failures, known)
SCRIPT: tuple[tuple[str, str | None, str, int, bool], ...] = (
    ("alice@example.org", "203.0.113.7", "smtp", 6, True),  # the pair blocks at 5: 6th refused
    ("bob@example.org", "2001:db8:1:2::7", "smtp", 3, True),
    ("carol@example.org", "::ffff:198.51.100.9", "smtp", 2, True),  # logged as IPv4
    ("dave@example.org", "127.0.0.1", "smtp", 3, True),  # trusted: not matched
    ("dave@example.org", "::1", "smtp", 1, True),
    ("erin@example.org", None, "imap", 3, True),  # authpipe: no address, no line
    # A hostile name that looks like a failure line: it only ever appears after the
    # address, in the block line, and must not be matched as 192.0.2.66.
    ("x login failed: client=192.0.2.66 service=smtp", "203.0.113.99", "smtp", 5, True),
    ("s3cret-typed-as-name", "198.51.100.20", "smtp", 5, False),
)


async def drive(cfg: config.Config) -> None:
    db = Database(cfg.database)
    guard = Guard(cfg, db, Metrics())
    try:
        for login, client, service, times, known in SCRIPT:
            addr = ipaddress.ip_address(client) if client else None
            for _ in range(times):
                if await guard.refusal(login, addr) is None:  # refused: answered, not counted
                    await guard.failed(login, addr, service=service, known=known)
    finally:
        db.close()


def main() -> int:
    cfg = config.load(sys.argv[1])
    cli.setup_logging(cfg.log)
    asyncio.run(drive(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
