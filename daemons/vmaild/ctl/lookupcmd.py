"""``vmailctl lookup MAP KEY [--direct]``: answers like ``postmap -q``.

Prints the value and exits 0; prints nothing and exits 1 when not found; exits 75 with a
message when the answer is unknown right now. By default it asks the running daemon over
its socketmap listener, so the answer is the one Postfix gets (cache included); with
``--direct``, or when no ``[socketmap] listen`` is configured, it runs the map's query
itself through the same lookup code vmaild uses (address rules, catch-all, no cache).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from ..cache import Cache, TTLs
from ..config import Config
from ..db import Database
from ..failures import TemporaryFailure
from ..lookup import Lookups
from ..metrics import Metrics
from . import daemon
from .context import Context
from .errors import EXIT_OK, EXIT_REFUSED, Refused, TempFail
from .output import to_json


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("lookup", parents=[common], help="look KEY up in MAP, like postmap -q")
    p.add_argument("map", metavar="MAP", help="a [map NAME] of the configuration")
    p.add_argument("key", metavar="KEY")
    p.add_argument(
        "--direct",
        action="store_true",
        help="query the database directly instead of asking the running vmaild",
    )
    p.set_defaults(func=cmd_lookup)


def lookup_direct(config: Config, map_name: str, key: str) -> str | None:
    """One uncached lookup through vmaild's own lookup code."""
    metrics = Metrics()
    db = Database(config.database, metrics)
    lookups = Lookups(config, db, Cache(TTLs(0, 0, 0), 0), metrics)
    try:
        return asyncio.run(lookups.lookup(map_name, key))
    except TemporaryFailure as e:
        raise TempFail(f"lookup failed: {e}") from None
    finally:
        db.close()


def lookup_daemon(config: Config, map_name: str, key: str) -> str | None:
    listen = config.socketmap.listen
    assert listen is not None
    try:
        status, data = daemon.socketmap_query(listen, map_name, key)
    except daemon.DaemonUnreachable as e:
        raise TempFail(f"vmaild did not answer at {e} (try --direct)") from None
    if status == "OK":
        return data
    if status == "NOTFOUND":
        return None
    if status in ("TEMP", "TIMEOUT"):
        raise TempFail(f"vmaild: temporary failure: {data}")
    raise Refused(f"vmaild: {status} {data}".rstrip())


def cmd_lookup(ctx: Context, args: argparse.Namespace) -> int:
    config = ctx.config
    if args.map not in config.maps:
        known = ", ".join(sorted(config.maps)) or "none"
        raise Refused(f"no [map {args.map}] in {config.path} (maps: {known})")
    if config.socketmap.listen is not None and not args.direct:
        value = lookup_daemon(config, args.map, args.key)
    else:
        value = lookup_direct(config, args.map, args.key)
    if ctx.as_json:
        ctx.print(
            to_json({"map": args.map, "key": args.key, "found": value is not None, "value": value})
        )
    elif value is not None:
        ctx.print(value)
    return EXIT_OK if value is not None else EXIT_REFUSED
