"""The INI configuration file (shared/docs/DESIGN.md, "Configuration: one INI file").

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


# Field metadata keys: "min"/"max" bound numbers, "required" marks keys without a default.
def _num(default: Any, lo: float, hi: float | None = None) -> Any:
    return field(default=default, metadata={"min": lo, "max": hi})


@dataclass(frozen=True)
class DatabaseConfig:
    hosts: tuple[DatabaseHost, ...] = ()
    user: str = ""
    password: str = field(default="", repr=False)
    password_file: str = ""
    dbname: str = ""
    connect_timeout: float = _num(2.0, 0.1, 60)
    query_timeout: float = _num(2.0, 0.1, 600)
    pool_size: int = _num(8, 1, 256)
    # How long a host that failed to connect is skipped in favour of the next one.
    retry_interval: float = _num(10.0, 0, 3600)


@dataclass(frozen=True)
class CacheConfig:
    ttl: float = _num(60.0, 0)
    negative_ttl: float = _num(10.0, 0)
    stale_ttl: float = _num(3600.0, 0)
    max_entries: int = _num(1_000_000, 0)
    # Changes made with vmailctl (or by hand, through the schema's triggers) bump a version
    # row; the daemon polls it and flushes the cache when it moves. 0 switches polling off.
    check_interval: float = _num(1.0, 0, 3600)
    version_query: str = "SELECT version FROM vmaild_changes WHERE id = 1"


@dataclass(frozen=True)
class LookupConfig:
    recipient_delimiter: str = "+"


@dataclass(frozen=True)
class MapConfig:
    name: str = ""
    query: str = ""
    tcp: Listen | None = None
    catchall: bool = False
    # None means "as in [lookup]"; an empty string switches extension stripping off.
    recipient_delimiter: str | None = None
    fold_case: bool = True
    # Other maps whose queries are tried, in order, for each key form before the next form
    # (full address, then without extension, then @domain) -- what Postfix does across
    # the tables of one list for mysql: tables. ``chain = email2email`` on the aliases map
    # keeps a catch-all from swallowing mail for existing mailboxes, as in the seed.
    chain: tuple[str, ...] = ()
    ttl: float | None = _num(None, 0)
    negative_ttl: float | None = _num(None, 0)


@dataclass(frozen=True)
class SocketmapConfig:
    listen: Listen | None = None


@dataclass(frozen=True)
class PolicyConfig:
    """``[policy]``: the Postfix access-policy service (vmaild/policy/, README "Policy").

    Queries take named parameters (``%(address)s``...); actions are Postfix access(5)
    actions. A ``*_fail_action`` answers when a check cannot decide (database down, too
    slow): ``DUNNO`` (pass), a ``DEFER``/``DEFER_IF_PERMIT``/``4NN`` form, or ``close`` (no
    reply: Postfix retries once, then uses its own ``default_action``); never a reject.
    """

    listen: Listen | None = None
    max_request_bytes: int = _num(16384, 1024, 1 << 20)
    # Well under the snippet's timeout=5s, so Postfix always gets our answer.
    request_timeout: float = _num(3.0, 0.05, 60)
    # None means "as in [lookup]"; an empty string switches extension stripping off.
    recipient_delimiter: str | None = None
    # Recipient state and quota, at RCPT. Columns: active, domain active, quota_bytes,
    # quota_messages, maildir (later columns may be left out; NULL means active / none).
    recipient_check: bool = True
    quota_check: bool = True
    recipient_query: str = (
        "SELECT u.active, d.active, u.quota_bytes, u.quota_messages, u.maildir FROM users u "
        "LEFT JOIN domains d ON d.domain = %(domain)s WHERE u.email = %(address)s")
    disabled_action: str = "550 5.2.1 Mailbox disabled"
    quota_action: str = "452 4.2.2 Mailbox full"
    recipient_fail_action: str = "DUNNO"
    quota_count_ttl: float = _num(30.0, 0, 86400)
    quota_count_max_files: int = _num(200_000, 1)
    # Sender ownership, for authenticated sessions. Any row returned means "owned".
    sender_check: bool = True
    sender_query: str = (
        "SELECT 1 FROM forwardings WHERE source = %(sender)s AND active = 1 "
        "AND FIND_IN_SET(%(login)s, REPLACE(LOWER(destination), ' ', '')) > 0 "
        "UNION ALL SELECT 1 FROM sender_grants WHERE login = %(login)s "
        "AND sender IN (%(sender)s, %(at_domain)s) LIMIT 1")
    sender_action: str = "553 5.7.1 Sender address not owned by {login}"
    sender_fail_action: str = "DEFER_IF_PERMIT Sender address check temporarily unavailable"
    # Sending limits per authenticated login and sliding window; 0 switches a limit off.
    ratelimit_check: bool = True
    ratelimit_window: int = _num(3600, 60, 31 * 86400)
    ratelimit_messages: int = _num(100, 0)
    ratelimit_recipients: int = _num(500, 0)
    ratelimit_count_state: str = "END-OF-MESSAGE"  # or RCPT
    ratelimit_query: str = (
        "SELECT bucket, messages, recipients FROM send_counters "
        "WHERE login = %(login)s AND bucket >= %(since)s")
    ratelimit_update: str = (
        "INSERT INTO send_counters (login, bucket, messages, recipients) "
        "VALUES (%(login)s, %(bucket)s, %(messages)s, %(recipients)s) "
        "ON DUPLICATE KEY UPDATE messages = messages + VALUES(messages), "
        "recipients = recipients + VALUES(recipients)")
    ratelimit_prune: str = "DELETE FROM send_counters WHERE bucket < %(before)s LIMIT 10000"
    ratelimit_prune_interval: float = _num(300.0, 0)
    ratelimit_action: str = "450 4.7.1 Sending limit exceeded"
    ratelimit_fail_action: str = "DUNNO"

    def __post_init__(self) -> None:
        # Mistakes in actions and queries stop start-up (and are refused on reload), not
        # the first mail. Imported here: the policy package imports this module.
        if self.listen is not None:
            from .policy.validate import validate
            validate(self)


@dataclass(frozen=True)
class MailboxConfig:
    """Where Maildirs live and who owns them; the seed's layout by default."""

    base: str = "/home/vmail"
    uid: int = _num(5000, 1, 2**31)
    gid: int = _num(5000, 1, 2**31)
    create_maildirs: bool = True


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: logins for Courier's authdaemond (through vmaild-authpipe) and, through it,
    Cyrus SASL (vmaild/auth/, PROTOCOLS.md sections 4 and 5, courier/README.md).

    ``query`` takes Postfix expansions (%s %u %d) of the login name; its columns are read
    by name: address, password, maildir, name, active, quota (maildir++ text) or
    quota_bytes/quota_messages, options, and home/uid/gid, which default to ``[mailbox]``.
    The defaults fit ``vmailctl db migrate``'s schema; for an unmigrated seed database use
    ``query = SELECT email AS address, password FROM users WHERE email='%s'``,
    ``enumerate_query = SELECT email AS address FROM users``, ``rehash = no`` (the seed's
    varchar(20) column holds no modern hash) and the seed forms of the two updates below
    (without ``password_changed_at``). The updates take named parameters %(address)s,
    %(old)s (the hash that was verified: a concurrent change is never overwritten) and
    %(new)s; a literal '%' in them is written '%%'.
    """

    listen: Listen | None = None
    query: str = (
        "SELECT u.email AS address, u.password, u.maildir, u.name, u.quota_bytes, "
        "u.quota_messages, u.active AND COALESCE(d.active, 1) AS active FROM users u "
        "LEFT JOIN domains d ON d.domain = SUBSTRING_INDEX(u.email, '@', -1) "
        "WHERE u.email = '%s'")
    enumerate_query: str = (
        "SELECT u.email AS address, u.maildir FROM users u "
        "LEFT JOIN domains d ON d.domain = SUBSTRING_INDEX(u.email, '@', -1) "
        "WHERE u.active = 1 AND COALESCE(d.active, 1) = 1 ORDER BY u.email")
    # PASSWD requests (authpasswd, webmail).
    passwd_query: str = (
        "UPDATE users SET password = %(new)s, password_changed_at = NOW() "
        "WHERE email = %(address)s AND password = %(old)s")
    # Upgrades on login keep password_changed_at: the password itself did not change.
    rehash_query: str = (
        "UPDATE users SET password = %(new)s WHERE email = %(address)s AND password = %(old)s")
    # New hashes (PASSWD, rehash): sha512_crypt, sha256_crypt, bcrypt or argon2.
    password_scheme: str = "sha512_crypt"
    # 0: passlib's default cost for the scheme (rounds, or log2 rounds for bcrypt).
    password_rounds: int = _num(0, 0, 999_999_999)
    # Store a new hash on a successful login when the stored one is in a deprecated scheme
    # (des_crypt, md5_crypt, clear text) or not in password_scheme.
    rehash: bool = True
    # Threads that verify and hash passwords (0: one per CPU); never the event loop.
    hash_workers: int = _num(0, 0, 64)
    # Verified logins are remembered under (address, stored hash, keyed password digest),
    # so a changed hash never matches. While the database is down only they log in.
    login_cache_ttl: float = _num(3600.0, 0)
    login_cache_size: int = _num(100_000, 0)
    # Repeated failures for one login delay its FAIL replies: fail_delay, doubling, at most
    # fail_delay_max (clients give up after 10 s); forgotten fail_window seconds after the
    # last failure. At most fail_tracked logins are remembered.
    fail_delay: float = _num(0.5, 0, 5)
    fail_delay_max: float = _num(3.0, 0, 8)
    fail_window: float = _num(900.0, 0)
    fail_tracked: int = _num(100_000, 1)
    # vmaild-authpipe gives up on an answer after this long (authdaemond waits 30 s).
    relay_timeout: float = _num(25.0, 1, 29)

    def __post_init__(self) -> None:
        # Imported lazily and kept light: vmaild-authpipe parses this file too.
        if self.listen is not None:
            from .auth.settings import validate
            validate(self)


@dataclass(frozen=True)
class MetricsConfig:
    listen: Listen | None = None


@dataclass(frozen=True)
class ControlConfig:
    """A unix socket vmailctl uses to flush the cache the moment it changes something."""

    listen: Listen | None = None


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    target: str = "stderr"  # stderr | syslog
    syslog_facility: str = "mail"


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
