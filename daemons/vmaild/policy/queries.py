"""Configurable SQL with named parameters: ``WHERE email = %(address)s``.

The policy queries need several values (a login and a sender, a bucket number...), so they
use named placeholders instead of the maps' Postfix expansions. Each placeholder becomes a
bound ``%s`` parameter; request data is never pasted into SQL text. A placeholder written
inside quotes, the way the seed's queries quote ``'%s'``, is accepted and the quotes dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_PLACEHOLDER = re.compile(r"'%\((\w+)\)s'|\"%\((\w+)\)s\"|%\((\w+)\)s")


@dataclass(frozen=True)
class NamedQuery:
    """SQL in pymysql's positional ``format`` style, plus the name behind each ``%s``."""

    sql: str
    names: tuple[str, ...]

    def bind(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(values[n] for n in self.names)


def compile_named(sql: str, allowed: frozenset[str] | set[str]) -> NamedQuery:
    """Compile ``sql``; raise ValueError naming an unknown placeholder or a stray ``%``."""
    out: list[str] = []
    names: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(sql):
        out.append(_escape(sql[pos : m.start()]))
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in allowed:
            raise ValueError(
                f"unknown parameter %({name})s (known: "
                f"{', '.join('%(' + a + ')s' for a in sorted(allowed))})"
            )
        out.append("%s")
        names.append(name)
        pos = m.end()
    out.append(_escape(sql[pos:]))
    if not names:
        # pymysql only applies '%' formatting when there are parameters (db.py passes
        # None for none), so a query without placeholders is sent as written.
        return NamedQuery(sql.strip(), ())
    return NamedQuery("".join(out).strip(), tuple(names))


def _escape(text: str) -> str:
    # Any other '%' is SQL (LIKE 'a%'); pymysql's format style needs it doubled.
    if re.search(r"%\(", text):
        raise ValueError("malformed placeholder: write %(name)s")
    return text.replace("%", "%%")
