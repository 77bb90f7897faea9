"""A scratch directory the harness's services can read after they dropped privileges."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def shared_tempdir(prefix: str = "vmaild-") -> Path:
    """A temp dir that service users (postfix, mysql, vmail) can traverse.

    mkdtemp() and pytest's tmp_path are 0700 root, which hides files such as
    mysql: .cf tables or Maildirs from daemons that dropped privileges.
    The caller removes it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path
