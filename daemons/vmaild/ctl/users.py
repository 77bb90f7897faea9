"""``vmailctl user ...`` and ``vmailctl maildir create``: mailbox accounts."""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from typing import Any

from . import access, maildirs, names, prompt, sizes
from .context import Context
from .errors import Refused
from .output import Column
from .schema import BUMP, log_change
from .sql import Row, fetch_all, fetch_one, transaction

USER_COLUMNS = (
    "email, name, quota_bytes, quota_messages, active, maildir, created_at, "
    "password_changed_at, password"
)


@functools.cache
def _identifier() -> Any:
    """Only to show which scheme a stored hash uses (the seed's are des_crypt); built on
    first use because loading the hash handlers costs every other command time."""
    from passlib.context import CryptContext  # type: ignore[import-untyped]  # no stubs

    return CryptContext(
        schemes=["argon2", "bcrypt", "sha512_crypt", "sha256_crypt", "md5_crypt", "des_crypt"]
    )


def scheme_of(stored: str) -> str:
    if stored.startswith("{") and "}" in stored:
        return stored[1 : stored.index("}")].lower()  # Dovecot-style {SCHEME}
    try:
        return _identifier().identify(stored, required=False) or "unknown"
    except ValueError:
        return "unknown"


def _argument(parse: Callable[[str], int]) -> Callable[[str], int]:
    """argparse shows an ArgumentTypeError's own message (a ValueError's is lost)."""

    def convert(text: str) -> int:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__
    return convert


SIZE = _argument(sizes.parse_size)
COUNT = _argument(sizes.parse_count)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("user", parents=[common], help="mailbox accounts")
    us = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)

    a = us.add_parser("add", parents=[common], help="add an account and create its Maildir")
    a.add_argument("address")
    a.add_argument("--name", default="", help="display name")
    a.add_argument(
        "--quota",
        type=SIZE,
        default=0,
        metavar="SIZE",
        help="storage quota such as 500M or 2G; 0 for none (default)",
    )
    a.add_argument(
        "--quota-messages",
        type=COUNT,
        default=0,
        metavar="N",
        help="message-count quota; 0 for none (default)",
    )
    a.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    a.set_defaults(func=cmd_add)

    ls = us.add_parser("list", parents=[common], help="list accounts")
    ls.add_argument("domain", nargs="?")
    ls.set_defaults(func=cmd_list)

    for verb, func, help_text in (
        ("show", cmd_show, "show one account"),
        ("enable", cmd_set_active, "let an account log in and receive mail"),
        ("disable", cmd_set_active, "stop an account's logins and mail"),
    ):
        c = us.add_parser(verb, parents=[common], help=help_text)
        c.add_argument("address")
        c.set_defaults(func=func, active=verb == "enable")

    r = us.add_parser("remove", parents=[common], help="remove an account")
    r.add_argument("address")
    r.add_argument("--purge", action="store_true", help="also delete its Maildir")
    r.set_defaults(func=cmd_remove)

    pw = us.add_parser("password", parents=[common], help="set a new password")
    pw.add_argument("address")
    pw.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    pw.set_defaults(func=cmd_password)

    q = us.add_parser("quota", parents=[common], help="set the storage quota")
    q.add_argument("address")
    q.add_argument("size", type=SIZE, metavar="SIZE", help="such as 500M; 0 = none")
    q.add_argument(
        "--messages", type=COUNT, default=None, metavar="N", help="message-count quota; 0 = none"
    )
    q.set_defaults(func=cmd_quota)
    access.register(us, common)

    m = sub.add_parser("maildir", parents=[common], help="Maildirs")
    ms = m.add_subparsers(dest="maildir_command", metavar="ACTION", required=True)
    mc = ms.add_parser("create", parents=[common], help="(re)create a missing Maildir")
    mc.add_argument("address")
    mc.set_defaults(func=cmd_maildir_create)


def _get(conn: Any, email: str, lock: bool = False) -> Row:
    row = fetch_one(
        conn,
        f"SELECT {USER_COLUMNS} FROM users WHERE email = %s" + (" FOR UPDATE" if lock else ""),
        (email,),
    )
    if row is None:
        raise Refused(f"no user {email}")
    return row


def _public(row: Row) -> Row:
    """A user row as shown: no hash, only its scheme; flags as booleans."""
    out = {k: v for k, v in row.items() if k != "password"}
    out["active"] = bool(out["active"])
    out["password_scheme"] = scheme_of(row.get("password") or "")
    return out


