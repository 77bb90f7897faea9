"""The database schema vmaild expects, as data.

One description serves both ``db init`` (CREATE TABLE) and ``db migrate`` (ALTER the
seed's tables towards it), so a migrated seed database and a fresh one end up with the
same definitions. Columns are listed seed columns first, then additions in the order
they are appended, which keeps the column order identical on both paths.

Versions: 1 is the seed's four tables exactly as the tutorial creates them (there is no
version row then); 2 added vmaild's own tables; 3 (this file) adds the login tables
(access switches, app passwords, login history, shared login failures). The version is
recorded in ``vmaild_schema``.

Cache invalidation: triggers on every table the daemon reads bump the single row of
``vmaild_changes``; vmaild polls it (``[cache] version_query``) and flushes when it moves,
so even hand-typed SQL reaches a running daemon within a poll interval.
"""

from __future__ import annotations

from dataclasses import dataclass

LATEST = 3
SEED_VERSION = 1
CHARSET = "utf8mb4"
COLLATION = "utf8mb4_unicode_ci"
TABLE_OPTIONS = f"ENGINE=InnoDB DEFAULT CHARSET={CHARSET} COLLATE={COLLATION}"

CHANGES_TABLE = "vmaild_changes"
SCHEMA_TABLE = "vmaild_schema"
BUMP = f"UPDATE {CHANGES_TABLE} SET version = version + 1 WHERE id = 1"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (column, definition without the name)
    keys: tuple[tuple[str, str], ...]  # (index name, definition); "PRIMARY" for the PK
    watched: bool = False  # bumps vmaild_changes on every change
    # Columns whose change alone must not bump vmaild_changes (see TRIGGERS below).
    quiet_columns: tuple[str, ...] = ()

    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]


ADDRESS = "varchar(255) NOT NULL"
FLAG = "tinyint(1) NOT NULL DEFAULT 1"

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
        ),
        (("PRIMARY", "PRIMARY KEY (email)"), ("email_domain", "KEY email_domain (email_domain)")),
        watched=True,
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
    ),
    Table(
        "transport",
        (
            ("domain", ADDRESS),
            ("transport", "varchar(128) NOT NULL DEFAULT ''"),
        ),
        (("domain", "UNIQUE KEY domain (domain)"),),
        watched=True,
    ),
    Table(
        "sender_grants",
        (
            ("login", ADDRESS),  # an authenticated user ...
            ("sender", ADDRESS),  # ... may send as this address or '@domain'
        ),
        (("PRIMARY", "PRIMARY KEY (login, sender)"), ("sender", "KEY sender (sender)")),
        watched=True,
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
    ``quiet_columns`` does not bump."""
    result = [
        Trigger(f"vmaild_{t.name}_{suffix}", t.name, event, BUMP)
        for suffix, event in (("ins", "INSERT"), ("del", "DELETE"))
    ]
    loud = [c for c in columns if c not in t.quiet_columns]
    if t.quiet_columns and loud:
        same = " AND ".join(f"OLD.`{c}` <=> NEW.`{c}`" for c in loud)
        body = f"IF NOT ({same}) THEN {BUMP}; END IF"
    else:
        body = BUMP
    result.insert(1, Trigger(f"vmaild_{t.name}_upd", t.name, "UPDATE", body))
    return result


def watched_tables() -> list[Table]:
    return [t for t in TABLES if t.watched]
