"""ctl.context.Context: vmailctl's database connection goes to the writer."""

from __future__ import annotations

import io
from pathlib import Path

from vmaild.ctl.context import ADMIN_QUERY_TIMEOUT, Context

CONF = """[database]
hosts = 10.0.0.1 10.0.0.2
{write}user = u
dbname = d
"""


def context(tmp_path: Path, write: str) -> Context:
    conf = tmp_path / "vmaild.conf"
    conf.write_text(CONF.format(write=write))
    return Context(str(conf), False, out=io.StringIO(), err=io.StringIO())


def test_vmailctl_connects_to_write_hosts(tmp_path: Path) -> None:
    ctx = context(tmp_path, "write_hosts = 10.0.0.9 10.0.0.8\n")
    try:
        db = ctx.db
        # Every command runs on the writers, the first that answers; no lag check.
        assert [str(h) for h in db.hosts.order()] == ["10.0.0.9:3306", "10.0.0.8:3306"]
        assert db.hosts.order() == db.hosts.order(write=True)
        assert db.hosts.max_lag == 0 and not db.cfg.replicated
        assert db.cfg.query_timeout == ADMIN_QUERY_TIMEOUT and db.cfg.pool_size == 1
    finally:
        ctx.close()


def test_without_write_hosts_vmailctl_uses_hosts(tmp_path: Path) -> None:
    ctx = context(tmp_path, "")
    try:
        assert [str(h) for h in ctx.db.hosts.order()] == ["10.0.0.1:3306", "10.0.0.2:3306"]
    finally:
        ctx.close()
