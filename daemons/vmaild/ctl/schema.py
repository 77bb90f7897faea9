"""The database schema vmaild expects, as data.

One description serves both ``db init`` (CREATE TABLE) and ``db migrate`` (ALTER the
seed's tables towards it), so a migrated seed database and a fresh one end up with the
same definitions. Columns are listed seed columns first, then additions in the order
they are appended, which keeps the column order identical on both paths.

Versions: 1 is the seed's four tables exactly as the tutorial creates them (there is no
version row then); 2 added vmaild's own tables; 3 (this file) adds the login tables
(access switches, app passwords, login history, shared login failures) and the change
log. The version is
recorded in ``vmaild_schema``.

Cache invalidation: triggers on every table the daemon reads append the keys a change
touched (the old and the new key of an UPDATE) to ``vmaild_change_log``, in the same
transaction as the change; vmaild polls the log and drops only the affected cache entries
(changes.py), so even hand-typed SQL reaches a running daemon within a poll interval. The
same triggers still bump the single row of ``vmaild_changes`` (version 2's counter): a
vmaild of version 2 polling it during a rolling upgrade keeps flushing as it did.
"""

from __future__ import annotations

from dataclasses import dataclass

LATEST = 3
SEED_VERSION = 1
CHARSET = "utf8mb4"
COLLATION = "utf8mb4_unicode_ci"
TABLE_OPTIONS = f"ENGINE=InnoDB DEFAULT CHARSET={CHARSET} COLLATE={COLLATION}"

CHANGES_TABLE = "vmaild_changes"
CHANGE_LOG_TABLE = "vmaild_change_log"
SCHEMA_TABLE = "vmaild_schema"
BUMP = f"UPDATE {CHANGES_TABLE} SET version = version + 1 WHERE id = 1"


def log_change(table: str, key_sql: str) -> str:
    """The statement recording that ``key_sql`` (NEW.col, OLD.col or a placeholder) of
    ``table`` changed."""
    return f"INSERT INTO {CHANGE_LOG_TABLE} (tbl, change_key) VALUES ('{table}', {key_sql})"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (column, definition without the name)
    keys: tuple[tuple[str, str], ...]  # (index name, definition); "PRIMARY" for the PK
    watched: bool = False  # bumps vmaild_changes and logs its keys on every change
    # The column whose value is the cache key a change affects (watched tables only).
    key_column: str = ""
    # Columns whose change alone must not bump vmaild_changes (see TRIGGERS below).
    quiet_columns: tuple[str, ...] = ()

    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]


ADDRESS = "varchar(255) NOT NULL"
FLAG = "tinyint(1) NOT NULL DEFAULT 1"
ACCESS = "enum('on','off','app') NOT NULL DEFAULT 'on'"

