"""The lookup daemon with real components: private MariaDB loaded with the seed's SQL, the
real ``vmaild serve``, and Postfix's own ``postmap -q`` (and smtpd) as the client.

The seed's four queries are used verbatim. ``postmap -q`` exits 1 both for "not found" and
for a temporary failure; only the latter prints ``query error``, which is how these tests
tell a deferral from a bounce.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from harness.common.ports import free_port
from harness.common.wait import wait_until
from harness.mariadb.server import MariaDB
from harness.stack import seed
from harness.vmaild.server import Vmaild, config_text, seed_ports

pytestmark = pytest.mark.integration


def make_config(db: seed.SeedDatabase, ports: dict[str, int], **kw: object) -> str:
    return config_text(
        db_port=db.mariadb.port,
        dbname=db.dbname,
        user=db.user,
        password=db.password,
        ports=ports,
        **kw,
    )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def daemon(
    module_seed_db: seed.SeedDatabase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    ports = seed_ports()
    sm, mp = free_port(), free_port()
    v = Vmaild(
        make_config(module_seed_db, ports, socketmap_port=sm, metrics_port=mp),
        tmp_path_factory.mktemp("vmaild"),
    )
    v.start()
    yield {"vmaild": v, "ports": ports, "socketmap": sm, "metrics": mp}
    assert v.stop() == 0


def postmap(key: str, table: str) -> tuple[int, str, str]:
    from harness.common.procs import run

    r = run(["postmap", "-q", key, table], check=False)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def tcp(daemon: dict, name: str) -> str:
    return f"tcp:127.0.0.1:{daemon['ports'][name]}"


def test_seed_queries_answer_like_mysql_tables(daemon: dict) -> None:
    """Every expected answer of the seed's data through each map's tcp: port and through
    the socketmap, with the seed's queries verbatim."""
    for name, answers in seed.expected_answers().items():
        map_name = name
        for key, value in answers.items():
            assert postmap(key, tcp(daemon, map_name)) == (0, value, ""), (map_name, key)
            sm = f"socketmap:inet:127.0.0.1:{daemon['socketmap']}:{map_name}"
            assert postmap(key, sm) == (0, value, ""), (map_name, key)


@pytest.mark.parametrize(
    ("map_name", "key", "value"),
    [
        ("mailboxes", "SALES@RAECOO.COM", "raecoo.com/sales/"),
        ("mailboxes", "sales+newsletter@raecoo.com", "raecoo.com/sales/"),
        ("email2email", "Sales+x@Raecoo.Com", "sales@raecoo.com"),
        ("domains", "RAECOO.COM", "raecoo.com"),
    ],
)
def test_case_and_extension(daemon: dict, map_name: str, key: str, value: str) -> None:
    assert postmap(key, tcp(daemon, map_name)) == (0, value, "")


def test_catchall_only_where_configured(daemon: dict, module_seed_db: seed.SeedDatabase) -> None:
    catchall = {k: v for k, v in seed.SEED_FORWARDINGS.items() if k.startswith("@")}
    assert catchall, "the seed data has a catch-all"
    source, dest = next(iter(catchall.items()))
    key = f"whoever{source}"
    assert postmap(key, tcp(daemon, "forwardings")) == (0, dest, "")
    assert postmap(key, tcp(daemon, "email2email"))[:2] == (1, "")


@pytest.mark.parametrize(
    "key",
    [
        "a'b@raecoo.com",
        "%s@raecoo.com",
        "' OR '1'='1",
        "x' OR 1=1 -- @raecoo.com",
        "sales@raecoo.com' -- ",
        "\\'; DROP TABLE users; --",
    ],
)
def test_injection_shaped_keys_are_data(
    daemon: dict, module_seed_db: seed.SeedDatabase, key: str
) -> None:
    rc, out, err = postmap(key, tcp(daemon, "mailboxes"))
    assert (rc, out, err) == (1, "", "")
    db = module_seed_db
    count = db.mariadb.query("SELECT COUNT(*) FROM users", database=db.dbname)
    assert count[0][0] == len(seed.SEED_USERS)


