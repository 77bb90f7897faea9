"""Config: every mistake is one line naming file, section and key."""

from __future__ import annotations

import pytest

from vmaild import config
from vmaild.values import ConfigError, Listen, parse_listen

BASE = """\
[database]
hosts = 127.0.0.1:3306 db2.example.net unix:/run/mysqld/mysqld.sock
user = mail_admin
password = secret
dbname = mail_system

[map domains]
query = SELECT domain FROM domains WHERE domain='%s'
tcp = 127.0.0.1:10021

[map aliases]
query = SELECT destination FROM forwardings WHERE source='%s'
tcp = 127.0.0.1:10023
catchall = yes
recipient_delimiter = -+

[socketmap]
listen = 127.0.0.1:10020

[metrics]
listen = 127.0.0.1:9125
"""


def test_design_example_parses() -> None:
    cfg = config.parse(BASE, "vmaild.conf")
    assert [str(h) for h in cfg.database.hosts] == [
        "127.0.0.1:3306",
        "db2.example.net:3306",
        "unix:/run/mysqld/mysqld.sock",
    ]
    assert cfg.database.connect_timeout == 2.0 and cfg.database.pool_size == 8
    assert cfg.maps["aliases"].catchall is True
    assert cfg.maps["aliases"].stale_negative is False  # opt-in
    assert cfg.maps["domains"].tcp == Listen(host="127.0.0.1", port=10021)
    assert cfg.delimiter_for(cfg.maps["aliases"]) == "-+"
    assert cfg.delimiter_for(cfg.maps["domains"]) == "+"
    assert cfg.socketmap.listen is not None and cfg.socketmap.listen.port == 10020
    assert cfg.cache.ttl == 60 and cfg.cache.stale_ttl == 3600


def test_inline_comments_as_in_design_md() -> None:
    cfg = config.parse(BASE + "[cache]\nttl = 30     ; seconds\nnegative_ttl = 5 # short\n")
    assert cfg.cache.ttl == 30 and cfg.cache.negative_ttl == 5