TABLES: tuple[Table, ...] = (
    Table(
        "domains",
        (
            ("domain", ADDRESS),
            ("active", FLAG),
            ("description", "varchar(255) NOT NULL DEFAULT ''"),
            ("created_at", "timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP"),
        ),
        (("PRIMARY", "PRIMARY KEY (domain)"),),
        watched=True,
        key_column="domain",
    ),
    Table(
        "users",
        (
            ("email", ADDRESS),
            # Wide enough for any passlib hash (argon2 ~100, sha512_crypt 106 characters).
            ("password", "varchar(255) NOT NULL"),
            ("name", "varchar(255) NOT NULL DEFAULT ''"),
            ("quota_bytes", "bigint unsigned NOT NULL DEFAULT 0"),  # 0 = no quota
            ("quota_messages", "int unsigned NOT NULL DEFAULT 0"),  # 0 = no limit
            ("active", FLAG),
            # NULL = the seed's layout '<domain>/<user>/' under [mailbox] base.
            ("maildir", "varchar(255) NULL DEFAULT NULL"),
            ("created_at", "timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP"),
            ("password_changed_at", "timestamp NULL DEFAULT NULL"),
            # For per-domain listings and 'domain remove' without scanning every user.
            ("email_domain", "varchar(255) AS (SUBSTRING_INDEX(email, '@', -1)) VIRTUAL"),
            # Per-protocol access (auth/accounts.py): 'on', 'off', or 'app' (app passwords
            # only). Read with the account row on every login, so a change counts at once.
            ("imap_access", ACCESS),
            ("pop3_access", ACCESS),
            ("smtp_access", ACCESS),
        ),
        (("PRIMARY", "PRIMARY KEY (email)"), ("email_domain", "KEY email_domain (email_domain)")),
        watched=True,
        key_column="email",
        # The auth service rehashes passwords on login; that must not flush every cache.
        # (vmailctl's own password changes bump the version explicitly.)
        quiet_columns=("password", "password_changed_at"),
    ),
    Table(
        "forwardings",
        (
            ("source", ADDRESS),  # an address, or '@domain' for a catch-all
            ("destination", "text NOT NULL"),  # comma-separated, as in the seed
            ("active", FLAG),
            ("source_domain", "varchar(255) AS (SUBSTRING_INDEX(source, '@', -1)) VIRTUAL"),
        ),
        (
            ("PRIMARY", "PRIMARY KEY (source)"),
            ("source_domain", "KEY source_domain (source_domain)"),
        ),
        watched=True,
        key_column="source",
    ),
    Table(
        "transport",
        (
            ("domain", ADDRESS),
            ("transport", "varchar(128) NOT NULL DEFAULT ''"),
        ),
        (("domain", "UNIQUE KEY domain (domain)"),),
        watched=True,
        key_column="domain",
    ),
    Table(
        "sender_grants",
        (
            ("login", ADDRESS),  # an authenticated user ...
            ("sender", ADDRESS),  # ... may send as this address or '@domain'
        ),
        (("PRIMARY", "PRIMARY KEY (login, sender)"), ("sender", "KEY sender (sender)")),
        watched=True,
        key_column="login",
    ),
    Table(
        "send_counters",
        (
            ("login", ADDRESS),
            ("bucket", "int unsigned NOT NULL"),  # floor(unix_time / 60)
            ("messages", "int unsigned NOT NULL DEFAULT 0"),
            ("recipients", "int unsigned NOT NULL DEFAULT 0"),
        ),
        (("PRIMARY", "PRIMARY KEY (login, bucket)"),),
    ),
    # Failed logins counted by the brute-force guard (auth/guard_store.py), shared by every
    # vmaild host on this database. kind: 'address' (subject: a client prefix such as
    # '203.0.113.7/32'), 'login' (the account's address, or the typed name lower-cased) or
    # 'pair' ('<prefix> <login>'). Times are milliseconds since the epoch (UTC):
    # FROM_UNIXTIME(blocked_until / 1000) reads one. Not watched: no cache depends on it.
    Table(
        "login_failures",
        (
            ("kind", "varchar(16) NOT NULL"),
            ("subject", ADDRESS),
            ("failures", "int unsigned NOT NULL DEFAULT 0"),
            ("first_at", "bigint NOT NULL DEFAULT 0"),
            ("last_at", "bigint NOT NULL DEFAULT 0"),
            ("blocked_until", "bigint NOT NULL DEFAULT 0"),
            # blocked_until before the latest failure: how that failure's host tells
            # whether it started the block (and so logs it), even at the same millisecond.
            ("blocked_before", "bigint NOT NULL DEFAULT 0"),
        ),
        (("PRIMARY", "PRIMARY KEY (kind, subject)"), ("last_at", "KEY last_at (last_at)")),
    ),
    # App passwords (auth/app_passwords.py, vmailctl app-password). Not watched: a login
    # reads them every time (no cache to flush), so a revocation counts at the next login,
    # and the daemon's last_used_at updates must not flush every cache.
    Table(
        "app_passwords",
        (
            ("id", "bigint unsigned NOT NULL AUTO_INCREMENT"),
            ("email", ADDRESS),
            ("name", "varchar(64) NOT NULL"),
            # SHA-256 hex of the generated secret (auth/app_secrets.py says why no salt).
            ("secret_hash", "char(64) NOT NULL"),
            ("services", "set('imap','pop3','smtp') NOT NULL DEFAULT 'imap,pop3,smtp'"),
            ("networks", "varchar(1024) NULL DEFAULT NULL"),  # comma-separated CIDRs; NULL: any
            ("expires_at", "timestamp NULL DEFAULT NULL"),  # NULL: never
            ("created_at", "timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP"),
            ("last_used_at", "timestamp NULL DEFAULT NULL"),
        ),
        # (email, name) also serves the login's "WHERE email = ?" as its leftmost prefix.
        (("PRIMARY", "PRIMARY KEY (id)"), ("email_name", "UNIQUE KEY email_name (email, name)")),
    ),
    # The last successful login per account and service (auth/history.py), written in
    # batches at most once a minute. Not watched: nothing is cached from it.
    Table(
        "login_history",
        (
            ("email", ADDRESS),
            ("service", "varchar(32) NOT NULL"),
            ("last_at", "timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP"),
            ("last_address", "varchar(45) NULL DEFAULT NULL"),  # where the front door knew it
        ),
        (("PRIMARY", "PRIMARY KEY (email, service)"),),
    ),
    Table(
        CHANGES_TABLE,
        (
            ("id", "tinyint unsigned NOT NULL"),
            ("version", "bigint unsigned NOT NULL DEFAULT 0"),
            (
                "changed_at",
                "timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)",
            ),
        ),
        (("PRIMARY", "PRIMARY KEY (id)"),),
    ),
    Table(
        CHANGE_LOG_TABLE,
        (
            ("id", "bigint unsigned NOT NULL AUTO_INCREMENT"),
            ("tbl", "varchar(64) NOT NULL"),
            ("change_key", ADDRESS),
            ("changed_at", "timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)"),
        ),
        (("PRIMARY", "PRIMARY KEY (id)"), ("changed_at", "KEY changed_at (changed_at)")),
    ),
    # Replica lag (vmaild's lagcheck.py): one row per vmaild, its latest beat, written on
    # the writer and read back on each replica.
    Table(
        "vmaild_heartbeat",
        (
            ("host", ADDRESS),
            ("beat", "timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)"),
        ),
        (("PRIMARY", "PRIMARY KEY (host)"),),
    ),
    Table(SCHEMA_TABLE, (("version", "int NOT NULL"),), (("PRIMARY", "PRIMARY KEY (version)"),)),
)

