"""What every check shares: its result, its failure, and how values are read from rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..db import DatabaseError


class CheckFailed(Exception):
    """A check could not decide (database or disk error): its fail action answers.

    ``label`` names the part that failed, for the metric (``quota`` within ``recipient``).
    ``key`` names the ``[policy]`` query whose ``error`` it was (see schema_fit.py).
    """

    def __init__(
        self,
        message: str,
        label: str | None = None,
        *,
        key: str | None = None,
        error: DatabaseError | None = None,
    ):
        super().__init__(message)
        self.label = label
        self.key = key
        self.error = error


@dataclass(frozen=True, slots=True)
class Result:
    """``action`` None means "no objection": the next check runs, and if none objects
    the reply is DUNNO (never OK: Postfix's own restrictions still decide)."""

    label: str
    action: str | None = None


def flag(value: Any, default: bool = True) -> bool:
    """A database truth value: tinyint, BIT (bytes), 'Y'/'N' strings; NULL -> ``default``."""
    if value is None:
        return default
    if isinstance(value, bytes | bytearray):
        return any(value)
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "n", "no", "false", "off")
    return bool(value)


def number(value: Any) -> int:
    """A non-negative integer column; NULL, garbage and negatives count as 0 ("none")."""
    if value is None:
        return 0
    if isinstance(value, bytes | bytearray):
        value = value.decode("ascii", "replace")
    try:
        n = int(value)
    except (TypeError, ValueError):
        return 0
    return max(n, 0)


def text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return str(value)
