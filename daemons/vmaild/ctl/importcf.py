"""``vmailctl import-postfix FILE.cf ...``: the seed's mysql: files as a vmaild.conf.

Prints a configuration vmaild accepts (one ``[database]``, one ``[map NAME]`` per file,
the queries unchanged) followed, as comments, by the main.cf lines that replace the
``mysql:`` references. ``--postfix-only`` prints just those lines, uncommented.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from dataclasses import dataclass
from typing import Any

from .. import expansions
from ..values import parse_listen
from . import postfix_cf
from .context import Context
from .errors import Refused
from .output import to_json

FIRST_PORT = 10021
SOCKETMAP_LISTEN = "127.0.0.1:10020"
# configparser treats whitespace + ';' or '#' as the start of an inline comment.
_INLINE_COMMENT = re.compile(r"\s[;#]")


@dataclass
class Map:
    name: str
    table: postfix_cf.MysqlTable
    port: int
    parameter: str | None  # the main.cf parameter it belongs in, if known
    catchall: bool
    chain: tuple[str, ...] = ()  # maps tried per key form after this one (see below)

    def reference(self, socketmap: str | None) -> str:
        if socketmap is not None:
            return f"socketmap:inet:{socketmap}:{self.name}"
        return f"tcp:127.0.0.1:{self.port}"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "import-postfix", parents=[common], help="turn Postfix mysql: .cf files into a vmaild.conf"
    )
    p.add_argument("files", nargs="+", metavar="FILE.cf")
    p.add_argument(
        "--socketmap",
        action="store_true",
        help="serve every map on one socketmap listener instead of tcp: ports",
    )
    p.add_argument(
        "--first-port",
        type=int,
        default=FIRST_PORT,
        metavar="PORT",
        help=f"first tcp: port, one per file in order (default {FIRST_PORT})",
    )
    p.add_argument(
        "--socketmap-listen",
        default=SOCKETMAP_LISTEN,
        metavar="HOST:PORT",
        help=f"socketmap listener with --socketmap (default {SOCKETMAP_LISTEN})",
    )
    p.add_argument("--postfix-only", action="store_true", help="print only the main.cf lines")
    p.set_defaults(func=cmd_import)


def classify(name: str) -> tuple[str | None, bool, int]:
    """(main.cf parameter, catchall, order within the parameter) for a map name. The
    seed's order in virtual_alias_maps matters: forwardings first, then email2email."""
    lowered = name.lower()
    if "email2email" in lowered:
        return "virtual_alias_maps", False, 1
    if "forward" in lowered or "alias" in lowered:
        return "virtual_alias_maps", True, 0
    if "mailbox" in lowered:
        return "virtual_mailbox_maps", False, 0
    if "domain" in lowered:
        return "virtual_mailbox_domains", False, 0
    if "transport" in lowered:
        return "transport_maps", False, 0
    return None, False, 0


def build_maps(tables: list[postfix_cf.MysqlTable], first_port: int) -> list[Map]:
    maps: list[Map] = []
    seen: dict[str, str] = {}
    for i, table in enumerate(tables):
        name = postfix_cf.map_name(table.path)
        if name in seen:
            raise Refused(f"{table.path} and {seen[name]} would both be [map {name}]")
        seen[name] = table.path
        if _INLINE_COMMENT.search(table.query):
            raise Refused(
                f"{table.path}: the query contains ' ;' or ' #', which "
                f"vmaild.conf would read as a comment"
            )
        try:
            expansions.compile_query(table.query)
        except expansions.QueryError as e:
            raise Refused(f"{table.path}: query: {e}") from None
        parameter, catchall, _ = classify(name)
        maps.append(Map(name, table, first_port + i, parameter, catchall))
    # Postfix tries each key form across all of virtual_alias_maps before the next form,
    # so the seed's email2email stops the '@domain' catch-all from taking mail for
    # existing mailboxes. tcp: tables only see the full address, so vmaild does that
    # ordering itself: the catch-all map chains the email2email map.
    identity = [m.name for m in maps if classify(m.name)[2] == 1]
    for m in maps:
        if m.catchall and identity:
            m.chain = tuple(identity)
    return maps


def check_database(tables: list[postfix_cf.MysqlTable]) -> dict[str, str]:
    first = tables[0]
    db = first.database()
    for other in tables[1:]:
        theirs = other.database()
        for key in postfix_cf.DATABASE_KEYS:
            if theirs[key] != db[key]:
                shown = "" if key == "password" else f" ({db[key]!r} vs {theirs[key]!r})"
                raise Refused(
                    f"{first.path} and {other.path} disagree on the database: {key} differs{shown}"
                )
    if _INLINE_COMMENT.search(db["password"]) or db["password"] != db["password"].strip():
        raise Refused(
            "the database password has spaces before ';' or '#' or around it; "
            "put it in a file and use [database] password_file"
        )
    return db


