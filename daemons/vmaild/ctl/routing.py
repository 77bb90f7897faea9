"""``vmailctl transport ...`` (the seed's transport table) and ``vmailctl sender ...``
(sender_grants: which authenticated logins may use which envelope senders)."""

from __future__ import annotations

import argparse
from typing import Any

from . import names
from .context import Context
from .errors import Refused
from .output import Column
from .sql import fetch_all, transaction

MAX_TRANSPORT = 128


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    t = sub.add_parser("transport", parents=[common], help="per-domain Postfix transports")
    ts = t.add_subparsers(dest="transport_command", metavar="ACTION", required=True)
    a = ts.add_parser("add", parents=[common], help="route a domain's mail with TRANSPORT")
    a.add_argument("domain")
    a.add_argument("transport", help="as in transport(5), e.g. smtp:[relay.example.net]:25")
    a.set_defaults(func=cmd_transport_add)
    ts.add_parser("list", parents=[common], help="list transports").set_defaults(
        func=cmd_transport_list
    )
    r = ts.add_parser("remove", parents=[common], help="remove a domain's transport")
    r.add_argument("domain")
    r.set_defaults(func=cmd_transport_remove)

    s = sub.add_parser("sender", parents=[common], help="who may send as whom")
    ss = s.add_subparsers(dest="sender_command", metavar="ACTION", required=True)
    for verb, func, text in (
        ("grant", cmd_grant, "let LOGIN send as SENDER"),
        ("revoke", cmd_revoke, "take a grant back"),
    ):
        g = ss.add_parser(verb, parents=[common], help=text)
        g.add_argument("login", help="an account (user@domain)")
        g.add_argument("sender", help="an address, or @domain for a whole domain")
        g.set_defaults(func=func)
    ls = ss.add_parser("list", parents=[common], help="list grants")
    ls.add_argument("login", nargs="?")
    ls.set_defaults(func=cmd_grant_list)


def _transport_value(text: str) -> str:
    value = text.strip()
    if not value:
        raise Refused("empty transport")
    if len(value) > MAX_TRANSPORT:
        raise Refused(f"transport is longer than {MAX_TRANSPORT} characters")
    if any(c.isspace() or ord(c) < 32 or c == "," for c in value):
        raise Refused(f"transport {value!r} contains spaces, commas or control characters")
    return value


def cmd_transport_add(ctx: Context, args: argparse.Namespace) -> None:
    domain = names.domain(args.domain)
    value = _transport_value(args.transport)

    def work(conn: Any) -> None:
        with transaction(conn) as cur:
            if cur.execute("SELECT 1 FROM transport WHERE domain = %s FOR UPDATE", (domain,)):
                raise Refused(f"domain {domain} already has a transport (remove it first)")
            cur.execute(
                "INSERT INTO transport (domain, transport) VALUES (%s, %s)", (domain, value)
            )

    ctx.run(work)
    ctx.changed()
    ctx.done(f"added transport {domain} -> {value}", domain=domain, transport=value)


def cmd_transport_list(ctx: Context, args: argparse.Namespace) -> None:
    rows = ctx.run(
        lambda conn: fetch_all(conn, "SELECT domain, transport FROM transport ORDER BY domain")
    )
    ctx.show_table(rows, [Column("domain", "DOMAIN"), Column("transport", "TRANSPORT")])


def cmd_transport_remove(ctx: Context, args: argparse.Namespace) -> None:
    domain = names.domain(args.domain)
    ctx.delete_row(
        "DELETE FROM transport WHERE domain = %s", (domain,), f"no transport for {domain}"
    )
    ctx.done(f"removed transport of {domain}", domain=domain)


def cmd_grant(ctx: Context, args: argparse.Namespace) -> None:
    login = names.address(args.login)
    sender = names.pattern(args.sender)
    if sender == login:
        raise Refused(f"{login} may always send as itself; no grant needed")

    def work(conn: Any) -> None:
        with transaction(conn) as cur:
            if not cur.execute("SELECT 1 FROM users WHERE email = %s LOCK IN SHARE MODE", (login,)):
                raise Refused(f"no user {login}")
            if cur.execute(
                "SELECT 1 FROM sender_grants WHERE login = %s AND sender = %s", (login, sender)
            ):
                raise Refused(f"{login} may already send as {sender}")
            cur.execute(
                "INSERT INTO sender_grants (login, sender) VALUES (%s, %s)", (login, sender)
            )

    ctx.run(work)
    ctx.changed()
    ctx.done(f"{login} may send as {sender}", login=login, sender=sender)


def cmd_revoke(ctx: Context, args: argparse.Namespace) -> None:
    login = names.address(args.login)
    sender = names.pattern(args.sender)
    ctx.delete_row(
        "DELETE FROM sender_grants WHERE login = %s AND sender = %s",
        (login, sender),
        f"{login} has no grant for {sender}",
    )
    ctx.done(f"{login} may no longer send as {sender}", login=login, sender=sender)


def cmd_grant_list(ctx: Context, args: argparse.Namespace) -> None:
    sql = "SELECT login, sender FROM sender_grants"
    params: tuple[str, ...] = ()
    if args.login:
        sql, params = sql + " WHERE login = %s", (names.address(args.login),)
    rows = ctx.run(lambda conn: fetch_all(conn, sql + " ORDER BY login, sender", params))
    ctx.show_table(rows, [Column("login", "LOGIN"), Column("sender", "MAY SEND AS")])