def test_bulk_postmap(daemon: dict) -> None:
    answers = seed.expected_answers()["mailboxes"]
    keys = list(answers) + ["nobody@raecoo.com", "SALES@raecoo.com"]
    from harness.common.procs import run

    r = run(
        ["postmap", "-q", "-", tcp(daemon, "mailboxes")], input="\n".join(keys) + "\n", check=False
    )
    got = dict(line.split(None, 1) for line in r.stdout.splitlines())
    assert got == {**answers, "SALES@raecoo.com": answers["sales@raecoo.com"]}
    assert r.stderr == ""


def test_unknown_socketmap_name_is_an_error_not_not_found(daemon: dict) -> None:
    table = f"socketmap:inet:127.0.0.1:{daemon['socketmap']}:nosuch"
    rc, out, err = postmap("sales@raecoo.com", table)
    assert rc != 0 and out == "" and "error" in err


def test_metrics_count_lookups_by_outcome(daemon: dict) -> None:
    postmap("sales@raecoo.com", tcp(daemon, "domains"))
    postmap("raecoo.com", tcp(daemon, "domains"))
    postmap("raecoo.com", tcp(daemon, "domains"))
    text = daemon["vmaild"].metrics_text(daemon["metrics"])
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['vmaild_lookups_total{map="domains",outcome="hit"}'] >= 1
    assert samples['vmaild_lookups_total{map="domains",outcome="notfound"}'] >= 1
    assert 'vmaild_lookup_seconds_bucket{le="0.001",map="domains",outcome="hit"}' in samples
    assert samples["vmaild_cache_entries"] >= 2
    assert samples[f'vmaild_db_up{{host="127.0.0.1:{daemon_db_port(text)}"}}'] == 1
    # Label values come from the configuration, never from keys.
    assert "raecoo" not in text


def daemon_db_port(metrics_text: str) -> str:
    line = next(x for x in metrics_text.splitlines() if x.startswith("vmaild_db_up{"))
    return line.split('host="127.0.0.1:')[1].split('"')[0]


# -- outage and recovery -------------------------------------------------------------------------


@pytest.fixture
def own_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """A MariaDB of this test's own, so stopping it disturbs no other test."""
    with MariaDB() as m:
        yield m


def test_database_outage_never_turns_into_not_found(own_mariadb: MariaDB, tmp_path) -> None:
    db = seed.load_seed(own_mariadb)
    ports = seed_ports()
    cfg = make_config(
        db,
        ports,
        cache="ttl = 1\nnegative_ttl = 1\nstale_ttl = 3600",
        metrics_port=(mp := free_port()),
        map_options={"forwardings": "stale_negative = yes"},
    )
    with Vmaild(cfg, tmp_path) as v:
        table = f"tcp:127.0.0.1:{ports['mailboxes']}"
        aliases = f"tcp:127.0.0.1:{ports['forwardings']}"
        assert postmap("nobody@raecoo.com", aliases) == (1, "", "")
        assert postmap("sales@raecoo.com", table) == (0, "raecoo.com/sales/", "")
        assert postmap("nobody@raecoo.com", table)[:2] == (1, "")

        own_mariadb.stop()

        # Cached found answers keep being served; once expired (ttl = 1), as stale ones.
        def served_stale(name: str, key: str, answer: tuple[int, str, str]) -> bool:
            assert postmap(key, f"tcp:127.0.0.1:{ports[name]}") == answer
            return f'vmaild_lookups_total{{map="{name}",outcome="stale"}}' in v.metrics_text(mp)

        wait_until(
            lambda: served_stale("mailboxes", "sales@raecoo.com", (0, "raecoo.com/sales/", "")),
            timeout=10,
            what="a stale answer",
        )
        # ... an uncached key, or an expired not-found, is a temporary error, never 500.
        for key in ("alice@example.test", "nobody@raecoo.com"):
            rc, out, err = postmap(key, table)
            assert rc == 1 and out == "" and "query error" in err, (key, err)
        # ... except in a map with stale_negative = yes: the alias map's "not found" holds.
        wait_until(
            lambda: served_stale("forwardings", "nobody@raecoo.com", (1, "", "")),
            timeout=10,
            what="a stale not-found answer",
        )
        assert f'vmaild_db_up{{host="127.0.0.1:{own_mariadb.port}"}} 0.0' in v.metrics_text(mp)

        own_mariadb.start()
        # Back without restarting vmaild: the pool reconnects on the next query.
        assert postmap("alice@example.test", table) == (0, "example.test/alice/", "")
        assert postmap("nobody@raecoo.com", table)[:2] == (1, "")
        assert v.stop() == 0