BY_NAME = {t.name: t for t in TABLES}
SEED_TABLES = ("domains", "users", "forwardings", "transport")
# The tables without which a database is not the seed's (forwardings and transport are
# "optional" in the tutorial).
SEED_REQUIRED = {"domains": ("domain",), "users": ("email", "password")}


def create_table(t: Table) -> str:
    parts = [f"`{name}` {definition}" for name, definition in t.columns]
    parts += [definition for _, definition in t.keys]
    body = ",\n  ".join(parts)
    return f"CREATE TABLE `{t.name}` (\n  {body}\n) {TABLE_OPTIONS}"


@dataclass(frozen=True)
class Trigger:
    name: str
    table: str
    event: str  # INSERT | UPDATE | DELETE
    body: str

    def create(self) -> str:
        return (
            f"CREATE TRIGGER `{self.name}` AFTER {self.event} ON `{self.table}` "
            f"FOR EACH ROW {self.body}"
        )


def triggers_for(t: Table, columns: list[str]) -> list[Trigger]:
    """The three triggers of a watched table. ``columns`` are the table's real columns
    (a migrated table may carry columns of its own); an UPDATE that changes only
    ``quiet_columns`` neither bumps nor logs. An UPDATE logs the old key, and the new one
    when the key itself changed (a rename drops what was cached under both)."""
    k = t.key_column
    ins = f"BEGIN {BUMP}; {log_change(t.name, f'NEW.`{k}`')}; END"
    dele = f"BEGIN {BUMP}; {log_change(t.name, f'OLD.`{k}`')}; END"
    upd = (
        f"{BUMP}; {log_change(t.name, f'OLD.`{k}`')}; "
        f"IF NOT (OLD.`{k}` <=> NEW.`{k}`) THEN {log_change(t.name, f'NEW.`{k}`')}; END IF"
    )
    loud = [c for c in columns if c not in t.quiet_columns]
    if t.quiet_columns and loud:
        same = " AND ".join(f"OLD.`{c}` <=> NEW.`{c}`" for c in loud)
        upd = f"IF NOT ({same}) THEN {upd}; END IF"
    return [
        Trigger(f"vmaild_{t.name}_ins", t.name, "INSERT", ins),
        Trigger(f"vmaild_{t.name}_upd", t.name, "UPDATE", f"BEGIN {upd}; END"),
        Trigger(f"vmaild_{t.name}_del", t.name, "DELETE", dele),
    ]


def watched_tables() -> list[Table]:
    return [t for t in TABLES if t.watched]
