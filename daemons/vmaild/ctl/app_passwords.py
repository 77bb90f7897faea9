"""``vmailctl app-password add|list|revoke USER``: a mailbox's app passwords.

An app password is a generated secret (``auth/app_secrets.py``: 100 bits, four groups of
five letters and digits) for one mail client: printed once by ``add``, stored only as its
SHA-256 digest, limited to some services (imap, pop3, smtp), optionally to networks (then
it works only where the client's address is known: SMTP AUTH through Postfix's SASL
socket, not Courier's IMAP and POP3), optionally expiring. ``revoke`` deletes it; vmaild
reads app passwords on every login, so no cache flush is needed and none is sent.
"""

from __future__ import annotations

import argparse
import re
import unicodedata
from typing import Any

from ..auth import app_secrets
from . import names
from .context import Context
from .errors import Refused
from .output import Column, text
from .sql import Row, fetch_all, fetch_one, transaction

SERVICES = ("imap", "pop3", "smtp")
MAX_NAME = 64
MAX_NETWORKS = 1024  # the column's width
_RELATIVE = re.compile(r"(\d{1,5})([hdw])")
_UNIT = {"h": 3600, "d": 86400, "w": 7 * 86400}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
TIMESTAMP_END = "2038-01-19"  # a TIMESTAMP column holds nothing later


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("app-password", parents=[common], help="a mailbox's app passwords")
    aps = p.add_subparsers(dest="app_password_command", metavar="ACTION", required=True)

    a = aps.add_parser(
        "add", parents=[common], help="generate an app password (printed only this once)"
    )
    a.add_argument("address")
    a.add_argument("--name", required=True, help="what it is for, e.g. 'phone'")
    a.add_argument(
        "--service",
        default="imap,pop3,smtp",
        metavar="LIST",
        help="services it may log in to: imap, pop3, smtp, comma-separated (default: all)",
    )
    a.add_argument(
        "--network",
        action="append",
        default=[],
        metavar="CIDR",
        help="only from this network (repeatable); only SMTP AUTH through vmaild's SASL "
        "socket knows the client's address, so such a password never works for IMAP/POP3",
    )
    a.add_argument(
        "--expires",
        metavar="WHEN",
        help="YYYY-MM-DD (valid through that day, in the database's time zone) or a "
        "duration from now: 12h, 30d, 8w",
    )
    a.set_defaults(func=cmd_add)

    ls = aps.add_parser("list", parents=[common], help="a mailbox's app passwords")
    ls.add_argument("address")
    ls.set_defaults(func=cmd_list)

    r = aps.add_parser("revoke", parents=[common], help="delete an app password (at once)")
    r.add_argument("address")
    r.add_argument("name")
    r.set_defaults(func=cmd_revoke)


# -- arguments (pure) ------------------------------------------------------------------------


def parse_name(raw: str) -> str:
    name = raw.strip()
    if not name:
        raise Refused("an app password needs a --name")
    if len(name) > MAX_NAME:
        raise Refused(f"name is longer than {MAX_NAME} characters")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise Refused("name contains control characters")
    return name


def parse_services(raw: str) -> list[str]:
    """A comma-separated subset of imap, pop3, smtp ("all" for the three), in that order."""
    given = {s.strip().lower() for s in raw.split(",") if s.strip()}
    if "all" in given:
        given = (given - {"all"}) | set(SERVICES)
    unknown = sorted(given - set(SERVICES))
    if unknown:
        raise Refused(f"unknown service {unknown[0]!r} (use imap, pop3, smtp)")
    if not given:
        raise Refused("--service needs at least one of imap, pop3, smtp")
    return [s for s in SERVICES if s in given]


def parse_networks(raw: list[str]) -> list[str]:
    """Each --network (commas allowed too) as a normalised CIDR; duplicates dropped."""
    out: list[str] = []
    for item in raw:
        if not item.strip():
            raise Refused("--network needs a network such as 192.0.2.0/24")
        try:
            parsed = app_secrets.parse_networks(item)
        except ValueError as e:
            raise Refused(f"bad --network: {e}") from None
        out += [str(n) for n in parsed if str(n) not in out]
    if len(",".join(out)) > MAX_NETWORKS:
        raise Refused(f"too many networks (at most {MAX_NETWORKS} characters in all)")
    return out


def parse_expiry(raw: str) -> tuple[str, Any]:
    """``--expires`` as an SQL expression over one parameter, evaluated by the database
    (whose clock and time zone decide expiry at login too)."""
    value = raw.strip().lower()
    m = _RELATIVE.fullmatch(value)
    if m:
        seconds = int(m.group(1)) * _UNIT[m.group(2)]
        if seconds <= 0:
            raise Refused("--expires must be in the future")
        return "NOW() + INTERVAL %s SECOND", seconds
    if _DATE.fullmatch(value):
        # Valid through that day: it expires when the next one begins.
        return "TIMESTAMP(%s) + INTERVAL 1 DAY", value
    raise Refused(f"bad --expires {raw!r} (YYYY-MM-DD, or a duration such as 12h, 30d, 8w)")