def test_failover_to_second_host(own_mariadb: MariaDB, tmp_path) -> None:
    db = seed.load_seed(own_mariadb)
    ports = seed_ports()
    dead = free_port()
    cfg = make_config(db, ports).replace(
        f"hosts = 127.0.0.1:{own_mariadb.port}",
        f"hosts = 127.0.0.1:{dead} 127.0.0.1:{own_mariadb.port}",
    )
    with Vmaild(cfg, tmp_path):
        assert postmap("sales@raecoo.com", f"tcp:127.0.0.1:{ports['mailboxes']}") == (
            0,
            "raecoo.com/sales/",
            "",
        )


# -- signals -------------------------------------------------------------------------------------


def test_sighup_reloads_good_config_and_refuses_broken_one(
    module_seed_db: seed.SeedDatabase, tmp_path
) -> None:
    ports = seed_ports()
    cfg = make_config(module_seed_db, ports)
    with Vmaild(cfg, tmp_path) as v:
        table = f"tcp:127.0.0.1:{ports['email2email']}"
        assert postmap("sales@raecoo.com", table)[0] == 0

        # A broken file is refused; the old configuration keeps serving.
        v.config_path.write_text(cfg + "\n[map broken]\nquery = SELECT 1\n")
        v.reload()
        assert "reload refused" in v.log() and "[map broken] query" in v.log()
        assert postmap("sales@raecoo.com", table)[0] == 0

        # A good one takes effect: a new map on a new port, and the cache is flushed.
        new_port = free_port()
        v.config_path.write_text(
            cfg + f"\n[map users2]\nquery = SELECT email FROM users "
            f"WHERE email='%s'\ntcp = 127.0.0.1:{new_port}\n"
        )
        v.reload()
        assert postmap("sales@raecoo.com", f"tcp:127.0.0.1:{new_port}") == (
            0,
            "sales@raecoo.com",
            "",
        )
        assert postmap("sales@raecoo.com", table)[0] == 0
        assert "configuration reloaded" in v.log()
        assert v.stop() == 0


def test_check_command(module_seed_db: seed.SeedDatabase, tmp_path) -> None:
    from harness.common.procs import run

    good = tmp_path / "good.conf"
    good.write_text(make_config(module_seed_db, seed_ports()))
    r = run([sys.executable, "-m", "vmaild.cli", "check", "-c", str(good)], check=False)
    assert r.returncode == 0 and "ok (4 maps)" in r.stdout
    bad = tmp_path / "bad.conf"
    bad.write_text(good.read_text().replace("[database]", "[database]\nport = 1"))
    r = run([sys.executable, "-m", "vmaild.cli", "check", "-c", str(bad)], check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == f"vmaild: {bad}: [database] port: unknown key"


def test_restart_between_queries_costs_no_error(own_mariadb: MariaDB, tmp_path) -> None:
    """Every pooled connection dies with a server restart; the next lookup must still be
    answered (drop the dead idle connections, connect afresh), not get a 400."""
    import concurrent.futures

    db = seed.load_seed(own_mariadb)
    ports = seed_ports()
    with Vmaild(make_config(db, ports, cache="ttl = 0\nnegative_ttl = 0"), tmp_path):
        table = f"tcp:127.0.0.1:{ports['mailboxes']}"
        keys = [f"k{i}@raecoo.com" for i in range(16)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # open several connections
            assert all(r[0] == 1 for r in pool.map(lambda k: postmap(k, table), keys))
        own_mariadb.stop()
        own_mariadb.start()
        assert postmap("sales@raecoo.com", table) == (0, "raecoo.com/sales/", "")
