"""Tables, records and JSON as vmailctl prints them; the schema description's DDL."""

from __future__ import annotations

import datetime as dt
import io
import json

from vmaild.ctl import output, schema, sizes
from vmaild.ctl.context import Context
from vmaild.ctl.output import Column


def test_table_aligns_columns_and_formats_values() -> None:
    rows = [
        {"email": "a@example.com", "active": True, "quota": 500 * 1024**2, "name": "Ann"},
        {"email": "longer.name@example.com", "active": False, "quota": 0, "name": ""},
    ]
    text = output.table(
        rows,
        [
            Column("email", "ADDRESS"),
            Column("active", "ACTIVE"),
            Column("quota", "QUOTA", sizes.format_size),
            Column("name", "NAME"),
        ],
    )
    assert text.splitlines() == [
        "ADDRESS                  ACTIVE  QUOTA  NAME",
        "a@example.com            yes     500M   Ann",
        "longer.name@example.com  no      -",
    ]


def test_empty_table_says_none() -> None:
    assert output.table([], [Column("a", "A")]) == "(none)"


def test_table_handles_wide_characters_and_missing_keys() -> None:
    text = output.table([{"d": "bücher.example"}, {}], [Column("d", "D"), Column("x", "X")])
    lines = text.splitlines()
    assert lines[1] == "bücher.example  -"
    assert lines[2] == "-               -"


def test_record_aligns_labels() -> None:
    text = output.record(
        [
            ("address", "a@example.com"),
            ("quota messages", None),
            ("aliases", ["x@example.com", "@example.com"]),
            ("aliases2", []),
        ]
    )
    assert text.splitlines() == [
        "address         a@example.com",
        "quota messages  -",
        "aliases         x@example.com, @example.com",
        "aliases2        -",
    ]


def test_json_serialises_datetimes_and_unicode() -> None:
    value = {"created_at": dt.datetime(2024, 5, 1, 12, 0, 1), "name": "Jörg", "n": 3}
    doc = json.loads(output.to_json(value))
    assert doc == {"created_at": "2024-05-01T12:00:01", "name": "Jörg", "n": 3}
    assert "Jörg" in output.to_json(value)


def test_context_renders_the_same_data_both_ways() -> None:
    rows = [{"domain": "example.com", "active": True}]
    cols = [Column("domain", "DOMAIN"), Column("active", "ACTIVE")]
    people, machines = io.StringIO(), io.StringIO()
    Context(None, False, out=people).show_table(rows, cols)
    Context(None, True, out=machines).show_table(rows, cols)
    assert people.getvalue() == "DOMAIN       ACTIVE\nexample.com  yes\n"
    assert json.loads(machines.getvalue()) == rows
    done = io.StringIO()
    Context(None, True, out=done).done("added domain example.com", domain="example.com")
    assert json.loads(done.getvalue()) == {
        "result": "ok",
        "message": "added domain example.com",
        "domain": "example.com",
    }


# -- the schema description ------------------------------------------------------------------


def test_every_table_is_innodb_utf8mb4() -> None:
    for t in schema.TABLES:
        sql = schema.create_table(t)
        assert sql.startswith(f"CREATE TABLE `{t.name}` (")
        assert sql.endswith("ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci")


def test_seed_columns_come_first_in_seed_order() -> None:
    assert schema.BY_NAME["domains"].column_names()[:1] == ["domain"]
    assert schema.BY_NAME["users"].column_names()[:2] == ["email", "password"]
    assert schema.BY_NAME["forwardings"].column_names()[:2] == ["source", "destination"]
    assert schema.BY_NAME["transport"].column_names() == ["domain", "transport"]


def test_every_daemon_lookup_column_leads_an_index() -> None:
    """The seed's queries look up by domain, email and source; the policy service by
    login and sender; the daemon polls vmaild_changes by id."""
    lookups = {
        "domains": "domain",
        "users": "email",
        "forwardings": "source",
        "transport": "domain",
        "sender_grants": "sender",
        "send_counters": "login",
        schema.CHANGES_TABLE: "id",
    }
    for table, column in lookups.items():
        keys = [definition for _, definition in schema.BY_NAME[table].keys]
        assert any(f"({column}" in k for k in keys), (table, column, keys)
    grants = [d for _, d in schema.BY_NAME["sender_grants"].keys]
    assert "PRIMARY KEY (login, sender)" in grants


def test_password_column_holds_any_passlib_hash() -> None:
    from passlib.hash import argon2, bcrypt, sha512_crypt

    definition = dict(schema.BY_NAME["users"].columns)["password"]
    assert definition.startswith("varchar(255)")
    for h in (sha512_crypt.hash("x"), bcrypt.hash("x"), argon2.hash("x")):
        assert len(h) <= 255


def test_watched_tables_get_three_triggers_that_bump_the_counter() -> None:
    watched = {t.name for t in schema.watched_tables()}
    assert watched == {"domains", "users", "forwardings", "transport", "sender_grants"}
    for t in schema.watched_tables():
        triggers = schema.triggers_for(t, t.column_names())
        assert [tr.event for tr in triggers] == ["INSERT", "UPDATE", "DELETE"]
        for tr in triggers:
            assert tr.create().startswith(f"CREATE TRIGGER `vmaild_{t.name}_")
            assert f"AFTER {tr.event} ON `{t.name}` FOR EACH ROW" in tr.create()
            assert schema.BUMP in tr.body


def test_users_update_trigger_ignores_password_only_changes() -> None:
    users = schema.BY_NAME["users"]
    upd = schema.triggers_for(users, users.column_names())[1]
    assert upd.body.startswith("BEGIN IF NOT (")  # BEGIN: the bump and the log rows
    for column in users.column_names():
        compared = f"OLD.`{column}` <=> NEW.`{column}`" in upd.body
        assert compared == (column not in ("password", "password_changed_at")), column
    # A migrated table's own extra columns still count as changes.
    extra = schema.triggers_for(users, [*users.column_names(), "quota"])[1]
    assert "OLD.`quota` <=> NEW.`quota`" in extra.body


def test_unchanged_tables_are_not_watched() -> None:
    assert not schema.BY_NAME["send_counters"].watched
    assert not schema.BY_NAME[schema.CHANGES_TABLE].watched
