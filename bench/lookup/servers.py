"""The servers under test: a private MariaDB with the benchmark's users, and vmaild
instances (the harness's config for the seed's maps) on loopback ports."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from harness.common.ports import free_port
from harness.mariadb.server import MariaDB
from harness.stack import seed
from harness.vmaild.server import Vmaild, config_text

from .common import (
    DBPASSWORD,
    DBUSER,
    DOMAIN,
    MAP,
    PASSWORD_HASH,
    POOL_SIZE,
    SLAP_PASSWORD,
    SLAP_USER,
    log,
    metric,
)


def start_mariadb(tmp: Path) -> MariaDB:
    """A private server with its own tmpdir. mariadb-install-db still uses /tmp, and was
    seen to fail there once in a while when other work on the machine cleans /tmp
    ("Error on delete of '/tmp/#sql-temptable-...'"): one retry with a fresh datadir."""
    for attempt in (1, 2):
        base = tmp / f"mariadb{attempt}"
        (base / "tmp").mkdir(parents=True)
        shutil.chown(base / "tmp", "mysql", "mysql")
        db = MariaDB(base, extra_args=(f"--tmpdir={base / 'tmp'}",))
        try:
            return db.start()
        except Exception as e:  # noqa: BLE001
            db.stop()
            if attempt == 2:
                raise
            log(f"MariaDB did not start ({str(e).splitlines()[0]}); trying once more")
    raise AssertionError("unreachable")


def create_slap_user(db: MariaDB) -> None:
    conn = db.root_conn()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "CREATE USER IF NOT EXISTS %s@'127.0.0.1' IDENTIFIED BY %s",
                (SLAP_USER, SLAP_PASSWORD),
            )
    finally:
        conn.close()


def seed_users(db: MariaDB, dbname: str, emails: list[str]) -> float:
    """Fresh database with the seed's schema, the bench domain and these users; returns
    the seconds the inserts took. pymysql's executemany sends multi-row INSERTs."""
    db.drop_database(dbname)
    db.create_database(dbname, DBUSER, DBPASSWORD)
    db.execute_script(seed.SEED_SCHEMA, dbname)
    started = time.perf_counter()
    conn = db.root_conn(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO domains (domain) VALUES (%s)", (DOMAIN,))
            for i in range(0, len(emails), 10_000):
                cur.executemany(
                    "INSERT INTO users (email, password) VALUES (%s, %s)",
                    [(e, PASSWORD_HASH) for e in emails[i : i + 10_000]],
                )
            cur.execute(f"GRANT SELECT ON `{dbname}`.* TO %s@'127.0.0.1'", (SLAP_USER,))
            cur.execute("SELECT COUNT(*) FROM users")
            (count,) = cur.fetchone()
    finally:
        conn.close()
    if count != len(emails):
        raise RuntimeError(f"{dbname}: {count} users inserted, {len(emails)} wanted")
    return time.perf_counter() - started


def vmaild_config(
    db: MariaDB, dbname: str, *, tcp_port: int, socketmap_port: int, metrics_port: int, cache: str
) -> str:
    """The harness's config for the seed's maps, with warning-level logging (debug logging
    would distort the figures) and the daemon's default pool size."""
    text = config_text(
        db_port=db.port,
        dbname=dbname,
        user=DBUSER,
        password=DBPASSWORD,
        ports={MAP: tcp_port},
        socketmap_port=socketmap_port,
        metrics_port=metrics_port,
        cache=cache,
    )
    for old, new in (
        ("level = debug", "level = warning"),
        ("pool_size = 4", f"pool_size = {POOL_SIZE}"),
    ):
        if old not in text:
            raise RuntimeError(f"harness config_text changed: no {old!r} line")
        text = text.replace(old, new)
    return text


class Instance:
    """One running vmaild with its ports."""

    def __init__(self, db: MariaDB, dbname: str, workdir: Path, cache: str):
        self.tcp_port, self.socketmap_port = free_port(), free_port()
        self.metrics_port = free_port()
        self.vm = Vmaild(
            vmaild_config(
                db,
                dbname,
                tcp_port=self.tcp_port,
                socketmap_port=self.socketmap_port,
                metrics_port=self.metrics_port,
                cache=cache,
            ),
            workdir,
        )
        self.vm.start()

    @property
    def pid(self) -> int:
        assert self.vm.proc is not None
        return self.vm.proc.pid

    def cache_entries(self) -> float | None:
        return metric(self.vm.metrics_text(self.metrics_port), "vmaild_cache_entries")

    def db_queries(self) -> float:
        text = self.vm.metrics_text(self.metrics_port)
        return metric(text, "vmaild_db_query_seconds_count") or 0.0

    def stop(self) -> None:
        self.vm.stop()
