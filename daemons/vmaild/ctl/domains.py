"""``vmailctl domain add | list | show | remove | enable | disable``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import maildirs, names
from .context import Context
from .errors import Refused
from .output import Column
from .sql import Row, fetch_all, fetch_one, transaction

LIST_SQL = """
SELECT d.domain, d.active, d.description, d.created_at,
       (SELECT COUNT(*) FROM users u WHERE u.email_domain = d.domain) AS users,
       (SELECT COUNT(*) FROM forwardings f WHERE f.source_domain = d.domain) AS aliases,
       (SELECT t.transport FROM transport t WHERE t.domain = d.domain) AS transport
FROM domains d
"""


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("domain", parents=[common], help="virtual mail domains")
    ds = p.add_subparsers(dest="domain_command", metavar="ACTION", required=True)
    a = ds.add_parser("add", parents=[common], help="add a domain")
    a.add_argument("domain")
    a.add_argument("--description", default="", metavar="TEXT")
    a.set_defaults(func=cmd_add)
    ds.add_parser("list", parents=[common], help="list domains").set_defaults(func=cmd_list)
    s = ds.add_parser("show", parents=[common], help="show one domain")
    s.add_argument("domain")
    s.set_defaults(func=cmd_show)
    r = ds.add_parser("remove", parents=[common], help="remove a domain")
    r.add_argument("domain")
    r.add_argument(
        "--force",
        action="store_true",
        help="also remove its users, aliases, transport and their sender grants",
    )
    r.add_argument(
        "--purge", action="store_true", help="with --force, also delete the users' Maildirs"
    )
    r.set_defaults(func=cmd_remove)
    for verb, active in (("enable", True), ("disable", False)):
        e = ds.add_parser(verb, parents=[common], help=f"{verb} a domain")
        e.add_argument("domain")
        e.set_defaults(func=cmd_set_active, active=active)


def _public(row: Row) -> Row:
    out = dict(row)
    out["active"] = bool(out.get("active"))
    if "transport" in out and out["transport"] is None:
        out["transport"] = ""
    return out


def cmd_add(ctx: Context, args: argparse.Namespace) -> None:
    domain = names.domain(args.domain)
    if len(args.description) > 255:
        raise Refused("description is longer than 255 characters")

    def work(conn: Any) -> None:
        with transaction(conn) as cur:
            cur.execute("SELECT domain FROM domains WHERE domain = %s FOR UPDATE", (domain,))
            if cur.fetchone():
                raise Refused(f"domain {domain} already exists")
            cur.execute(
                "INSERT INTO domains (domain, description) VALUES (%s, %s)",
                (domain, args.description),
            )

    ctx.run(work)
    ctx.changed()
    shown = names.unicode_domain(domain)
    extra = f" ({shown})" if shown != domain else ""
    ctx.done(f"added domain {domain}{extra}", domain=domain)


def cmd_list(ctx: Context, args: argparse.Namespace) -> None:
    rows = ctx.run(lambda conn: fetch_all(conn, LIST_SQL + " ORDER BY d.domain"))
    ctx.show_table(
        [_public(r) for r in rows],
        [
            Column("domain", "DOMAIN"),
            Column("active", "ACTIVE"),
            Column("users", "USERS"),
            Column("aliases", "ALIASES"),
            Column("transport", "TRANSPORT"),
            Column("description", "DESCRIPTION"),
        ],
    )


def _get(conn: Any, domain: str) -> Row:
    row = fetch_one(conn, LIST_SQL + " WHERE d.domain = %s", (domain,))
    if row is None:
        raise Refused(f"no domain {domain}")
    return row


def cmd_show(ctx: Context, args: argparse.Namespace) -> None:
    domain = names.domain(args.domain)
    row = _public(ctx.run(lambda conn: _get(conn, domain)))
    row["unicode"] = names.unicode_domain(row["domain"])
    row["directory"] = str(Path(ctx.config.mailbox.base) / row["domain"])
    ctx.show_record(
        row,
        [
            ("domain", "domain"),
            ("unicode", "unicode"),
            ("active", "active"),
            ("description", "description"),
            ("users", "users"),
            ("aliases", "aliases"),
            ("transport", "transport"),
            ("directory", "directory"),
            ("created_at", "created"),
        ],
    )


def cmd_set_active(ctx: Context, args: argparse.Namespace) -> None:
    domain = names.domain(args.domain)

    def work(conn: Any) -> int:
        with transaction(conn) as cur:
            if not cur.execute("SELECT 1 FROM domains WHERE domain = %s", (domain,)):
                raise Refused(f"no domain {domain}")
            return int(
                cur.execute(
                    "UPDATE domains SET active = %s WHERE domain = %s", (int(args.active), domain)
                )
            )

    changed = ctx.run(work)
    state = "enabled" if args.active else "disabled"
    if changed:
        ctx.changed()
        ctx.done(f"{state} domain {domain}", domain=domain, active=args.active)
    else:
        ctx.done(f"domain {domain} was already {state}", domain=domain, active=args.active)


def _describe_contents(users: int, aliases: int) -> str:
    parts = []
    if users:
        parts.append(f"{users} user{'s' if users != 1 else ''}")
    if aliases:
        parts.append(f"{aliases} alias{'es' if aliases != 1 else ''}")
    return " and ".join(parts)


def cmd_remove(ctx: Context, args: argparse.Namespace) -> None:
    domain = names.domain(args.domain)
    if args.purge and not args.force:
        raise Refused("--purge removes the users' Maildirs and needs --force")

    def work(conn: Any) -> list[Row]:
        with transaction(conn) as cur:
            if not cur.execute("SELECT 1 FROM domains WHERE domain = %s FOR UPDATE", (domain,)):
                raise Refused(f"no domain {domain}")
            cur.execute(
                "SELECT email, maildir FROM users WHERE email_domain = %s "
                "ORDER BY email FOR UPDATE",
                (domain,),
            )
            users = list(cur.fetchall())
            cur.execute("SELECT COUNT(*) AS n FROM forwardings WHERE source_domain = %s", (domain,))
            aliases = int(cur.fetchone()["n"])
            if (users or aliases) and not args.force:
                raise Refused(
                    f"domain {domain} has {_describe_contents(len(users), aliases)} (use --force)"
                )
            cur.execute(
                "DELETE FROM sender_grants WHERE login IN "
                "(SELECT email FROM users WHERE email_domain = %s)",
                (domain,),
            )
            cur.execute(
                "DELETE FROM send_counters WHERE login IN "
                "(SELECT email FROM users WHERE email_domain = %s)",
                (domain,),
            )
            for table in ("app_passwords", "login_history"):
                cur.execute(
                    f"DELETE FROM {table} WHERE email IN "
                    "(SELECT email FROM users WHERE email_domain = %s)",
                    (domain,),
                )
            cur.execute("DELETE FROM users WHERE email_domain = %s", (domain,))
            cur.execute("DELETE FROM forwardings WHERE source_domain = %s", (domain,))
            cur.execute("DELETE FROM transport WHERE domain = %s", (domain,))
            cur.execute("DELETE FROM domains WHERE domain = %s", (domain,))
            return users

    users = ctx.run(work)
    ctx.changed()
    purged = 0
    if args.purge:
        mailbox = ctx.config.mailbox
        problems = []
        for user in users:
            try:
                purged += maildirs.purge(
                    mailbox, maildirs.path_for(mailbox, user["email"], user["maildir"])
                )
            except maildirs.Incomplete as e:
                problems.append(str(e))
        maildirs.remove_if_empty(mailbox, Path(mailbox.base) / domain)
        if problems:
            raise maildirs.Incomplete(f"removed domain {domain}, but " + "; ".join(problems))
    kept = "" if args.purge or not users else " (Maildirs kept)"
    ctx.done(
        f"removed domain {domain} with {len(users)} users{kept}",
        domain=domain,
        users_removed=len(users),
        maildirs_removed=purged,
    )
