"""The ``vmaild`` command: ``serve`` (foreground for systemd, or ``--daemon``) and ``check``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import sys

from . import __version__
from . import config as config_mod

log = logging.getLogger("vmaild")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmaild", description=__doc__)
    p.add_argument("--version", action="version", version=f"vmaild {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="answer Postfix and Courier (foreground by default)")
    check = sub.add_parser("check", help="validate the configuration file and exit")
    for s in (serve, check):
        s.add_argument("-c", "--config", default=None,
                       help=f"configuration file (default: ${config_mod.ENV_VAR} or "
                            f"{config_mod.DEFAULT_PATH})")
    serve.add_argument("--daemon", action="store_true",
                       help="detach from the terminal (systemd wants the foreground)")
    serve.add_argument("--pidfile", help="with --daemon: write the daemon's pid here")
    return p


def setup_logging(cfg: config_mod.LogConfig, detached: bool = False) -> None:
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
        handler.setFormatter(logging.Formatter("%(asctime)s vmaild %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(cfg.level.upper())


def run_loop(cfg: config_mod.Config) -> int:
    from .daemon import serve
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
    except config_mod.ConfigError as e:
        print(f"vmaild: {e}", file=sys.stderr)
        return 1
    if args.command == "check":
        print(f"{path}: ok ({len(cfg.maps)} maps)")
        return 0
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
