"""Quota sizes as admins write them (``500M``, ``2G``, ``0``) and back.

Multiples are binary (K = 1024), as in Courier's and Dovecot's quota settings, so that
``1G`` here is the same number of bytes the maildir++ ``maildirsize`` file will show.
0 means "no quota", which is also what the ``quota_bytes`` column stores for none.
"""

from __future__ import annotations

import re

UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
MAX_BYTES = 2**64 - 1  # bigint unsigned
MAX_MESSAGES = 2**32 - 1  # int unsigned
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?$")
_UNLIMITED = {"none", "unlimited", "no"}


def parse_size(text: str) -> int:
    """Bytes for ``text``; raises ValueError with a message fit for argparse."""
    raw = text.strip().upper()
    if raw.lower() in _UNLIMITED:
        return 0
    m = _SIZE.match(raw)
    if m is None:
        raise ValueError(
            f"not a size: {text!r} (use bytes or a number with K, M, G or T, "
            f"like 500M; 0 for no quota)"
        )
    number, unit = m.groups()
    if "." in number:
        value = int(float(number) * UNITS[unit])
    else:
        value = int(number) * UNITS[unit]
    if value > MAX_BYTES:
        raise ValueError(f"size {text!r} is too large")
    return value


def parse_count(text: str) -> int:
    """A message-count quota: a whole number, 0 for none."""
    raw = text.strip()
    if raw.lower() in _UNLIMITED:
        return 0
    if not raw.isdigit() or int(raw) > MAX_MESSAGES:
        raise ValueError(f"not a message count: {text!r} (0 to {MAX_MESSAGES}; 0 for none)")
    return int(raw)


def format_size(value: int) -> str:
    """The shortest exact form (``500M``), bytes when no unit divides it, '-' for none."""
    if value == 0:
        return "-"
    for unit in ("T", "G", "M", "K"):
        if value % UNITS[unit] == 0:
            return f"{value // UNITS[unit]}{unit}"
    return str(value)


def format_count(value: int) -> str:
    return "-" if value == 0 else str(value)
