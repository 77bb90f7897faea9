"""``vmailctl user set``: per-protocol access switches; and what ``user show`` adds about
logins (the switches, the number of app passwords, the last login per service).

A switch (``users.imap_access``, ``pop3_access``, ``smtp_access``) is ``on`` (the main
password and app passwords), ``app`` (app passwords only) or ``off``. The daemon reads
them with the account row on every login; the users trigger bumps vmaild_changes and
vmailctl flushes a running daemon's cache as after every account change.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from . import app_passwords, names
from .context import Context
from .errors import Refused
from .output import text
from .sql import Row, fetch_all, fetch_one, transaction

SERVICES = ("imap", "pop3", "smtp")
VALUES = ("on", "off", "app")


def column(service: str) -> str:
    return f"{service}_access"


def register(us: Any, common: argparse.ArgumentParser) -> None:
    """``user set``, under the ``user`` command's sub-parsers ``us``."""
    s = us.add_parser(
        "set",
        parents=[common],
        help="per-protocol access: on, off, or app (app passwords only)",
    )
    s.add_argument("address")
    for service in SERVICES:
        s.add_argument(f"--{service}", choices=VALUES, help=f"{service.upper()} logins")
    s.set_defaults(func=cmd_set)


def cmd_set(ctx: Context, args: argparse.Namespace) -> None:
    email = names.address(args.address)
    wanted = {s: getattr(args, s) for s in SERVICES if getattr(args, s) is not None}
    if not wanted:
        raise Refused("nothing to set: give --imap, --pop3 and/or --smtp (on, off or app)")
    assignments = ", ".join(f"{column(s)} = %s" for s in wanted)

    def work(conn: Any) -> tuple[str, int]:
        with transaction(conn) as cur:
            cur.execute("SELECT email FROM users WHERE email = %s FOR UPDATE", (email,))
            row = cur.fetchone()
            if row is None:
                raise Refused(f"no user {email}")
            stored = str(row["email"])
            changed = cur.execute(
                f"UPDATE users SET {assignments} WHERE email = %s", (*wanted.values(), stored)
            )
            return stored, int(changed)

    stored, changed = ctx.run(work)
    if changed:
        ctx.changed()
    summary = ", ".join(f"{s} {v}" for s, v in wanted.items())
    ctx.done(f"access of {stored}: {summary}", address=stored, **wanted)


def details(conn: Any, email: str) -> Row:
    """What ``user show`` prints about logins, for the stored address ``email``."""
    row = fetch_one(
        conn,
        f"SELECT {', '.join(column(s) for s in SERVICES)} FROM users WHERE email = %s",
        (email,),
    )
    access = {s: str((row or {}).get(column(s)) or "on") for s in SERVICES}
    history = {
        str(r["service"]): {"at": r["last_at"], "from": r["last_address"]}
        for r in fetch_all(
            conn,
            "SELECT service, last_at, last_address FROM login_history "
            "WHERE email = %s ORDER BY service",
            (email,),
        )
    }
    return {
        "access": access,
        "app_passwords": app_passwords.count(conn, email),
        "last_login": history,
    }


def labels(details: Row) -> list[tuple[str, str]]:
    """``(key, label)`` for show_record, in display order; keys as in :func:`flatten`."""
    out = [(f"access_{s}", f"{s} access") for s in SERVICES]
    out.append(("app_passwords", "app passwords"))
    services = list(SERVICES) + sorted(set(details["last_login"]) - set(SERVICES))
    out += [(f"last_login_{s}", f"last {s} login") for s in services]
    return out


def flatten(details: Row) -> Row:
    """The text form's values: one key per line of :func:`labels`."""
    out: Row = {f"access_{s}": v for s, v in details["access"].items()}
    out["app_passwords"] = details["app_passwords"]
    for service in list(SERVICES) + list(details["last_login"]):
        seen = details["last_login"].get(service)
        if seen is None:
            out[f"last_login_{service}"] = "never"
        else:
            where = f" from {seen['from']}" if seen["from"] else ""
            out[f"last_login_{service}"] = f"{text(seen['at'])}{where}"
    return out


def formats(flat: Row) -> dict[str, Callable[[Any], str]]:
    """show_record formatters printing :func:`flatten`'s lines (the keys are not in the
    JSON object, which keeps ``access`` and ``last_login`` as they are)."""
    return {key: _constant(text(value)) for key, value in flat.items()}


def _constant(value: str) -> Callable[[Any], str]:
    return lambda _: value
