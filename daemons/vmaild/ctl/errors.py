"""How a vmailctl command ends: its exit status, and the two errors a command may expect."""

from __future__ import annotations

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL, as postmap and the Postfix tools use it


class Refused(Exception):
    """The command cannot be done as asked; str() is the one-line reason (exit 1)."""

    label = "refused"


class TempFail(Exception):
    """The answer is unknown right now (daemon or database unavailable): exit 75."""
