"""``vmailctl db init | migrate | status``."""

from __future__ import annotations

import argparse
from typing import Any

from . import schema_state
from .context import SCHEMA_QUERY_TIMEOUT, Context


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    db = sub.add_parser("db", parents=[common], help="create, upgrade or inspect the schema")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    dbsub.add_parser(
        "init", parents=[common], help="create the latest schema on an empty database"
    ).set_defaults(func=cmd_init)
    dbsub.add_parser(
        "migrate", parents=[common], help="upgrade the seed's schema in place, keeping every row"
    ).set_defaults(func=cmd_migrate)
    dbsub.add_parser("status", parents=[common], help="show the schema version found").set_defaults(
        func=cmd_status
    )


def _schema_work(ctx: Context, fn: Any, verb: str) -> None:
    ctx.query_timeout = SCHEMA_QUERY_TIMEOUT
    before, after = ctx.db.run_sync(fn)
    if before.label == after.label:
        ctx.done(
            f"schema already at version {after.label}; nothing to do",
            before=before.label,
            version=after.label,
            changed=False,
        )
        return
    ctx.changed(full=True)
    ctx.done(
        f"schema {verb}: {before.label} -> {after.label}",
        before=before.label,
        version=after.label,
        changed=True,
    )


def cmd_init(ctx: Context, args: argparse.Namespace) -> None:
    _schema_work(ctx, schema_state.init, "created")


def cmd_migrate(ctx: Context, args: argparse.Namespace) -> None:
    _schema_work(ctx, schema_state.migrate, "migrated")


def cmd_status(ctx: Context, args: argparse.Namespace) -> None:
    info = ctx.db.run_sync(schema_state.report)
    labels = [
        ("version", "schema"),
        ("latest", "latest"),
        ("advice", "status"),
        ("triggers", "triggers"),
        ("changes", "change counter"),
        ("changed_at", "last change"),
        ("change_log", "change log"),
        ("tables", "tables"),
    ]
    ctx.show_record(
        info,
        [(k, v) for k, v in labels if k in info],
        {"tables": lambda ts: " ".join(ts) if ts else "-"},
    )
