"""``vmailctl guard list|clear``: the brute-force guard's counts, and lifting a block.

The guard (``auth/guard.py``) keeps failed-login counts in ``login_failures``, one row per
(kind, subject): ``address`` (a client prefix such as ``203.0.113.7/32``), ``login`` (the
account's address, lower-cased) and ``pair`` (``"PREFIX LOGIN"``). ``clear`` deletes rows,
which is how an admin lets a locked-out user or office back in: every host reads the
table again within ``guard.BLOCK_CACHE_SECONDS`` (10 s) of the delete. A host that was
counting in its own memory because the database did not answer keeps those counts until
its window passes (``[auth] fail_window``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import time
from typing import Any

from ..auth.guard import BLOCK_CACHE_SECONDS
from ..auth.guard_rules import ADDRESS, LOGIN, PAIR, Rules, Tally, login_key
from ..auth.guard_store import TABLE
from .context import Context
from .errors import Refused
from .output import Column, text
from .sql import fetch_all, transaction


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "guard", parents=[common], help="failed-login counts and blocks; lift a block"
    )
    gs = p.add_subparsers(dest="guard_command", metavar="ACTION", required=True)
    ls = gs.add_parser(
        "list",
        parents=[common],
        help="counts with failures in the current window, and active blocks",
    )
    ls.add_argument("--all", action="store_true", help="every stored row, expired ones too")
    ls.set_defaults(func=cmd_list)
    c = gs.add_parser(
        "clear",
        parents=[common],
        help="forget failures and lift blocks (every host, within 10 s)",
    )
    c.add_argument(
        "--login",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a login: its own count and its counts from every address",
    )
    c.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="IP",
        help="a client address or prefix: its count and its counts for every login",
    )
    c.add_argument("--all", action="store_true", help="every count: a clean slate")
    c.set_defaults(func=cmd_clear)


def _ms_to_time(ms: int) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(ms / 1000).replace(microsecond=0) if ms > 0 else None


def cmd_list(ctx: Context, args: argparse.Namespace) -> None:
    rules = Rules(ctx.config.auth)
    now = time.time()
    now_ms = int(now * 1000)
    window_ms = int(rules.window * 1000)
    where = ""
    params: tuple[int, ...] = ()
    if not args.all:
        where, params = "WHERE last_at > %s OR blocked_until > %s", (now_ms - window_ms, now_ms)
    rows = ctx.run(
        lambda conn: fetch_all(
            conn,
            f"SELECT kind, subject, failures, first_at, last_at, blocked_until FROM {TABLE} "
            f"{where} ORDER BY blocked_until > {now_ms} DESC, last_at DESC",
            params,
        )
    )
    shown = []
    for r in rows:
        # As the guard reads it: failures forgotten once the window passed, a block only
        # until it ends.
        tally = rules.counted(
            Tally(int(r["failures"]), int(r["last_at"]) / 1000, int(r["blocked_until"]) / 1000),
            now,
        )
        shown.append(
            {
                "kind": r["kind"],
                "subject": r["subject"],
                "failures": tally.failures,
                "first_failure": _ms_to_time(int(r["first_at"])),
                "last_failure": _ms_to_time(int(r["last_at"])),
                "blocked_until": (
                    _ms_to_time(int(r["blocked_until"])) if tally.blocked(now) else None
                ),
            }
        )
    ctx.show_table(
        shown,
        [
            Column("kind", "KIND"),
            Column("subject", "SUBJECT"),
            Column("failures", "FAILURES"),
            Column("last_failure", "LAST FAILURE"),
            Column("blocked_until", "BLOCKED UNTIL", lambda v: "-" if v is None else text(v)),
        ],
    )


def prefix_of(rules: Rules, value: str) -> str:
    """The stored prefix for ``value``: an address becomes its counted prefix
    (``[auth] ipv4_prefix``/``ipv6_prefix``); a prefix is taken as written."""
    value = value.strip()
    try:
        if "/" in value:
            return str(ipaddress.ip_network(value, strict=False))
        return rules.prefix(ipaddress.ip_address(value))
    except ValueError:
        raise Refused(f"not an IP address or prefix: {value!r}") from None


def _like(text_: str) -> str:
    """``text_`` as a literal inside a LIKE pattern."""
    return text_.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def cmd_clear(ctx: Context, args: argparse.Namespace) -> None:
    if not (args.login or args.address or args.all):
        raise Refused("nothing to clear: give --login, --address or --all")
    if args.all and (args.login or args.address):
        raise Refused("--all clears every count: give it alone")
    rules = Rules(ctx.config.auth)
    conditions: list[str] = []
    params: list[Any] = []
    for login in args.login:
        key = login_key(login.strip())
        # A pair's subject is "PREFIX LOGIN": prefixes hold no space, so the login is the rest.
        conditions.append("(kind = %s AND subject = %s) OR (kind = %s AND subject LIKE %s)")
        params += [LOGIN, key, PAIR, "% " + _like(key)]
    for address in args.address:
        prefix = prefix_of(rules, address)
        conditions.append("(kind = %s AND subject = %s) OR (kind = %s AND subject LIKE %s)")
        params += [ADDRESS, prefix, PAIR, _like(prefix) + " %"]
    where = " OR ".join(conditions) if conditions else "1"

    def work(conn: Any) -> tuple[int, int]:
        with transaction(conn) as cur:
            blocked = cur.execute(
                f"SELECT 1 FROM {TABLE} WHERE ({where}) AND blocked_until > %s",
                (*params, int(time.time() * 1000)),
            )
            return int(cur.execute(f"DELETE FROM {TABLE} WHERE {where}", tuple(params))), blocked

    deleted, blocked = ctx.run(work)
    if deleted == 0:
        ctx.done("no failures recorded for that; nothing to clear", cleared=0, blocks=0)
        return
    ctx.done(
        f"cleared {deleted} count(s), {blocked} of them blocked; every host stops "
        f"refusing within {BLOCK_CACHE_SECONDS:g} s",
        cleared=deleted,
        blocks=blocked,
    )
