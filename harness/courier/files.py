"""The global files :class:`harness.courier.server.Courier` writes: /etc/courier/authdaemonrc,
authProg and authmysqlrc (built from the packaged files), and the /run/courier
directories the package's tmpfiles.d entry would create at boot."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path

from harness.courier.paths import AUTHDAEMON_DIR, AUTHDAEMONRC, RUN_COURIER


def authdaemonrc_text(modules: str, daemons: int, debug_login: int) -> str:
    """The packaged authdaemonrc with our three settings replaced, so all
    other defaults stay as Debian ships them."""
    text = AUTHDAEMONRC.read_text() if AUTHDAEMONRC.exists() else ""
    for key, value in (
        ("authmodulelist", f'"{modules}"'),
        ("daemons", str(daemons)),
        ("DEBUG_LOGIN", str(debug_login)),
    ):
        line = f"{key}={value}"
        text, n = re.subn(rf"^{key}=.*$", line, text, flags=re.M)
        if n == 0:
            text += f"\n{line}\n"
    return text


def authprog_wrapper(auth_prog: Path, auth_env: Mapping[str, str]) -> str:
    """The /etc/courier/authProg script: export ``auth_env``, exec ``auth_prog``."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in auth_env.items())
    return (
        "#!/bin/sh\n"
        "# Installed by the vmaild test harness (harness/courier/server.py); the original\n"
        "# is restored when the harness stops. authdaemond runs this as root.\n"
        f'{exports}exec {shlex.quote(str(auth_prog))} "$@"\n'
    )


def write_file(path: Path, text: str, mode: int, group: str | None = None) -> None:
    """Write a root-owned global file (replacing, never following, a symlink)."""
    if path.is_symlink():
        path.unlink()  # never write through a symlink into someone else's file
    path.write_text(text)
    os.chmod(path, mode)
    shutil.chown(path, "root", group or "root")


_MARKER = "##NAME: MARKER:0"
#: Used only if /etc/courier/authmysqlrc is missing (courier-authlib 0.71.4).
_FALLBACK_AUTHMYSQLRC = (
    "##VERSION: $Id: 01c3b327e4d5b8f4123500ce4c8d0ef7a690c10d-20210515150130$\n"
    f"{_MARKER}\n#\n# Do not remove this section from this configuration file. This section\n"
    "# must be present at the end of this file.\n"
)


def in_packaged_frame(settings: str, packaged: Path) -> str:
    """Put ``settings`` into the packaged file's frame.

    authmysql rejects a config file that lacks the sysconftool marker section
    at its end ("ERR: marker line not found in /etc/courier/authmysqlrc
    (probably forgot to run sysconftool after an upgrade)", and every login
    then fails). The tutorial edits the packaged file and so keeps it. We
    take the packaged file, drop its active settings (keeping comments, the
    ##VERSION line and the marker section) and insert ours before the marker.
    """
    if _MARKER in settings:
        return settings
    base = packaged.read_text(errors="replace") if packaged.exists() else ""
    if _MARKER not in base:
        base = _FALLBACK_AUTHMYSQLRC
    head, _, marker_tail = base.partition(_MARKER)
    kept = [line for line in head.splitlines() if not line.strip() or line.lstrip().startswith("#")]
    return "\n".join(kept) + "\n\n" + settings.rstrip("\n") + "\n\n" + _MARKER + marker_tail


def prepare_run_dirs() -> None:
    """What the package's tmpfiles.d entry does at boot (no systemd here)."""
    RUN_COURIER.mkdir(exist_ok=True)
    shutil.chown(RUN_COURIER, "root", "courier")
    os.chmod(RUN_COURIER, 0o775)
    AUTHDAEMON_DIR.mkdir(exist_ok=True)
    shutil.chown(AUTHDAEMON_DIR, "courier", "courier")
    os.chmod(AUTHDAEMON_DIR, 0o750)
