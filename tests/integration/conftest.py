"""Fixtures wrapping harness/ for integration tests against the real stack.

They need root and the Debian packages from scripts/install-deps.sh. Where
either is missing the tests are skipped with the reason, except under CI
(environment variable CI set, or VMAILD_REQUIRE_STACK=1 as the Makefile
sets it), where a missing prerequisite is a failure: an integration suite
that silently skips everything proves nothing.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.common.tempdir import shared_tempdir
from harness.courier.server import Courier
from harness.mariadb.server import MariaDB
from harness.postfix.server import Postfix
from harness.stack.seed import SeedDatabase, load_seed, write_mysql_cf

INTEGRATION_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ is an integration test."""
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


def stack_required() -> bool:
    """True under CI or with VMAILD_REQUIRE_STACK set to a non-zero value."""
    flag = os.environ.get("VMAILD_REQUIRE_STACK", "")
    return bool(os.environ.get("CI")) or flag not in ("", "0", "no", "false")


def require(missing: list[str], what: str) -> None:
    """Skip (locally) or fail (under CI) when prerequisites are missing."""
    if os.geteuid() != 0:
        missing = [*missing, "root privileges"]
    if not missing:
        return
    reason = (
        f"{what} unavailable, missing: {', '.join(missing)} (run scripts/install-deps.sh as root)"
    )
    if stack_required():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------- MariaDB
@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """One private MariaDB for the whole session (starts in about a second)."""
    require(MariaDB.missing_requirements(), "MariaDB")
    db = MariaDB()
    try:
        db.start()
        yield db
    finally:
        db.cleanup()


@pytest.fixture
def seed_db(mariadb: MariaDB) -> SeedDatabase:
    """The tutorial's database (schema + example rows), reloaded pristine for
    each test: tests may add users or break rows."""
    return load_seed(mariadb)


@pytest.fixture(scope="module")
def module_seed_db(mariadb: MariaDB) -> Iterator[SeedDatabase]:
    """The tutorial's database loaded once per test module, in a database of its own, for
    modules whose tests only read it (cheaper than ``seed_db``'s reload per test)."""
    dbname = f"seed_{uuid.uuid4().hex[:8]}"
    db = load_seed(mariadb, dbname=dbname)
    yield db
    mariadb.drop_database(dbname)


@pytest.fixture
def service_tmp() -> Iterator[Path]:
    """A temp dir the postfix/mysql/vmail users can traverse (tmp_path is 0700)."""
    path = shared_tempdir("vmaild-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def seed_cf(seed_db: SeedDatabase, service_tmp: Path) -> dict[str, Path]:
    """The tutorial's four mysql-virtual_*.cf files pointing at ``seed_db``."""
    return write_mysql_cf(
        service_tmp / "cf", seed_db.mariadb, seed_db.dbname, seed_db.user, seed_db.password
    )


# --------------------------------------------------------------------- Postfix
@pytest.fixture
def postfix_factory() -> Iterator[Callable[..., Postfix]]:
    """Call it like :class:`harness.Postfix` to get a started private
    instance; all of them are stopped and deleted after the test."""
    require(Postfix.missing_requirements(), "Postfix")
    made: list[Postfix] = []

    def make(
        main_cf: dict[str, str] | None = None, master_cf: Any = None, **kwargs: Any
    ) -> Postfix:
        instance = Postfix(main_cf, master_cf, **kwargs)
        made.append(instance)  # before start(): a failed start is cleaned up too
        return instance.start()

    try:
        yield make
    finally:
        for instance in reversed(made):
            instance.cleanup()


# --------------------------------------------------------------------- Courier
class CourierSession:
    """At most one running :class:`harness.Courier` (its paths are global).

    Calling it with the same arguments as the running instance returns that
    instance; different arguments stop it and start a new one, so tests can
    choose their authProg and still share a warm instance.
    """

    def __init__(self) -> None:
        self.current: Courier | None = None
        self._key: str | None = None

    def __call__(self, auth_prog: str | os.PathLike[str] | None = None, **kwargs: Any) -> Courier:
        key = repr((str(auth_prog), sorted(kwargs.items())))
        if self.current is not None and key == self._key and self.current.running:
            return self.current
        self.close()
        self.current = Courier(auth_prog, **kwargs)
        self._key = key
        return self.current.start()

    def close(self) -> None:
        if self.current is not None:
            self.current.cleanup()
        self.current = None
        self._key = None


@pytest.fixture(scope="session")
def courier() -> Iterator[CourierSession]:
    """Session-scoped Courier factory; see :class:`CourierSession`."""
    require(Courier.missing_requirements("authpipe"), "Courier")
    session = CourierSession()
    try:
        yield session
    finally:
        session.close()
