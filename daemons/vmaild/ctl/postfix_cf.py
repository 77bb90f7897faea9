"""Reading Postfix ``mysql:`` table files (mysql_table(5)) such as the seed's four.

Syntax as Postfix reads it: ``name = value`` lines; a line starting with whitespace
continues the previous one (the seed's mailboxes query spans two lines); a line whose
first non-blank character is ``#`` is a comment, and so are empty lines. Later
settings override earlier ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import MAP_NAME

# Settings vmaild carries over, and the legacy ones that build a query (Postfix < 2.2).
DATABASE_KEYS = ("hosts", "user", "password", "dbname")
LEGACY_KEYS = ("table", "select_field", "where_field", "additional_conditions")
# Known settings that vmaild does not reproduce: worth a warning, not a refusal.
UNSUPPORTED = (
    "result_format",
    "domain",
    "expansion_limit",
    "option_file",
    "option_group",
    "tls_cert_file",
    "tls_key_file",
    "tls_CAfile",
    "tls_CApath",
    "tls_ciphers",
    "tls_verify_cert",
    "require_result_set",
    "idle_interval",
    "retry_interval",
)
_PREFIXES = (
    "mysql-virtual_",
    "mysql-virtual-",
    "mysql_virtual_",
    "mysql-",
    "mysql_",
    "virtual_",
    "virtual-",
)


class CfError(ValueError):
    """A .cf file that cannot be used; str() names the file and the problem."""


@dataclass
class MysqlTable:
    path: str
    settings: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    @property
    def query(self) -> str:
        return self.settings["query"]

    def database(self) -> dict[str, str]:
        """The connection settings, normalised for comparison between files."""
        db = {k: self.settings.get(k, "") for k in DATABASE_KEYS}
        db["hosts"] = " ".join(db["hosts"].replace(",", " ").split())
        return db


def parse_text(text: str, path: str = "<string>") -> dict[str, str]:
    settings: dict[str, str] = {}
    current: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            if current is None:
                raise CfError(f"{path}:{number}: continuation line without a setting before it")
            settings[current] = f"{settings[current]} {stripped}".strip()
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name or not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise CfError(f"{path}:{number}: expected 'name = value'")
        current = name
        settings[name] = value.strip()
    return settings


def load(path: str) -> MysqlTable:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CfError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    settings = parse_text(text, path)
    table = MysqlTable(path, settings)
    if not settings.get("query"):
        legacy = _legacy_query(settings)
        if legacy is None:
            raise CfError(f"{path}: no query (and no table/select_field/where_field)")
        settings["query"] = legacy
        table.warnings.append(
            f"{path}: built the query from the legacy table/select_field/where_field settings"
        )
    for key in ("hosts", "user", "dbname"):
        if not settings.get(key):
            raise CfError(f"{path}: no {key} setting")
    for key in settings:
        if key in UNSUPPORTED and not (key == "result_format" and settings[key] == "%s"):
            table.warnings.append(f"{path}: {key} is not supported by vmaild and is ignored")
        elif key not in (*DATABASE_KEYS, *LEGACY_KEYS, "query", *UNSUPPORTED):
            table.warnings.append(f"{path}: unknown setting {key} ignored")
    return table


def _legacy_query(s: dict[str, str]) -> str | None:
    if not all(s.get(k) for k in ("table", "select_field", "where_field")):
        return None
    extra = f" {s['additional_conditions']}" if s.get("additional_conditions") else ""
    return f"SELECT {s['select_field']} FROM {s['table']} WHERE {s['where_field']}='%s'{extra}"


def map_name(path: str) -> str:
    """``/etc/postfix/mysql-virtual_domains.cf`` -> ``domains``."""
    stem = Path(path).name
    if stem.endswith(".cf"):
        stem = stem[:-3]
    for prefix in _PREFIXES:
        if stem.startswith(prefix) and len(stem) > len(prefix):
            stem = stem[len(prefix) :]
            break
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:64]
    if not MAP_NAME.match(name):
        raise CfError(f"{path}: cannot derive a map name from the file name")
    return name
