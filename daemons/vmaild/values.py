"""The values a setting of vmaild.conf can take, how one is read, and the error for a bad one.

A leaf module: the sections (``sections.py``), the parser (``config.py``) and
vmaild-authpipe, which reads ``[auth] listen`` on its own, all build on it.

:func:`convert` reads one raw string into the type a section field's hint names, so adding
a setting of a known type is one typed line in ``sections.py``.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin


class ConfigError(ValueError):
    """A configuration mistake; str() is the one line an admin sees:
    ``/etc/vmaild/vmaild.conf: [map aliases] tcp: bad port '99999' (1-65535)``.

    The one error type for a bad setting. It is raised where the mistake is found, with
    what is known there (a value parser knows the problem, a section's check the key too),
    and completed by the parser with the file and the section (:meth:`within`). A
    ValueError, so that code reading one value (vmaild-authpipe) can catch it as such.
    """

    def __init__(
        self,
        problem: str,
        *,
        key: str | None = None,
        section: str | None = None,
        path: str | None = None,
    ):
        self.problem = problem
        self.key = key
        self.section = section
        self.path = path
        super().__init__(self._line())

    def _line(self) -> str:
        where = self.path or ""
        if self.section is not None:
            where += f": [{self.section}]" if where else f"[{self.section}]"
        if self.key is not None:
            where += f" {self.key}" if where else self.key
        return f"{where}: {self.problem}" if where else self.problem

    def within(self, path: str, section: str | None = None, key: str | None = None) -> ConfigError:
        """This mistake located in ``path``; ``section`` and ``key`` name where, unless the
        error already does."""
        return ConfigError(
            self.problem,
            path=path,
            section=self.section if self.section is not None else section,
            key=self.key if self.key is not None else key,
        )


@dataclass(frozen=True, slots=True)
class Listen:
    """A listening address: ``host:port``, ``[v6]:port`` or ``unix:/path``."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DatabaseHost:
    """One entry of ``[database] hosts``, like Postfix mysql_table(5) ``hosts``."""

    host: str | None = None
    port: int = 3306
    socket: str | None = None

    def __str__(self) -> str:
        return f"unix:{self.socket}" if self.socket else f"{self.host}:{self.port}"


def parse_bool(raw: str) -> bool:
    v = raw.lower()
    if v in ("yes", "true", "on", "1"):
        return True
    if v in ("no", "false", "off", "0"):
        return False
    raise ConfigError(f"expected yes or no, not {raw!r}")


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"bad port {text!r} (1-65535)")
    return int(text)


def parse_listen(raw: str) -> Listen:
    if raw.startswith("unix:"):
        p = raw[5:]
        if not p.startswith("/"):
            raise ConfigError(f"unix socket path must be absolute: {raw!r}")
        return Listen(path=p)
    if raw.startswith("["):
        host, sep, port = raw[1:].partition("]:")
        if not sep:
            raise ConfigError(f"expected [ipv6]:port, not {raw!r}")
    else:
        host, sep, port = raw.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"expected host:port or unix:/path, not {raw!r}")
    return Listen(host=host, port=_port(port))


def parse_db_host(raw: str) -> DatabaseHost:
    if raw.startswith("unix:"):
        return DatabaseHost(socket=raw[5:])
    if raw.startswith("inet:"):
        raw = raw[5:]
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        return DatabaseHost(host=host, port=_port(rest[1:]) if rest.startswith(":") else 3306)
    host, sep, port = raw.partition(":")
    return DatabaseHost(host=host, port=_port(port) if sep else 3306)


def _number(kind: type[int] | type[float], raw: str, bounds: Mapping[str, Any]) -> float:
    try:
        value: float = kind(raw)
    except ValueError:
        raise ConfigError(f"not a number: {raw!r}") from None
    lo, hi = bounds.get("min"), bounds.get("max")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"{raw} is out of range ({lo}..{hi if hi is not None else 'any'})")
    return value


#: How a raw value becomes each type a field (or a tuple field's items) may have.
PARSERS: dict[object, Callable[[str], Any]] = {
    str: lambda raw: raw,
    bool: parse_bool,
    Listen: parse_listen,
    DatabaseHost: parse_db_host,
}


def convert(hint: object, raw: str, bounds: Mapping[str, Any] | None = None) -> Any:
    """``raw`` (already stripped) as the type ``hint`` names.

    ``X | None``: an empty value is None, except for text, where it is the empty string
    (``recipient_delimiter =`` switches extension stripping off). ``tuple[X, ...]``:
    items separated by commas or spaces. ``int``/``float``: within ``bounds`` ("min",
    "max": a field's metadata). Raises ConfigError with the problem.
    """
    base, optional = _without_none(hint)
    if optional and raw == "" and base is not str:
        return None
    if get_origin(base) is tuple:
        item = get_args(base)[0]
        return tuple(_parser(item)(part) for part in raw.replace(",", " ").split())
    if base is int or base is float:
        return _number(base, raw, bounds or {})
    return _parser(base)(raw)


def _without_none(hint: object) -> tuple[object, bool]:
    if get_origin(hint) not in (Union, types.UnionType):
        return hint, False
    args = [a for a in get_args(hint) if a is not type(None)]
    if len(args) != 1:
        raise TypeError(f"no parser for {hint!r}: one type or one type and None")
    return args[0], len(args) < len(get_args(hint))


def _parser(hint: object) -> Callable[[str], Any]:
    try:
        return PARSERS[hint]
    except KeyError:
        raise TypeError(f"no parser for settings of type {hint!r}") from None