def services_of(value: Any) -> list[str]:
    """A SET column as read by pymysql (text "imap,smtp", or a set)."""
    if isinstance(value, set | frozenset):
        items = {str(v) for v in value}
    else:
        items = {v for v in str(value or "").split(",") if v}
    return [s for s in SERVICES if s in items]


# -- commands -----------------------------------------------------------------------------------


def _user(conn: Any, email: str, lock: bool = False) -> str:
    """The stored address of ``email`` (refused when there is no such user)."""
    row = fetch_one(
        conn,
        "SELECT email FROM users WHERE email = %s" + (" FOR UPDATE" if lock else ""),
        (email,),
    )
    if row is None:
        raise Refused(f"no user {email}")
    return str(row["email"])


def cmd_add(ctx: Context, args: argparse.Namespace) -> None:
    email = names.address(args.address)
    name = parse_name(args.name)
    services = parse_services(args.service)
    networks = parse_networks(args.network)
    expiry = parse_expiry(args.expires) if args.expires else None
    secret = app_secrets.generate()

    def work(conn: Any) -> Row:
        with transaction(conn) as cur:
            stored = _user(cur.connection, email, lock=True)
            if expiry is not None:
                expr, param = expiry
                cur.execute(
                    f"SELECT {expr} AS at, {expr} > NOW() AS future, "
                    f"{expr} < '{TIMESTAMP_END}' AS fits",
                    (param, param, param),
                )
                when = cur.fetchone()
                if when is None or when["at"] is None:
                    raise Refused(f"bad --expires {args.expires!r}: no such date")
                if not when["future"]:
                    raise Refused(f"--expires {args.expires} is in the past")
                if not when["fits"]:
                    raise Refused(f"--expires {args.expires} is after {TIMESTAMP_END}")
            if cur.execute(
                "SELECT 1 FROM app_passwords WHERE email = %s AND name = %s", (stored, name)
            ):
                raise Refused(f"{stored} already has an app password named {name!r}")
            cur.execute(
                "INSERT INTO app_passwords (email, name, secret_hash, services, networks, "
                f"expires_at) VALUES (%s, %s, %s, %s, %s, {expiry[0] if expiry else 'NULL'})",
                (
                    stored,
                    name,
                    app_secrets.digest(secret),
                    ",".join(services),
                    ",".join(networks) or None,
                    *((expiry[1],) if expiry else ()),
                ),
            )
            cur.execute(
                "SELECT expires_at FROM app_passwords WHERE email = %s AND name = %s",
                (stored, name),
            )
            row = cur.fetchone() or {}
            return {"address": stored, "expires_at": row.get("expires_at")}

    done = ctx.run(work)
    limits = ", ".join(services)
    if networks:
        limits += "; from " + ", ".join(networks)
    if done["expires_at"] is not None:
        limits += f"; expires {text(done['expires_at'])}"
    ctx.done(
        f"app password {name!r} for {done['address']} ({limits}):\n\n    {secret}\n\n"
        "It is shown only this once: enter it in the mail client now.",
        address=done["address"],
        name=name,
        secret=secret,
        services=services,
        networks=networks,
        expires_at=done["expires_at"],
    )


def cmd_list(ctx: Context, args: argparse.Namespace) -> None:
    email = names.address(args.address)

    def work(conn: Any) -> list[Row]:
        stored = _user(conn, email)
        return fetch_all(
            conn,
            "SELECT name, services, networks, expires_at, created_at, last_used_at, "
            "COALESCE(expires_at <= NOW(), 0) AS expired FROM app_passwords "
            "WHERE email = %s ORDER BY name",
            (stored,),
        )

    rows = [
        {
            "name": r["name"],
            "services": services_of(r["services"]),
            "networks": [n for n in str(r["networks"] or "").split(",") if n],
            "expires_at": r["expires_at"],
            "expired": bool(r["expired"]),
            "created_at": r["created_at"],
            "last_used_at": r["last_used_at"],
        }
        for r in ctx.run(work)
    ]
    ctx.show_table(
        rows,
        [
            Column("name", "NAME"),
            Column("services", "SERVICES", lambda v: ",".join(v)),
            Column("networks", "NETWORKS", lambda v: ",".join(v) or "any"),
            Column("expires_at", "EXPIRES", lambda v: "never" if v is None else text(v)),
            Column("expired", "EXPIRED"),
            Column("created_at", "CREATED"),
            Column("last_used_at", "LAST USED", lambda v: "never" if v is None else text(v)),
        ],
    )


def cmd_revoke(ctx: Context, args: argparse.Namespace) -> None:
    email = names.address(args.address)
    name = args.name.strip()

    def work(conn: Any) -> str:
        with transaction(conn) as cur:
            stored = _user(cur.connection, email)
            if not cur.execute(
                "DELETE FROM app_passwords WHERE email = %s AND name = %s", (stored, name)
            ):
                raise Refused(f"{stored} has no app password named {name!r}")
            return stored

    stored = ctx.run(work)
    ctx.done(f"revoked app password {name!r} of {stored}", address=stored, name=name)


def count(conn: Any, email: str) -> int:
    """How many app passwords ``email`` has (for ``user show``)."""
    row = fetch_one(conn, "SELECT COUNT(*) AS n FROM app_passwords WHERE email = %s", (email,))
    return int(row["n"]) if row else 0
