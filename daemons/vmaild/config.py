"""The INI configuration file (docs/DESIGN.md, "Configuration: one INI file").

Every section is a frozen dataclass; the parser reads the dataclass fields, so adding a
setting is one typed line with a default. A mistake stops start-up with one line naming
the file, the section and the key: ``/etc/vmaild/vmaild.conf: [map aliases] tcp: bad port``.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import expansions
from .sections import (  # noqa: F401 - re-exported: callers import them from here
    AuthConfig,
    CacheConfig,
    ControlConfig,
    DatabaseConfig,
    DatabaseHost,
    Listen,
    LogConfig,
    LookupConfig,
    MailboxConfig,
    MapConfig,
    MetricsConfig,
    PolicyConfig,
    SocketmapConfig,
)

DEFAULT_PATH = "/etc/vmaild/vmaild.conf"
ENV_VAR = "VMAILD_CONFIG"
MAP_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ConfigError(Exception):
    """A configuration mistake; str() is the one line an admin sees."""

    def __init__(self, path: str, section: str | None, key: str | None, problem: str):
        where = path
        if section is not None:
            where += f": [{section}]"
        if key is not None:
            where += f" {key}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Config:
    path: str
    database: DatabaseConfig
    cache: CacheConfig = CacheConfig()
    lookup: LookupConfig = LookupConfig()
    maps: dict[str, MapConfig] = field(default_factory=dict)
    socketmap: SocketmapConfig = SocketmapConfig()
    policy: PolicyConfig = PolicyConfig()
    auth: AuthConfig = AuthConfig()
    metrics: MetricsConfig = MetricsConfig()
    control: ControlConfig = ControlConfig()
    mailbox: MailboxConfig = MailboxConfig()
    log: LogConfig = LogConfig()

    def delimiter_for(self, m: MapConfig) -> str:
        if m.recipient_delimiter is None:
            return self.lookup.recipient_delimiter
        return m.recipient_delimiter


SECTIONS: dict[str, type] = {
    "database": DatabaseConfig,
    "cache": CacheConfig,
    "lookup": LookupConfig,
    "socketmap": SocketmapConfig,
    "policy": PolicyConfig,
    "auth": AuthConfig,
    "metrics": MetricsConfig,
    "control": ControlConfig,
    "mailbox": MailboxConfig,
    "log": LogConfig,
}


def default_path() -> str:
    return os.environ.get(ENV_VAR) or DEFAULT_PATH


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the configuration; raise ConfigError on the first mistake."""
    p = str(path) if path is not None else default_path()
    try:
        text = Path(p).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(p, None, None, f"cannot read: {getattr(e, 'strerror', None) or e}") from e
    return parse(text, p)


def parse(text: str, path: str = "<string>") -> Config:
    # Inline comments after " ;" or " #" as in DESIGN.md's example; no interpolation, so
    # a query's '%s' stays as written.
    cp = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";", "#"), strict=True,
        empty_lines_in_values=False,
    )
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        cp.read_string(text, source=path)
    except configparser.Error as e:
        raise ConfigError(path, None, None, " ".join(str(e).split())) from e

    sections: dict[str, Any] = {}
    maps: dict[str, MapConfig] = {}
    for name in cp.sections():
        items = dict(cp.items(name))
        if name.startswith("map ") or name == "map":
            map_name = name[4:].strip()
            if not MAP_NAME.match(map_name):
                raise ConfigError(path, name, None, "map name must be 1-64 of A-Z a-z 0-9 _ . -")
            m = _build(MapConfig, items, path, name, {"name": map_name})
            _check_map(m, path, name)
            maps[map_name] = m
        elif name in SECTIONS:
            sections[name] = _build(SECTIONS[name], items, path, name, {})
        else:
            raise ConfigError(path, name, None, "unknown section")

    for name, m in maps.items():
        for other in m.chain:
            if other not in maps or other == name:
                raise ConfigError(path, f"map {name}", "chain",
                                  f"{other!r} is not another [map] section")
    if "database" not in sections:
        raise ConfigError(path, "database", None, "missing section")
    db = _finish_database(sections["database"], path)
    sections["database"] = db
    _check_listeners(path, maps, sections)
    log = sections.get("log")
    if log is not None:
        if log.target not in ("stderr", "syslog"):
            raise ConfigError(path, "log", "target", "must be stderr or syslog")
        if log.level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(path, "log", "level", "must be debug, info, warning or error")
    return Config(path=path, maps=maps, **sections)