def test_design_md_full_example_parses() -> None:
    text = BASE.replace(
        "[metrics]",
        "[policy]\nlisten = 127.0.0.1:10040\n\n"
        "[auth]\nlisten = unix:/run/vmaild/auth.sock\n"
        "query = SELECT email FROM users WHERE email='%s'\n\n[metrics]",
    )
    cfg = config.parse(text)
    assert cfg.auth.listen == Listen(path="/run/vmaild/auth.sock")
    assert cfg.policy.listen is not None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("[database]", "[databse]"), "vmaild.conf: [databse]: unknown section"),
        (("user = mail_admin", "usr = mail_admin"), "vmaild.conf: [database] usr: unknown key"),
        (("user = mail_admin\n", ""), "vmaild.conf: [database] user: missing (required)"),
        (
            ("tcp = 127.0.0.1:10021", "tcp = 127.0.0.1:99999"),
            "vmaild.conf: [map domains] tcp: bad port '99999' (1-65535)",
        ),
        (
            ("tcp = 127.0.0.1:10021", "tcp = 10021"),
            "vmaild.conf: [map domains] tcp: expected host:port or unix:/path, not '10021'",
        ),
        (
            ("tcp = 127.0.0.1:10021", "tcp = unix:/run/x.sock"),
            "vmaild.conf: [map domains] tcp: Postfix tcp: tables are TCP only",
        ),
        (
            ("WHERE domain='%s'", "WHERE domain='example.com'"),
            "vmaild.conf: [map domains] query: query has no %s, %u or %d expansion for the key",
        ),
        (
            ("WHERE domain='%s'", "WHERE domain='%x'"),
            "vmaild.conf: [map domains] query: invalid expansion %x inside a quoted string",
        ),
        (
            ("catchall = yes", "catchall = maybe"),
            "vmaild.conf: [map aliases] catchall: expected yes or no, not 'maybe'",
        ),
        (
            ("catchall = yes", "catchall = yes\nstale_negative = sometimes"),
            "vmaild.conf: [map aliases] stale_negative: expected yes or no, not 'sometimes'",
        ),
        (
            ("listen = 127.0.0.1:10020", "listen = 127.0.0.1:10021"),
            "vmaild.conf: [socketmap] listen: 127.0.0.1:10021 is already used by [map domains] tcp",
        ),
        (
            ("[map domains]", "[map bad name!]"),
            "vmaild.conf: [map bad name!]: map name must be 1-64 of A-Z a-z 0-9 _ . -",
        ),
        (
            ("password = secret", "password = secret\npassword_file = /etc/x"),
            "vmaild.conf: [database] password_file: set password or password_file, not both",
        ),
        (
            ("[database]", "[database]\npool_size = 0"),
            "vmaild.conf: [database] pool_size: 0 is out of range (1..256)",
        ),
        (
            ("[database]", "[database]\nconnect_timeout = soon"),
            "vmaild.conf: [database] connect_timeout: not a number: 'soon'",
        ),
    ],
)
def test_mistakes_name_file_section_and_key(change: tuple[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse(BASE.replace(*change, 1), "vmaild.conf")
    assert str(e.value) == expected


def test_missing_database_section() -> None:
    with pytest.raises(ConfigError, match=r"^x.conf: \[database\]: missing section$"):
        config.parse("[cache]\nttl = 1\n", "x.conf")


def test_syntax_error_is_one_line() -> None:
    with pytest.raises(ConfigError) as e:
        config.parse("this is not ini\n", "x.conf")
    assert str(e.value).startswith("x.conf: ") and "\n" not in str(e.value)


def test_duplicate_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="user"):
        config.parse(BASE.replace("user = mail_admin", "user = a\nuser = b"), "x.conf")


def test_password_file(tmp_path) -> None:
    secret = tmp_path / "db.secret"
    secret.write_text("s3cret\n")
    cfg = config.parse(BASE.replace("password = secret", f"password_file = {secret}"))
    assert cfg.database.password == "s3cret"
    assert "s3cret" not in repr(cfg.database)


def test_unreadable_password_file(tmp_path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as e:
        config.parse(BASE.replace("password = secret", f"password_file = {missing}"), "c")
    assert str(e.value) == (
        f"c: [database] password_file: cannot read {missing}: No such file or directory"
    )


def test_load_unreadable_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        config.load(tmp_path / "missing.conf")


def test_env_var_names_the_default_path(monkeypatch, tmp_path) -> None:
    path = tmp_path / "v.conf"
    path.write_text(BASE)
    monkeypatch.setenv("VMAILD_CONFIG", str(path))
    assert config.load().path == str(path)
    monkeypatch.delenv("VMAILD_CONFIG")
    assert config.default_path() == "/etc/vmaild/vmaild.conf"


@pytest.mark.parametrize(
    ("raw", "listen"),
    [
        ("127.0.0.1:1", Listen(host="127.0.0.1", port=1)),
        ("[::1]:10020", Listen(host="::1", port=10020)),
        ("localhost:65535", Listen(host="localhost", port=65535)),
        ("unix:/run/vmaild/auth.sock", Listen(path="/run/vmaild/auth.sock")),
    ],
)
def test_parse_listen(raw: str, listen: Listen) -> None:
    assert parse_listen(raw) == listen
    assert str(parse_listen(raw)) == raw


@pytest.mark.parametrize(
    "raw", ["", ":1", "host:", "host:0", "host:x", "unix:relative", "[::1]10020"]
)
def test_parse_listen_rejects(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(raw)


# -- [sasl] ----------------------------------------------------------------------------------


def test_sasl_section() -> None:
    cfg = config.parse(BASE)
    assert cfg.sasl.listen is None and cfg.sasl.mechanisms == ("PLAIN", "LOGIN")
    cfg = config.parse(BASE + "[sasl]\nlisten = unix:/var/spool/postfix/vmaild/auth\n")
    assert cfg.sasl.listen == Listen(path="/var/spool/postfix/vmaild/auth")
    for listen in ("127.0.0.1:12345", "[::1]:12345", "localhost:12345", "127.0.0.2:1"):
        assert config.parse(BASE + f"[sasl]\nlisten = {listen}\n").sasl.listen is not None
    cfg = config.parse(BASE + "[sasl]\nlisten = 127.0.0.1:1\nmechanisms = plain\n")
    assert cfg.sasl.mechanisms == ("plain",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[sasl]\nlisten = 192.0.2.1:12345\n",
            "x.conf: [sasl] listen: 192.0.2.1 is not a loopback address: use a unix socket, or "
            "127.0.0.1 (anyone who reaches the port could try passwords)",
        ),
        ("[sasl]\nlisten = 0.0.0.0:1\n", "x.conf: [sasl] listen: 0.0.0.0 is not a loopback"),
        ("[sasl]\nmechanisms = PLAIN CRAM-MD5\n", "x.conf: [sasl] mechanisms: must be some of"),
        ("[sasl]\nmechanisms =\n", "x.conf: [sasl] mechanisms: must be some of PLAIN LOGIN"),
        (
            "[sasl]\nlisten = 127.0.0.1:9125\n",
            "x.conf: [metrics] listen: 127.0.0.1:9125 is already used by [sasl] listen",
        ),
        # [sasl] logs in with [auth]'s settings: judged even without [auth] listen.
        (
            "[sasl]\nlisten = unix:/run/x/auth\n[auth]\npassword_scheme = md5_crypt\n",
            "x.conf: [auth] password_scheme: must be one of",
        ),
        (
            "[sasl]\nlisten = unix:/run/x/auth\n[auth]\nfail_delay = 2\nfail_delay_max = 1\n",
            "x.conf: [auth] fail_delay_max: must not be less than fail_delay",
        ),
    ],
)
def test_sasl_mistakes(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse(BASE + text, "x.conf")
    assert str(e.value).startswith(expected)


def test_auth_login_settings_unjudged_without_a_front_door() -> None:
    config.parse(BASE + "[auth]\npassword_scheme = md5_crypt\n")


def test_write_hosts_default_to_hosts_and_replicas_are_seen() -> None:
    db = config.parse(BASE).database
    assert db.write_hosts == () and db.writers == db.hosts and not db.replicated
    assert db.max_lag == 30.0 and db.lag_check_interval == 2.0
    text = BASE.replace(
        "dbname = mail_system",
        "dbname = mail_system\nwrite_hosts = db0.example.net\nmax_lag = 5",
    )
    db = config.parse(text).database
    assert [str(h) for h in db.writers] == ["db0.example.net:3306"]
    assert db.replicated and db.max_lag == 5.0
    with pytest.raises(ConfigError, match=r"\[database\] max_lag"):
        config.parse(BASE.replace("dbname = mail_system", "dbname = x\nmax_lag = -1"))


def test_wsrep_sync_wait_is_bounded() -> None:
    assert config.parse(BASE).database.wsrep_sync_wait == 0
    text = BASE.replace("dbname = mail_system", "dbname = mail_system\nwsrep_sync_wait = 1")
    assert config.parse(text).database.wsrep_sync_wait == 1
    with pytest.raises(ConfigError, match=r"\[database\] wsrep_sync_wait"):
        config.parse(BASE.replace("dbname = mail_system", "dbname = x\nwsrep_sync_wait = 16"))
