"""Rendering results: aligned tables and key/value blocks for people, JSON for scripts.

Commands produce plain dicts (JSON types plus datetimes); the same dict is rendered as
text or serialised, so ``--json`` can never drift from what people see.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Formatter = Callable[[Any], str]


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: Formatter | None = None


def text(value: Any) -> str:
    """How a single value reads in a table."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, _dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ", ".join(text(v) for v in value) if value else "-"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    if not rows:
        return "(none)"
    cells = [[c.header for c in columns]]
    for row in rows:
        cells.append([(c.fmt or text)(row.get(c.key)) for c in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for line in cells:
        padded = [cell.ljust(w) for cell, w in zip(line[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*padded, line[-1]]).rstrip())
    return "\n".join(lines)


def record(fields: Sequence[tuple[str, Any]]) -> str:
    """One object as ``label  value`` lines with the labels aligned."""
    width = max((len(label) for label, _ in fields), default=0)
    return "\n".join(f"{label.ljust(width)}  {text(value)}".rstrip() for label, value in fields)


def _json_default(value: Any) -> Any:
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=_json_default)
