"""The sections of vmaild.conf, one frozen dataclass each.

``config.py`` reads the INI file into these: every field is a key, its type says how the
value is parsed and its default applies when the key is absent. ``_num`` bounds numbers.
Sections that need more than types (auth, policy) validate themselves in __post_init__,
raising ValueError with ``key`` and ``problem`` attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    # While the database fails, serve expired "not found" answers too (for up to
    # [cache] stale_ttl). Meant for alias maps; see cache.py for why it is opt-in.
    stale_negative: bool = False


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
