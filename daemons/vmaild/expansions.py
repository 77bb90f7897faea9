"""Postfix mysql_table(5) query expansions turned into bound parameters.

The seed's queries are reused verbatim: ``WHERE email='%s'``. Postfix pastes the SQL-quoted
key into the text; vmaild never does. Each quoted SQL literal that holds expansions becomes
one ``%s`` placeholder whose parameter is that literal's text with the expansions filled in,
and a bare expansion becomes a placeholder of its own. A key like ``a'b@x`` or ``%s@x`` is
therefore data, never SQL.

Expansions (mysql_table(5)):
  %s  the whole key                 %u  the local part (the whole key when it has no '@')
  %d  the domain part               %1..%9  domain labels, %1 the top-level one
  %S %U %D  same as lower case      %%  a literal '%'
Postfix suppresses the query (the answer is "not found") when %u's local part is empty,
when %d is used and the key has no domain, and when a %N label does not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

EXPANSIONS = frozenset("sudSUD123456789")


class QueryError(ValueError):
    """The query text itself is wrong (a configuration error)."""


class Suppressed(Exception):
    """Postfix would not run the query for this key; the lookup is "not found"."""


def _local(key: str) -> str:
    at = key.rfind("@")
    local = key[:at] if at >= 0 else key
    if not local:
        raise Suppressed("empty local part")
    return local


def _domain(key: str) -> str:
    at = key.rfind("@")
    if at < 0 or at == len(key) - 1:
        raise Suppressed("key has no domain")
    return key[at + 1 :]


def _label(n: int) -> Callable[[str], str]:
    def expand(key: str) -> str:
        labels = _domain(key).split(".")
        if n > len(labels):
            raise Suppressed(f"domain has no label %{n}")
        return labels[-n]

    return expand


def _expander(c: str) -> Callable[[str], str]:
    c = c.lower()
    if c == "s":
        return lambda key: key
    if c == "u":
        return _local
    if c == "d":
        return _domain
    return _label(int(c))


# A parameter is a template: literal text pieces and expanders, concatenated per key.
Piece = str | Callable[[str], str]


@dataclass(frozen=True)
class CompiledQuery:
    """SQL in pymysql's ``format`` paramstyle plus one template per placeholder."""

    sql: str
    params: tuple[tuple[Piece, ...], ...]

    def bind(self, key: str) -> tuple[str, ...]:
        """The parameters for ``key``; raises Suppressed when Postfix would skip the query."""
        return tuple(
            "".join(p if isinstance(p, str) else p(key) for p in template)
            for template in self.params
        )


def compile_query(query: str) -> CompiledQuery:
    sql: list[str] = []
    params: list[tuple[Piece, ...]] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c in ("'", '"'):
            end, text = _read_literal(query, i)
            pieces = _template(text)
            if any(not isinstance(p, str) for p in pieces):
                sql.append("%s")
                params.append(pieces)
            else:
                # Postfix's %% is one '%'; pymysql's format style needs it doubled again.
                sql.append(query[i:end].replace("%%", "%").replace("%", "%%"))
            i = end
        elif c == "%":
            nxt = query[i + 1] if i + 1 < n else ""
            if nxt == "%":
                sql.append("%%")
            elif nxt in EXPANSIONS:
                sql.append("%s")
                params.append((_expander(nxt),))
            else:
                raise QueryError(f"invalid expansion %{nxt} (use %s, %u, %d, %1-%9 or %%)")
            i += 2
        else:
            sql.append(c)
            i += 1
    if not params:
        raise QueryError("query has no %s, %u or %d expansion for the key")
    return CompiledQuery("".join(sql).strip(), tuple(params))


def _read_literal(query: str, start: int) -> tuple[int, str]:
    """Return (index after the closing quote, the literal's unescaped text)."""
    quote = query[start]
    out: list[str] = []
    i = start + 1
    while i < len(query):
        c = query[i]
        if c == "\\" and i + 1 < len(query):
            out.append(query[i : i + 2])  # keep escapes as written; they are literal text
            i += 2
            continue
        if c == quote:
            if query[i + 1 : i + 2] == quote:  # '' inside '...' is one quote
                out.append(quote)
                i += 2
                continue
            return i + 1, "".join(out)
        out.append(c)
        i += 1
    raise QueryError(f"unterminated {quote} string in query")


def _template(text: str) -> tuple[Piece, ...]:
    pieces: list[Piece] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%" and i + 1 < len(text) and text[i + 1] in EXPANSIONS:
            if buf:
                pieces.append("".join(buf))
                buf = []
            pieces.append(_expander(text[i + 1]))
            i += 2
        elif c == "%" and text[i + 1 : i + 2] == "%":
            buf.append("%")
            i += 2
        elif c == "%":
            raise QueryError(f"invalid expansion %{text[i + 1 : i + 2]} inside a quoted string")
        else:
            buf.append(c)
            i += 1
    if buf:
        pieces.append("".join(buf))
    return tuple(pieces)
