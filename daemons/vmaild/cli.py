"""The ``vmaild`` command: ``serve`` (foreground for systemd, or ``--daemon``) and ``check``.

``check`` exits 0 when the file is good (and, when the database answers, every configured
query fits it), 1 when the file is wrong or a query does not fit the database, and 75
(EX_TEMPFAIL, as vmailctl) when ``--db`` asks for the database and it does not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import sys
from collections.abc import Callable

from . import __version__
from . import config as config_mod
from .sections import LogConfig
from .values import ConfigError

log = logging.getLogger("vmaild")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmaild", description=__doc__)
    p.add_argument("--version", action="version", version=f"vmaild {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="answer Postfix and Courier (foreground by default)")
    check = sub.add_parser("check", help="validate the configuration file and exit")
    for s in (serve, check):
        s.add_argument(
            "-c",
            "--config",
            default=None,
            help=f"configuration file (default: ${config_mod.ENV_VAR} or "
            f"{config_mod.DEFAULT_PATH})",
        )
    db = check.add_mutually_exclusive_group()
    db.add_argument(
        "--db",
        dest="db",
        action="store_const",
        const="require",
        default="auto",
        help="try every query against the database; fail (75) if it does not "
        "answer (default: try it, and check only the file if it does not)",
    )
    db.add_argument(
        "--no-db",
        dest="db",
        action="store_const",
        const="skip",
        help="check the file only, without connecting",
    )
    serve.add_argument(
        "--daemon",
        action="store_true",
        help="detach from the terminal (systemd wants the foreground)",
    )
    serve.add_argument("--pidfile", help="with --daemon: write the daemon's pid here")
    return p


def check(cfg: config_mod.Config, db: str = "auto") -> int:
    """``vmaild check``: the file is valid (it was loaded); then, unless ``db`` is "skip",
    the probes of schema_fit.py, which print the same lines ``vmaild serve`` logs."""
    summary = f"{len(cfg.maps)} maps"
    warn_exposed_password(cfg, lambda line: print(f"vmaild: warning: {line}", file=sys.stderr))
    if db == "skip":
        print(f"{cfg.path}: ok ({summary}); queries not checked against the database")
        return 0
    from .db import DatabaseError
    from .schema_fit import check_now, probes

    try:
        misfits = check_now(cfg)
    except DatabaseError as e:
        if db == "require":
            print(f"vmaild: {cfg.path}: cannot check the queries: {e}", file=sys.stderr)
            return 75
        print(f"vmaild: database not checked ({e}); checked the file only", file=sys.stderr)
        print(f"{cfg.path}: ok ({summary}); queries not checked against the database")
        return 0
    for m in misfits:
        print(f"vmaild: {m.line()}", file=sys.stderr)
    if misfits:
        return 1
    print(f"{cfg.path}: ok ({summary}); {len(probes(cfg))} queries fit the database")
    return 0


#: sd-daemon(3) priority prefixes by logging level.
_JOURNAL_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """Lines for a stderr that is the journal: ``<4>WARNING message``. journald strips the
    ``<N>`` prefix and stores the line at that priority (so ``journalctl -p warning -u vmaild``
    shows vmaild's warnings), and adds its own timestamp."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM=DEVICE:INODE when a service's stderr is the journal
    (systemd.exec(5)); it is inherited, so the descriptor itself is compared."""
    try:
        dev, ino = (int(x) for x in os.environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(cfg: LogConfig, detached: bool = False) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if cfg.target == "syslog" or detached:
        facility = logging.handlers.SysLogHandler.facility_names.get(cfg.syslog_facility, 2 << 3)
        try:
            handler = logging.handlers.SysLogHandler(address="/dev/log", facility=facility)
            handler.setFormatter(logging.Formatter("vmaild[%(process)d]: %(message)s"))
        except OSError:
            handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
        if stderr_is_journal():
            handler.setFormatter(JournalFormatter())
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s vmaild %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(cfg.level.upper())


def warn_exposed_password(cfg: config_mod.Config, say: Callable[[str], object]) -> None:
    """One line when others can read the file holding the database password."""
    from .secret_files import exposure

    line = exposure(cfg)
    if line is not None:
        say(line)


def run_loop(cfg: config_mod.Config) -> int:
    from .daemon import serve

    warn_exposed_password(cfg, log.warning)

    try:
        import uvloop  # optional: roughly halves the per-request cost of the event loop
    except ImportError:
        return asyncio.run(serve(cfg))
    return uvloop.run(serve(cfg))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = args.config or config_mod.default_path()
    try:
        cfg = config_mod.load(path)
    except ConfigError as e:
        print(f"vmaild: {e}", file=sys.stderr)
        return 1
    if args.command == "check":
        return check(cfg, args.db)
    if args.pidfile and not args.daemon:
        print("vmaild: --pidfile goes with --daemon", file=sys.stderr)
        return 2
    if args.daemon:
        return _daemonize(cfg, args.pidfile)
    setup_logging(cfg.log)
    return run_loop(cfg)


def _daemonize(cfg: config_mod.Config, pidfile: str | None) -> int:
    import daemon  # type: ignore[import-untyped]  # python-daemon ships no type hints
    import daemon.pidfile  # type: ignore[import-untyped]

    lock = None
    if pidfile:
        _remove_stale_pidfile(pidfile)
        lock = daemon.pidfile.TimeoutPIDLockFile(pidfile, acquire_timeout=0)
    with daemon.DaemonContext(pidfile=lock, umask=0o022, working_directory="/"):
        setup_logging(cfg.log, detached=True)
        return run_loop(cfg)


def _remove_stale_pidfile(path: str) -> None:
    try:
        pid = int(open(path).read().strip() or 0)
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        os.unlink(path)
    except PermissionError:
        pass


if __name__ == "__main__":
    sys.exit(main())
