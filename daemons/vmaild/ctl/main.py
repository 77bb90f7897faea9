"""``vmailctl [-c CONFIG] [--json] COMMAND ...``: the argparse tree and the exit codes.

Expected failures never print a traceback: a refusal is one line and exit 1, a database
that cannot answer is exit 75 (EX_TEMPFAIL, so scripts can retry), usage errors are
argparse's own exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from .. import __version__
from ..db import DatabaseError
from ..values import ConfigError
from . import (
    aliases,
    app_passwords,
    dbcmd,
    domains,
    guard,
    importcf,
    lookupcmd,
    names,
    routing,
    users,
)
from .context import Context
from .errors import EXIT_OK, EXIT_REFUSED, EXIT_TEMPFAIL, Refused, TempFail

PROG = "vmailctl"

# MySQL errors that retrying will not cure: the schema or the grants are wrong.
PERMANENT_ERRNOS = {
    1044: "access denied to the database",
    1045: "access denied (user or password)",
    1049: "unknown database",
    1054: "unexpected schema (unknown column)",
    1142: "permission denied",
    1146: "unexpected schema (missing table)",
    1406: "value too long for its column",
}


def build_parser() -> argparse.ArgumentParser:
    # The global options are accepted before and after the command; SUPPRESS keeps a
    # sub-command's default from overwriting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        default=argparse.SUPPRESS,
        metavar="CONFIG",
        help="configuration file (default: $VMAILD_CONFIG or /etc/vmaild/vmaild.conf)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON for scripts instead of tables",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="Administer vmaild's database: schema, domains, users, app passwords, "
        "login blocks, aliases, transports and sender grants.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (
        dbcmd,
        domains,
        users,
        app_passwords,
        guard,
        aliases,
        routing,
        importcf,
        lookupcmd,
    ):
        module.register(sub, common)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    # The shared modules log for the daemon; here every failure is reported once, as
    # the one line below, so their records must not reach Python's last-resort handler.
    logger = logging.getLogger("vmaild")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    args = build_parser().parse_args(argv)
    ctx = Context(
        getattr(args, "config", None),
        getattr(args, "json", False),
        out=stdout,
        err=stderr,
        stdin=stdin,
    )
    try:
        code = args.func(ctx, args)
        return EXIT_OK if code is None else int(code)
    except Refused as e:
        return _fail(ctx, f"{e.label}: {e}", EXIT_REFUSED)
    except names.InvalidName as e:
        return _fail(ctx, f"refused: {e}", EXIT_REFUSED)
    except ConfigError as e:
        return _fail(ctx, f"configuration: {e}", EXIT_REFUSED)
    except TempFail as e:
        return _fail(ctx, str(e), EXIT_TEMPFAIL)
    except DatabaseError as e:
        if e.errno in PERMANENT_ERRNOS:
            return _fail(ctx, f"refused: {PERMANENT_ERRNOS[e.errno]}: {e}", EXIT_REFUSED)
        return _fail(ctx, f"database unavailable, try again later: {e}", EXIT_TEMPFAIL)
    except KeyboardInterrupt:
        return _fail(ctx, "interrupted", 130)
    except BrokenPipeError:
        return EXIT_REFUSED
    finally:
        ctx.close()


def _fail(ctx: Context, message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=ctx.err)
    return code


if __name__ == "__main__":
    sys.exit(main())
