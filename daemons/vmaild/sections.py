"""The sections of vmaild.conf, one frozen dataclass each.

``config.py`` reads the INI file into these: every field is a key, its type hint says how
the value is read (``values.convert``) and its default applies when the key is absent.
``_num`` bounds numbers. What types cannot say, each section checks in one place, its
``check`` method, which the parser calls once the section is built: a mistake raises
ConfigError naming the key, and the parser adds the file and the section.

A leaf of the package: the checks use only the light modules that know what a value may be
(expansions, policy actions and queries, the auth and policy settings), never the database
layer, so vmailctl and vmaild-authpipe can read the file without loading it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from . import expansions
from .policy.actions import check_action, fill
from .policy.queries import compile_named
from .policy.settings import COUNT_STATES, QUERY_PARAMS
from .values import ConfigError, DatabaseHost, Listen


class Section:
    """What every section has: ``check``, the validation types cannot express.

    Each subclass is a dataclass; the annotation says so to the type checker."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def check(self) -> None:
        """Raise ConfigError naming the key of the first mistake; nothing to check here."""


def _checked(key: str, check: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    """Run one value's check; the ValueError it raises becomes ConfigError for ``key``."""
    try:
        check(*args, **kwargs)
    except ValueError as e:
        raise ConfigError(str(e), key=key) from None


# Field metadata keys: "min"/"max" bound numbers.
def _num(default: Any, lo: float, hi: float | None = None) -> Any:
    return field(default=default, metadata={"min": lo, "max": hi})


# Every listening section has these two keys (servers/limits.py says why these defaults
# never cut a live Postfix client: PROTOCOLS.md 1.4, 2.4, 3.3).
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_IDLE_TIMEOUT = 3600.0


@dataclass(frozen=True)
class ListenerSection(Section):
    """The keys of every section that opens a listener: a cap on its open connections
    (one over it is closed at once, counted and logged) and how long a connection may
    stay silent, with no request in progress, before it is closed (0: never)."""

    max_connections: int = _num(DEFAULT_MAX_CONNECTIONS, 1, 1_000_000)
    idle_timeout: float = _num(DEFAULT_IDLE_TIMEOUT, 0, 7 * 86400)


@dataclass(frozen=True)
class DatabaseConfig(Section):
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
    # Where writes go (sending counters, rehash, PASSWD, vmailctl), in order; empty: hosts.
    # ``hosts`` stays the list reads are answered from (db.py, dbhosts.py).
    write_hosts: tuple[DatabaseHost, ...] = ()
    # A read host whose replica lags more than this many seconds behind the writer is
    # passed over for the next one within bound (the least lagged when none is; never no
    # answer because of lag). Measured by a heartbeat row every lag_check_interval seconds
    # (lagcheck.py), only when some read host is not a write host; 0 switches it off.
    max_lag: float = _num(30.0, 0, 86400)
    lag_check_interval: float = _num(2.0, 0, 3600)
    # Galera only: SET SESSION wsrep_sync_wait on every connection (1: reads wait until
    # the node has applied what the cluster committed before them; README "Galera").
    wsrep_sync_wait: int = _num(0, 0, 15)

    @property
    def writers(self) -> tuple[DatabaseHost, ...]:
        """The hosts writes go to: ``write_hosts``, or ``hosts`` when it is not set."""
        return self.write_hosts or self.hosts

    @property
    def replicated(self) -> bool:
        """True when some read host is not a writer: reads may lag behind writes."""
        return any(host not in self.writers for host in self.hosts)

    def check(self) -> None:
        for key in ("hosts", "user", "dbname"):
            if not getattr(self, key):
                raise ConfigError("missing (required)", key=key)
        if self.password and self.password_file:
            raise ConfigError("set password or password_file, not both", key="password_file")


@dataclass(frozen=True)
class CacheConfig(Section):
    ttl: float = _num(60.0, 0)
    negative_ttl: float = _num(10.0, 0)
    stale_ttl: float = _num(3600.0, 0)
    max_entries: int = _num(1_000_000, 0)
    # Changes made with vmailctl (or by hand, through the schema's triggers) are logged in
    # vmaild_change_log; the daemon polls it and drops the affected entries (a version 2
    # schema: the version row, and a whole flush when it moves). 0 switches polling off.
    check_interval: float = _num(1.0, 0, 3600)
    version_query: str = "SELECT version FROM vmaild_changes WHERE id = 1"
    # The change log (invalidation.py): how long a notified commit (its GTID) is waited
    # for on the read host before the notification is answered and the wait left to the
    # polls; how long log rows are kept (a vmaild stopped longer flushes fully at start).
    gtid_wait: float = _num(5.0, 0, 60)
    change_log_retention: float = _num(86400.0, 60)
    # Warm restarts (warm.py): the lookup cache is kept in this file, written every
    # snapshot_interval seconds (0: only at stop) and at stop, and restored at start. The
    # default is in the shipped unit's StateDirectory=vmaild; empty switches it off.
    snapshot: str = "/var/lib/vmaild/cache.snapshot"
    snapshot_interval: float = _num(60.0, 0, 86400)
    # A "not found" from a read host that is a replica is asked again on the writer before
    # it is answered (lookup.py): a mailbox just created on the primary is never refused
    # by a host whose replica has not applied it yet. auto: when some read host is not a
    # writer ([database] write_hosts); yes; no.
    confirm_not_found: str = "auto"

    def check(self) -> None:
        if self.snapshot and not self.snapshot.startswith("/"):
            raise ConfigError("must be an absolute path (or empty: off)", key="snapshot")
        if self.confirm_not_found not in ("auto", "yes", "no"):
            raise ConfigError("must be auto, yes or no", key="confirm_not_found")


@dataclass(frozen=True)
class LookupConfig(Section):
    recipient_delimiter: str = "+"


@dataclass(frozen=True)
class MapConfig(ListenerSection):
    """``[map NAME]``; ``max_connections`` and ``idle_timeout`` apply to its ``tcp`` listener."""

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

    def check(self) -> None:
        if not self.query:
            raise ConfigError("missing (required)", key="query")
        _checked("query", expansions.compile_query, self.query)
        if self.recipient_delimiter is not None and any(
            c in self.recipient_delimiter for c in "@ \t"
        ):
            raise ConfigError("must not contain @ or spaces", key="recipient_delimiter")
        if self.tcp is not None and self.tcp.is_unix:
            raise ConfigError("Postfix tcp: tables are TCP only", key="tcp")


@dataclass(frozen=True)
class SocketmapConfig(ListenerSection):
    listen: Listen | None = None


@dataclass(frozen=True)
class PolicyConfig(ListenerSection):
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
        "LEFT JOIN domains d ON d.domain = %(domain)s WHERE u.email = %(address)s"
    )
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
        "AND sender IN (%(sender)s, %(at_domain)s) LIMIT 1"
    )
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
        "WHERE login = %(login)s AND bucket >= %(since)s"
    )
    ratelimit_update: str = (
        "INSERT INTO send_counters (login, bucket, messages, recipients) "
        "VALUES (%(login)s, %(bucket)s, %(messages)s, %(recipients)s) "
        "ON DUPLICATE KEY UPDATE messages = messages + VALUES(messages), "
        "recipients = recipients + VALUES(recipients)"
    )
    # Taken first in the counting transaction (policy/counting.py): one row per login,
    # bucket 0 (older than any window), whose lock queues every host counting for it.
    ratelimit_lock: str = (
        "INSERT INTO send_counters (login, bucket, messages, recipients) "
        "VALUES (%(login)s, 0, 0, 0) ON DUPLICATE KEY UPDATE messages = 0"
    )
    ratelimit_retries: int = _num(3, 0, 20)  # deadlocks / lock wait timeouts retried
    ratelimit_prune: str = "DELETE FROM send_counters WHERE bucket < %(before)s LIMIT 10000"
    ratelimit_prune_interval: float = _num(300.0, 0)
    ratelimit_action: str = "450 4.7.1 Sending limit exceeded"
    ratelimit_fail_action: str = "DUNNO"

    def check(self) -> None:
        # Mistakes in actions and queries stop start-up (and are refused on reload), not
        # the first mail. Without a listener the section is unused and not judged.
        if self.listen is None:
            return
        for key in ("disabled_action", "quota_action", "sender_action", "ratelimit_action"):
            _checked(key, lambda k=key: check_action(fill(getattr(self, k), login="x", sender="x")))
        for key in ("recipient_fail_action", "sender_fail_action", "ratelimit_fail_action"):
            _checked(key, check_action, getattr(self, key), fail=True)
        for key, params in QUERY_PARAMS.items():
            _checked(key, compile_named, getattr(self, key), params)
        if self.ratelimit_count_state.strip().upper() not in COUNT_STATES:
            raise ConfigError(
                f"must be one of {', '.join(COUNT_STATES)}", key="ratelimit_count_state"
            )
        if self.recipient_delimiter is not None and any(
            c in self.recipient_delimiter for c in "@ \t"
        ):
            raise ConfigError("must not contain @ or spaces", key="recipient_delimiter")


@dataclass(frozen=True)
class MailboxConfig(Section):
    """Where Maildirs live and who owns them; the seed's layout by default."""

    base: str = "/home/vmail"
    uid: int = _num(5000, 1, 2**31)
    gid: int = _num(5000, 1, 2**31)
    create_maildirs: bool = True


@dataclass(frozen=True)
class MetricsConfig(Section):
    listen: Listen | None = None


@dataclass(frozen=True)
class ControlConfig(ListenerSection):
    """A unix socket vmailctl uses to flush the cache the moment it changes something."""

    listen: Listen | None = None


@dataclass(frozen=True)
class LogConfig(Section):
    level: str = "info"
    target: str = "stderr"  # stderr | syslog
    syslog_facility: str = "mail"

    def check(self) -> None:
        if self.target not in ("stderr", "syslog"):
            raise ConfigError("must be stderr or syslog", key="target")
        if self.level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("must be debug, info, warning or error", key="level")
