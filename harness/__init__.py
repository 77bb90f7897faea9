"""Test/benchmark/demo harness: real MariaDB, Postfix and Courier on loopback.

Not installed; import it with the repository root on PYTHONPATH. Every class
is a context manager that cleans up everything it started::

    from harness import MariaDB, Postfix, Courier, seed

    with MariaDB() as db:
        seed.load_seed(db)
        ...

Modules: ports (free ports, readiness waits), mariadb, seed (the tutorial's
schema, rows and .cf files), postfix, courier, maildir, and the helpers
procs/sysfiles/wait they share.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .courier import Courier
from .mariadb import MariaDB
from .ports import free_port, wait_for_port, wait_for_unix
from .postfix import Postfix

__all__ = [
    "Courier",
    "MariaDB",
    "Postfix",
    "free_port",
    "shared_tempdir",
    "wait_for_port",
    "wait_for_unix",
]


def shared_tempdir(prefix: str = "vmaild-") -> Path:
    """A temp dir that service users (postfix, mysql, vmail) can traverse.

    mkdtemp() and pytest's tmp_path are 0700 root, which hides files such as
    mysql: .cf tables or Maildirs from daemons that dropped privileges.
    The caller removes it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path
