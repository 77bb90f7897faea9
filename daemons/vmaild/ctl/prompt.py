"""Reading a new password: from the terminal (asked twice) or the first line of stdin.

Never from argv: a command line is visible to every local user in ``ps`` and lands in
shell history.
"""

from __future__ import annotations

import getpass
from typing import TextIO

from .errors import Refused


def read_password(stdin: TextIO, from_stdin: bool, who: str) -> str:
    if from_stdin:
        line = stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise Refused("no password on the first line of standard input")
    else:
        if not stdin.isatty():
            raise Refused("standard input is not a terminal: use --password-stdin")
        password = getpass.getpass(f"New password for {who}: ")
        if not password:
            raise Refused("empty password")
        if getpass.getpass("Again: ") != password:
            raise Refused("the two passwords differ")
    if any(ord(c) < 32 for c in password):
        raise Refused("the password contains control characters")
    return password


def hashed(password: str, scheme: str, rounds: int = 0) -> str:
    """The hash vmaild itself would store: ``[auth] password_scheme`` and
    ``password_rounds`` (0: passlib's default cost)."""
    from ..passwords import hash_password  # passlib's handlers load slowly; only when hashing

    try:
        return hash_password(password, scheme, rounds)
    except (ValueError, RuntimeError) as e:  # unknown scheme, missing hash backend
        raise Refused(f"cannot hash the password: {e}") from None
