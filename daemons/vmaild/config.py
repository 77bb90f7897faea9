"""The INI configuration file (docs/DESIGN.md, "Configuration: one INI file").

Every section is a frozen dataclass (``sections.py``); the parser reads the dataclass
fields and their type hints (``values.convert``), so adding a setting is one typed line
with a default. Each section checks itself once built; what spans sections (map chains,
two listeners on one address) is checked here. A mistake stops start-up with one line
naming the file, the section and the key: ``/etc/vmaild/vmaild.conf: [map aliases] tcp:
bad port``.

A leaf of the package, like the modules it imports: it never loads the database layer.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sections import (
    CacheConfig,
    ControlConfig,
    DatabaseConfig,
    LogConfig,
    LookupConfig,
    MailboxConfig,
    MapConfig,
    MetricsConfig,
    PolicyConfig,
    Section,
    SocketmapConfig,
)
from .sections_logins import AuthConfig, SaslConfig
from .values import ConfigError, convert

DEFAULT_PATH = "/etc/vmaild/vmaild.conf"
ENV_VAR = "VMAILD_CONFIG"
MAP_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


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
    sasl: SaslConfig = SaslConfig()
    metrics: MetricsConfig = MetricsConfig()
    control: ControlConfig = ControlConfig()
    mailbox: MailboxConfig = MailboxConfig()
    log: LogConfig = LogConfig()

    def delimiter_for(self, m: MapConfig) -> str:
        if m.recipient_delimiter is None:
            return self.lookup.recipient_delimiter
        return m.recipient_delimiter


SECTIONS: dict[str, type[Section]] = {
    "database": DatabaseConfig,
    "cache": CacheConfig,
    "lookup": LookupConfig,
    "socketmap": SocketmapConfig,
    "policy": PolicyConfig,
    "auth": AuthConfig,
    "sasl": SaslConfig,
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
        raise ConfigError(f"cannot read: {getattr(e, 'strerror', None) or e}", path=p) from e
    return parse(text, p)


def parse(text: str, path: str = "<string>") -> Config:
    # Inline comments after " ;" or " #" as in DESIGN.md's example; no interpolation, so
    # a query's '%s' stays as written.
    cp = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=(";", "#"),
        strict=True,
        empty_lines_in_values=False,
    )
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        cp.read_string(text, source=path)
    except configparser.Error as e:
        raise ConfigError(" ".join(str(e).split()), path=path) from e

    sections: dict[str, Any] = {}
    maps: dict[str, MapConfig] = {}
    for name in cp.sections():
        items = dict(cp.items(name))
        if name.startswith("map ") or name == "map":
            map_name = name[4:].strip()
            if not MAP_NAME.match(map_name):
                raise ConfigError(
                    "map name must be 1-64 of A-Z a-z 0-9 _ . -", path=path, section=name
                )
            maps[map_name] = _build(MapConfig, items, path, name, {"name": map_name})
        elif name in SECTIONS:
            sections[name] = _build(SECTIONS[name], items, path, name, {})
        else:
            raise ConfigError("unknown section", path=path, section=name)

    # What spans sections: each one has checked itself when it was built.
    for name, m in maps.items():
        for other in m.chain:
            if other not in maps or other == name:
                raise ConfigError(
                    f"{other!r} is not another [map] section",
                    path=path,
                    section=f"map {name}",
                    key="chain",
                )
    if "database" not in sections:
        raise ConfigError("missing section", path=path, section="database")
    sections["database"] = _read_password_file(sections["database"], path)
    _check_listeners(path, maps, sections)
    _check_sasl(path, sections)
    return Config(path=path, maps=maps, **sections)


def _build(
    cls: type[Section], items: dict[str, str], path: str, section: str, extra: dict[str, Any]
) -> Any:
    """The section ``cls`` from its keys, each read as its field's type hint says, then
    checked (``Section.check``)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in extra}
    values: dict[str, Any] = dict(extra)
    for key, raw in items.items():
        f = fields.get(key)
        if f is None:
            raise ConfigError("unknown key", path=path, section=section, key=key)
        try:
            values[key] = convert(hints[key], raw.strip(), f.metadata)
        except ConfigError as e:
            raise e.within(path, section, key) from None
    built = cls(**values)
    try:
        built.check()
    except ConfigError as e:
        raise e.within(path, section) from None
    return built


def _read_password_file(db: DatabaseConfig, path: str) -> DatabaseConfig:
    if not db.password_file:
        return db
    try:
        secret = Path(db.password_file).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        problem = getattr(e, "strerror", None) or str(e)
        raise ConfigError(
            f"cannot read {db.password_file}: {problem}",
            path=path,
            section="database",
            key="password_file",
        ) from e
    return dataclasses.replace(db, password=secret)


def _check_listeners(path: str, maps: dict[str, MapConfig], sections: dict[str, Any]) -> None:
    """Two listeners on one address would fail at bind time; say which keys clash now."""
    seen: dict[str, str] = {}
    places = [(f"map {n}", "tcp", m.tcp) for n, m in maps.items()]
    places += [
        (s, "listen", getattr(sections.get(s), "listen", None))
        for s in ("socketmap", "policy", "auth", "sasl", "metrics", "control")
    ]
    for section, key, listen in places:
        if listen is None:
            continue
        if str(listen) in seen:
            raise ConfigError(
                f"{listen} is already used by {seen[str(listen)]}",
                path=path,
                section=section,
                key=key,
            )
        seen[str(listen)] = f"[{section}] {key}"


def _check_sasl(path: str, sections: dict[str, Any]) -> None:
    """[sasl] logs in with [auth]'s settings: judge them even without [auth] listen."""
    sasl, auth = sections.get("sasl"), sections.get("auth", AuthConfig())
    if sasl is None or sasl.listen is None or auth.listen is not None:
        return
    try:
        auth.check_login_settings()
    except ConfigError as e:
        raise e.within(path, "auth") from None