def config_text(
    db: dict[str, str], maps: list[Map], sources: list[str], socketmap: str | None
) -> str:
    lines = ["# vmaild.conf written by 'vmailctl import-postfix' from:"]
    lines += [f"#   {path}" for path in sources]
    lines += ["", "[database]", f"hosts = {db['hosts']}", f"user = {db['user']}"]
    if db["password"]:
        lines.append(f"password = {db['password']}")
    lines.append(f"dbname = {db['dbname']}")
    if socketmap is not None:
        lines += ["", "[socketmap]", f"listen = {socketmap}"]
    for m in maps:
        lines += ["", f"[map {m.name}]", f"query = {m.table.query}"]
        if socketmap is None:
            lines.append(f"tcp = 127.0.0.1:{m.port}")
        if m.catchall:
            lines.append("catchall = yes")
        if m.chain:
            lines.append(f"chain = {' '.join(m.chain)}")
        if m.parameter == "virtual_alias_maps":
            # A "not found" here sends Postfix on to the mailbox map: keep it through an
            # outage (README, "No lost mail").
            lines.append("stale_negative = yes")
    return "\n".join(lines) + "\n"


def postfix_lines(maps: list[Map], socketmap: str | None) -> list[str]:
    by_parameter: dict[str, list[Map]] = {}
    others: list[Map] = []
    for m in maps:
        if m.parameter is None:
            others.append(m)
        else:
            by_parameter.setdefault(m.parameter, []).append(m)
    lines = []
    if "virtual_alias_maps" in by_parameter:
        # Otherwise Postfix also queries the alias maps with bare domain names.
        lines.append("virtual_alias_domains =")
    for parameter in (
        "virtual_mailbox_domains",
        "virtual_alias_maps",
        "virtual_mailbox_maps",
        "transport_maps",
    ):
        group = sorted(by_parameter.get(parameter, []), key=lambda m: classify(m.name)[2])
        chained = {name for m in group for name in m.chain}
        group = [m for m in group if m.name not in chained]  # answered through the chain
        if group:
            refs = ", ".join(m.reference(socketmap) for m in group)
            lines.append(f"{parameter} = {refs}")
    for m in others:
        lines.append(
            f"# [map {m.name}]: use {m.reference(socketmap)} where main.cf has mysql:{m.table.path}"
        )
    return lines


def notes(maps: list[Map]) -> list[str]:
    result = []
    if any(m.parameter == "virtual_mailbox_maps" for m in maps):
        result.append(
            "virtual(8) refuses tcp: and socketmap: tables for "
            "virtual_mailbox_maps: deliver through maildrop (virtual_transport = "
            "maildrop) as vmaild's postfix/ snippets do, or mail is deferred (4.3.5)"
        )
    for m in maps:
        if m.chain:
            result.append(
                f"[map {m.name}] chains {', '.join(m.chain)}: for each key form "
                f"(full address, without extension, @domain) both are asked, in "
                f"that order, as Postfix does across virtual_alias_maps, so a "
                f"catch-all never takes mail for an existing mailbox"
            )
    return result


def cmd_import(ctx: Context, args: argparse.Namespace) -> None:
    try:
        tables = [postfix_cf.load(path) for path in args.files]
    except postfix_cf.CfError as e:
        raise Refused(str(e)) from None
    socketmap = None
    if args.socketmap:
        try:
            socketmap = str(parse_listen(args.socketmap_listen))
        except ValueError as e:
            raise Refused(f"--socketmap-listen: {e}") from None
    if not 1 <= args.first_port <= 65535 - len(tables):
        raise Refused(f"--first-port {args.first_port} is out of range")
    db = check_database(tables)
    maps = build_maps(tables, args.first_port)
    for table in tables:
        for warning in table.warnings:
            ctx.warn(warning)
    config = config_text(db, maps, args.files, socketmap)
    main_cf = postfix_lines(maps, socketmap)
    remarks = notes(maps)
    if ctx.as_json:
        ctx.print(
            to_json(
                {
                    "config": config,
                    "main_cf": main_cf,
                    "notes": remarks,
                    "maps": [
                        {
                            "name": m.name,
                            "file": m.table.path,
                            "parameter": m.parameter,
                            "catchall": m.catchall,
                            "reference": m.reference(socketmap),
                        }
                        for m in maps
                    ],
                }
            )
        )
    elif args.postfix_only:
        notes_text = [
            line
            for n in remarks
            for line in textwrap.wrap(n, 88, initial_indent="# ", subsequent_indent="#   ")
        ]
        ctx.print("\n".join([*notes_text, *main_cf]))
    else:
        block = ["", "# Postfix main.cf: replace the mysql: references with", "#"]
        block += [f"#   {line}" for line in main_cf]
        for note in remarks:
            block += textwrap.wrap(note, 88, initial_indent="# Note: ", subsequent_indent="#   ")
        ctx.print(config + "\n".join(block))
