"""``vmailctl alias ...``: the seed's ``forwardings`` table.

A source is an address or ``@domain`` (a catch-all, tried by vmaild after the address
itself when the map has ``catchall = yes``); the destination is a comma-separated list,
stored without spaces exactly as the seed's queries return it to Postfix.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import names
from .context import Context
from .errors import Refused
from .output import Column
from .sql import Row, fetch_all, fetch_one, transaction

COLUMNS = "source, destination, active"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("alias", parents=[common], help="forwardings and catch-alls")
    als = p.add_subparsers(dest="alias_command", metavar="ACTION", required=True)
    a = als.add_parser("add", parents=[common], help="forward SOURCE to one or more addresses")
    a.add_argument("source", help="user@domain, or @domain for a catch-all")
    a.add_argument("destination", help="DEST[,DEST...]")
    a.set_defaults(func=cmd_add)
    ls = als.add_parser("list", parents=[common], help="list aliases")
    ls.add_argument("domain", nargs="?")
    ls.set_defaults(func=cmd_list)
    s = als.add_parser("show", parents=[common], help="show one alias")
    s.add_argument("source")
    s.set_defaults(func=cmd_show)
    r = als.add_parser("remove", parents=[common], help="remove an alias")
    r.add_argument("source")
    r.set_defaults(func=cmd_remove)


def _public(row: Row) -> Row:
    out = dict(row)
    out["active"] = bool(out["active"])
    out["destinations"] = [d for d in str(out["destination"]).replace(" ", "").split(",") if d]
    out["catchall"] = str(out["source"]).startswith("@")
    return out


def cmd_add(ctx: Context, args: argparse.Namespace) -> None:
    source = names.pattern(args.source)
    targets = names.destinations(args.destination)
    if source in targets:
        raise Refused(f"{source} cannot forward to itself")
    domain = names.domain_of(source)
    destination = ",".join(targets)

    def work(conn: Any) -> None:
        with transaction(conn) as cur:
            if not cur.execute(
                "SELECT 1 FROM domains WHERE domain = %s LOCK IN SHARE MODE", (domain,)
            ):
                raise Refused(
                    f"no domain {domain}: mail for {source} would not be "
                    f"accepted (add it first: vmailctl domain add {domain})"
                )
            if cur.execute("SELECT 1 FROM forwardings WHERE source = %s FOR UPDATE", (source,)):
                raise Refused(f"alias {source} already exists (remove it first)")
            cur.execute(
                "INSERT INTO forwardings (source, destination) VALUES (%s, %s)",
                (source, destination),
            )

    ctx.run(work)
    ctx.changed()
    kind = "catch-all" if source.startswith("@") else "alias"
    ctx.done(f"added {kind} {source} -> {destination}", source=source, destinations=targets)


def cmd_list(ctx: Context, args: argparse.Namespace) -> None:
    sql = f"SELECT {COLUMNS} FROM forwardings"
    params: tuple[str, ...] = ()
    if args.domain:
        sql, params = sql + " WHERE source_domain = %s", (names.domain(args.domain),)
    rows = ctx.run(lambda conn: fetch_all(conn, sql + " ORDER BY source_domain, source", params))
    ctx.show_table(
        [_public(r) for r in rows],
        [
            Column("source", "SOURCE"),
            Column("active", "ACTIVE"),
            Column("destinations", "DESTINATION", lambda v: ",".join(v)),
        ],
    )


def _get(conn: Any, source: str) -> Row:
    row = fetch_one(conn, f"SELECT {COLUMNS} FROM forwardings WHERE source = %s", (source,))
    if row is None:
        raise Refused(f"no alias {source}")
    return row


def cmd_show(ctx: Context, args: argparse.Namespace) -> None:
    source = names.pattern(args.source)
    row = _public(ctx.run(lambda conn: _get(conn, source)))
    ctx.show_record(
        row,
        [
            ("source", "source"),
            ("catchall", "catch-all"),
            ("active", "active"),
            ("destinations", "destinations"),
        ],
    )


def cmd_remove(ctx: Context, args: argparse.Namespace) -> None:
    source = names.pattern(args.source)
    ctx.delete_row("DELETE FROM forwardings WHERE source = %s", (source,), f"no alias {source}")
    ctx.done(f"removed alias {source}", source=source)