def cmd_add(ctx: Context, args: argparse.Namespace) -> None:
    email = names.address(args.address)
    domain = names.domain_of(email)
    if len(args.name) > 255:
        raise Refused("name is longer than 255 characters")
    # Check before asking for a password: a refusal after typing it twice is rude.
    ctx.run(lambda conn: _check_new(conn, email, domain))
    password = prompt.read_password(ctx.stdin, args.password_stdin, email)
    hashed = prompt.hashed(
        password, ctx.config.auth.password_scheme, ctx.config.auth.password_rounds
    )

    def work(conn: Any) -> bool:
        with transaction(conn) as cur:
            _check_new(cur.connection, email, domain, lock=True)
            cur.execute(
                "INSERT INTO users (email, password, name, quota_bytes, quota_messages, "
                "password_changed_at) VALUES (%s, %s, %s, %s, %s, NOW())",
                (email, hashed, args.name, args.quota, args.quota_messages),
            )
            return bool(cur.execute("SELECT 1 FROM forwardings WHERE source = %s", (email,)))

    shadowed = ctx.run(work)
    ctx.changed()
    if shadowed:
        ctx.warn(f"an alias {email} exists and takes precedence over the mailbox")
    path = maildirs.path_for(ctx.config.mailbox, email)
    maildirs.create(ctx.config.mailbox, path)
    ctx.done(f"added user {email} (Maildir {path})", address=email, maildir=str(path))


def _check_new(conn: Any, email: str, domain: str, lock: bool = False) -> None:
    share = " LOCK IN SHARE MODE" if lock else ""
    if fetch_one(conn, "SELECT domain FROM domains WHERE domain = %s" + share, (domain,)) is None:
        raise Refused(f"no domain {domain} (add it first: vmailctl domain add {domain})")
    if fetch_one(conn, "SELECT email FROM users WHERE email = %s" + share, (email,)):
        raise Refused(f"user {email} already exists")


def cmd_list(ctx: Context, args: argparse.Namespace) -> None:
    sql = f"SELECT {USER_COLUMNS} FROM users"
    params: tuple[str, ...] = ()
    if args.domain:
        domain = names.domain(args.domain)
        sql += " WHERE email_domain = %s"
        params = (domain,)
    rows = ctx.run(lambda conn: fetch_all(conn, sql + " ORDER BY email", params))
    ctx.show_table(
        [_public(r) for r in rows],
        [
            Column("email", "ADDRESS"),
            Column("active", "ACTIVE"),
            Column("quota_bytes", "QUOTA", sizes.format_size),
            Column("quota_messages", "MESSAGES", sizes.format_count),
            Column("password_scheme", "HASH"),
            Column("name", "NAME"),
        ],
    )


def cmd_show(ctx: Context, args: argparse.Namespace) -> None:
    email = names.address(args.address)

    def work(conn: Any) -> Row:
        row = _public(_get(conn, email))
        stored = row["email"]
        dom = fetch_one(
            conn, "SELECT active FROM domains WHERE domain = %s", (names.domain_of(stored),)
        )
        row["domain_active"] = bool(dom and dom["active"])
        row["sender_grants"] = [
            r["sender"]
            for r in fetch_all(
                conn, "SELECT sender FROM sender_grants WHERE login = %s ORDER BY sender", (stored,)
            )
        ]
        row["aliases"] = [
            r["source"]
            for r in fetch_all(
                conn,
                "SELECT source FROM forwardings WHERE "
                "FIND_IN_SET(%s, REPLACE(destination, ' ', '')) ORDER BY source",
                (stored,),
            )
        ]
        sent = fetch_one(
            conn,
            "SELECT COALESCE(SUM(messages), 0) AS m, "
            "COALESCE(SUM(recipients), 0) AS r FROM send_counters "
            "WHERE login = %s AND bucket >= FLOOR(UNIX_TIMESTAMP() / 60) - 59",
            (stored,),
        ) or {"m": 0, "r": 0}
        row["sent_last_hour"] = {"messages": int(sent["m"]), "recipients": int(sent["r"])}
        row.update(access.details(conn, stored))
        return row

    row = ctx.run(work)
    path = maildirs.path_for(ctx.config.mailbox, row["email"], row["maildir"])
    row["maildir_path"] = str(path)
    row["maildir_exists"] = os.path.isdir(path / "cur")
    sent = row["sent_last_hour"]
    logins = access.flatten(row)  # text lines; the JSON keeps the structure
    ctx.show_record(
        row,
        [
            ("email", "address"),
            ("name", "name"),
            ("active", "active"),
            ("domain_active", "domain active"),
            ("quota_bytes", "quota"),
            ("quota_messages", "quota messages"),
            ("maildir_path", "maildir"),
            ("maildir_exists", "maildir exists"),
            ("password_scheme", "password hash"),
            ("password_changed_at", "password changed"),
            ("created_at", "created"),
            ("aliases", "aliases to it"),
            ("sender_grants", "may send as"),
            ("sent_last_hour", "sent last hour"),
            *access.labels(row),
        ],
        {
            **access.formats(logins),
            "quota_bytes": sizes.format_size,
            "quota_messages": sizes.format_count,
            "sent_last_hour": lambda _: (
                f"{sent['messages']} messages, {sent['recipients']} recipients"
            ),
        },
    )


