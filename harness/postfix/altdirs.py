"""``alternate_config_directories`` in the default /etc/postfix/main.cf: adding a
private instance's config directory for its lifetime and removing it again, under a
lock shared by parallel instances (see :mod:`harness.postfix.server`)."""

from __future__ import annotations

import fcntl
import re
from collections.abc import Callable
from pathlib import Path

from harness.common.procs import run

_MAIN_CF_LOCK = "/run/lock/vmaild-harness-postfix-main-cf.lock"


def _alternate_dirs() -> list[str]:
    value = run(["postconf", "-c", "/etc/postfix", "-h", "alternate_config_directories"]).stdout
    return [d for d in re.split(r"[\s,]+", value.strip()) if d]


def _set_alternate_dirs(dirs: list[str]) -> None:
    if dirs:
        run(
            [
                "postconf",
                "-c",
                "/etc/postfix",
                "-e",
                f"alternate_config_directories={' '.join(dirs)}",
            ]
        )
    else:  # back to the default: remove the line rather than leave "... = "
        run(["postconf", "-c", "/etc/postfix", "-X", "alternate_config_directories"])


def _locked_edit(edit: Callable[[list[str]], list[str]]) -> None:
    """Apply ``edit`` to the list under a lock: parallel instances edit the
    same line of /etc/postfix/main.cf."""
    Path(_MAIN_CF_LOCK).parent.mkdir(parents=True, exist_ok=True)
    with open(_MAIN_CF_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = _alternate_dirs()
        after = edit(before)
        if after != before:
            _set_alternate_dirs(after)


def register_alternate_config_dir(config_dir: Path) -> None:
    """Add ``config_dir`` (exact path, no wildcard) to the default main.cf."""
    path = str(config_dir)
    _locked_edit(lambda dirs: dirs if path in dirs else [*dirs, path])


def unregister_alternate_config_dir(config_dir: Path) -> None:
    """Remove ``config_dir`` again; other entries are left untouched."""
    path = str(config_dir)
    _locked_edit(lambda dirs: [d for d in dirs if d != path])