def _build(cls: type, items: dict[str, str], path: str, section: str, extra: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in extra}
    values: dict[str, Any] = dict(extra)
    for key, raw in items.items():
        f = fields.get(key)
        if f is None:
            raise ConfigError(path, section, key, "unknown key")
        try:
            values[key] = _convert(f, raw.strip())
        except ValueError as e:
            raise ConfigError(path, section, key, str(e)) from None
    try:
        return cls(**values)
    except ValueError as e:
        # A section's own validation (__post_init__) names the key in ``e.key``.
        raise ConfigError(path, section, getattr(e, "key", None),
                          getattr(e, "problem", str(e))) from None


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    t = str(f.type)
    if t.startswith("tuple[str"):
        return tuple(x for x in raw.replace(",", " ").split() if x)
    if "DatabaseHost" in t:
        return tuple(parse_db_host(h) for h in raw.replace(",", " ").split())
    if "Listen" in t:
        return parse_listen(raw) if raw else None
    if t.startswith("bool"):
        return parse_bool(raw)
    if t.startswith("int") or t.startswith("float"):
        if raw == "" and "None" in t:
            return None
        try:
            value: float = int(raw) if t.startswith("int") else float(raw)
        except ValueError:
            raise ValueError(f"not a number: {raw!r}") from None
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if lo is not None and value < lo or hi is not None and value > hi:
            raise ValueError(f"{raw} is out of range ({lo}..{hi if hi is not None else 'any'})")
        return value
    return raw


def parse_bool(raw: str) -> bool:
    v = raw.lower()
    if v in ("yes", "true", "on", "1"):
        return True
    if v in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"expected yes or no, not {raw!r}")


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"bad port {text!r} (1-65535)")
    return int(text)


def parse_listen(raw: str) -> Listen:
    if raw.startswith("unix:"):
        p = raw[5:]
        if not p.startswith("/"):
            raise ValueError(f"unix socket path must be absolute: {raw!r}")
        return Listen(path=p)
    if raw.startswith("["):
        host, sep, port = raw[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [ipv6]:port, not {raw!r}")
    else:
        host, sep, port = raw.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected host:port or unix:/path, not {raw!r}")
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


def _finish_database(db: DatabaseConfig, path: str) -> DatabaseConfig:
    for key in ("hosts", "user", "dbname"):
        if not getattr(db, key):
            raise ConfigError(path, "database", key, "missing (required)")
    if db.password and db.password_file:
        raise ConfigError(path, "database", "password_file",
                          "set password or password_file, not both")
    if db.password_file:
        try:
            secret = Path(db.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            problem = getattr(e, "strerror", None) or str(e)
            raise ConfigError(path, "database", "password_file",
                              f"cannot read {db.password_file}: {problem}") from e
        return dataclasses.replace(db, password=secret)
    return db


def _check_map(m: MapConfig, path: str, section: str) -> None:
    if not m.query:
        raise ConfigError(path, section, "query", "missing (required)")
    try:
        expansions.compile_query(m.query)
    except expansions.QueryError as e:
        raise ConfigError(path, section, "query", str(e)) from None
    if m.recipient_delimiter is not None and any(c in m.recipient_delimiter for c in "@ \t"):
        raise ConfigError(path, section, "recipient_delimiter", "must not contain @ or spaces")


def _check_listeners(path: str, maps: dict[str, MapConfig], sections: dict[str, Any]) -> None:
    """Two listeners on one address would fail at bind time; say which keys clash now."""
    seen: dict[str, str] = {}
    places = [(f"map {n}", "tcp", m.tcp) for n, m in maps.items()]
    places += [(s, "listen", getattr(sections.get(s), "listen", None))
               for s in ("socketmap", "policy", "auth", "metrics", "control")]
    for section, key, listen in places:
        if listen is None:
            continue
        if section.startswith("map ") and listen.is_unix:
            raise ConfigError(path, section, key, "Postfix tcp: tables are TCP only")
        where = f"[{section}] {key}"
        if str(listen) in seen:
            raise ConfigError(path, section, key,
                              f"{listen} is already used by {seen[str(listen)]}")
        seen[str(listen)] = where
    auth = sections.get("auth")
    if auth is not None and auth.query:
        try:
            expansions.compile_query(auth.query)
        except expansions.QueryError as e:
            raise ConfigError(path, "auth", "query", str(e)) from None