def cmd_set_active(ctx: Context, args: argparse.Namespace) -> None:
    email = names.address(args.address)
    changed = ctx.run(lambda conn: _update(conn, email, "active = %s", (int(args.active),)))
    state = "enabled" if args.active else "disabled"
    if changed:
        ctx.changed()
        ctx.done(f"{state} user {email}", address=email, active=args.active)
    else:
        ctx.done(f"user {email} was already {state}", address=email, active=args.active)


def _update(
    conn: Any, email: str, assignments: str, params: tuple[Any, ...], bump: bool = False
) -> int:
    with transaction(conn) as cur:
        _get(cur.connection, email, lock=True)
        changed = int(
            cur.execute(f"UPDATE users SET {assignments} WHERE email = %s", (*params, email))
        )
        if bump:
            # The triggers keep password changes quiet (login rehashes): say it here.
            cur.execute(BUMP)
            cur.execute(log_change("users", "%s"), (email,))
        return changed


def cmd_quota(ctx: Context, args: argparse.Namespace) -> None:
    email = names.address(args.address)
    assignments, params = "quota_bytes = %s", [args.size]
    if args.messages is not None:
        assignments += ", quota_messages = %s"
        params.append(args.messages)
    if ctx.run(lambda conn: _update(conn, email, assignments, tuple(params))):
        ctx.changed()
    messages = "" if args.messages is None else f", {sizes.format_count(args.messages)} messages"
    ctx.done(
        f"quota of {email}: {sizes.format_size(args.size)}{messages}",
        address=email,
        quota_bytes=args.size,
        quota_messages=args.messages,
    )


def cmd_password(ctx: Context, args: argparse.Namespace) -> None:
    email = names.address(args.address)
    ctx.run(lambda conn: _get(conn, email))
    password = prompt.read_password(ctx.stdin, args.password_stdin, email)
    hashed = prompt.hashed(
        password, ctx.config.auth.password_scheme, ctx.config.auth.password_rounds
    )
    # The users trigger ignores password-only updates (the auth service rehashes on
    # login); an admin's change must still evict cached logins at once, so bump here.
    ctx.run(
        lambda conn: _update(
            conn, email, "password = %s, password_changed_at = NOW()", (hashed,), bump=True
        )
    )
    ctx.changed()
    ctx.done(f"password of {email} changed", address=email)


def cmd_remove(ctx: Context, args: argparse.Namespace) -> None:
    email = names.address(args.address)

    def work(conn: Any) -> tuple[Row, list[str]]:
        with transaction(conn) as cur:
            row = _get(cur.connection, email, lock=True)
            stored = row["email"]
            cur.execute("DELETE FROM sender_grants WHERE login = %s", (stored,))
            cur.execute("DELETE FROM send_counters WHERE login = %s", (stored,))
            cur.execute("DELETE FROM app_passwords WHERE email = %s", (stored,))
            cur.execute("DELETE FROM login_history WHERE email = %s", (stored,))
            cur.execute("DELETE FROM users WHERE email = %s", (stored,))
            cur.execute(
                "SELECT source FROM forwardings WHERE "
                "FIND_IN_SET(%s, REPLACE(destination, ' ', '')) ORDER BY source",
                (stored,),
            )
            return row, [r["source"] for r in cur.fetchall()]

    row, aliases = ctx.run(work)
    ctx.changed()
    if aliases:
        ctx.warn(f"aliases still forward to {email}: {', '.join(aliases)}")
    path = maildirs.path_for(ctx.config.mailbox, row["email"], row["maildir"])
    if args.purge:
        removed = maildirs.purge(ctx.config.mailbox, path)
        what = f"Maildir {path} deleted" if removed else f"no Maildir at {path}"
    else:
        removed, what = False, f"Maildir {path} kept"
    ctx.done(
        f"removed user {email} ({what})", address=email, maildir=str(path), maildir_removed=removed
    )


def cmd_maildir_create(ctx: Context, args: argparse.Namespace) -> None:
    email = names.address(args.address)
    row = ctx.run(lambda conn: _get(conn, email))
    path = maildirs.path_for(ctx.config.mailbox, row["email"], row["maildir"])
    created = maildirs.create(ctx.config.mailbox, path)
    ctx.done(
        f"{'created' if created else 'already complete:'} Maildir {path}",
        address=row["email"],
        maildir=str(path),
        created=created,
    )
