"""The shipped fail2ban filter (fail2ban/filter.d/vmaild.conf) against vmaild's own log lines,
with the real ``fail2ban-regex``.

A process set up as vmaild serve is (guard_log_driver.py: the configuration file, vmaild's
logging setup, a database pool on a real MariaDB) drives failed logins through the guard;
its stderr is captured in both of vmaild's formats: plain (``DATE vmaild INFO ...``) and
the journal's, as fail2ban's systemd backend presents an entry (``HOST vmaild[PID]: INFO
...``; the ``<6>`` priority prefix is journald's, stripped as journald strips it). Every
failure from a known, untrusted address must match, with its address; nothing else may:
not trusted networks, not failures without an address, not block lines, not a login name
crafted to look like a failure line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.mariadb.server import MariaDB
from vmaild.ctl import schema

from .conftest import require

ROOT = Path(__file__).resolve().parents[2]
FILTER = ROOT / "fail2ban" / "filter.d" / "vmaild.conf"
JAIL = ROOT / "fail2ban" / "jail.d" / "vmaild.conf.example"
COMMON = Path("/etc/fail2ban/filter.d/common.conf")  # from the fail2ban package

# guard_log_driver.SCRIPT: failures per address that must match.
EXPECTED = Counter(
    {"203.0.113.7": 5, "2001:db8:1:2::7": 3, "198.51.100.9": 2, "203.0.113.99": 5,
     "198.51.100.20": 5}
)  # fmt: skip


@pytest.fixture
def conf(mariadb: MariaDB, tmp_path: Path) -> Iterator[Path]:
    missing = [] if shutil.which("fail2ban-regex") and COMMON.exists() else ["fail2ban"]
    require(missing, "fail2ban")
    name = f"f2b_{uuid.uuid4().hex[:8]}"
    mariadb.create_database(name, "guard", "guard-pw")
    mariadb.query(schema.create_table(schema.BY_NAME["login_failures"]), database=name)
    path = tmp_path / "vmaild.conf"
    path.write_text(
        f"[database]\nhosts = 127.0.0.1:{mariadb.port}\nuser = guard\npassword = guard-pw\n"
        f"dbname = {name}\n[log]\nlevel = info\n"
    )
    try:
        yield path
    finally:
        mariadb.drop_database(name)


def drive(conf: Path, log: Path, journal: bool) -> None:
    """Run the driver with its stderr in ``log``; ``journal``: as under systemd, where
    vmaild sees JOURNAL_STREAM naming its stderr and writes journal lines."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("JOURNAL_STREAM", None)
    with log.open("wb") as err:
        if journal:
            st = os.fstat(err.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run(
            [sys.executable, "-m", "tests.integration.guard_log_driver", str(conf)],
            stderr=err,
            env=env,
            cwd=ROOT,
            check=True,
            timeout=120,
        )


def as_journal_entries(raw: str, pid: int = 4242) -> str:
    """The lines journald stored, as fail2ban's systemd backend formats an entry:
    ``_HOSTNAME SYSLOG_IDENTIFIER[PID]: MESSAGE`` after the entry's time."""
    out = []
    for line in raw.splitlines():
        m = re.match(r"^<(\d)>(.*)$", line)
        assert m, f"not a journal line: {line!r}"
        out.append(f"2026-12-02 15:40:{len(out) % 60:02d} mail1 vmaild[{pid}]: {m.group(2)}")
    return "\n".join(out) + "\n"


def installed(tmp_path: Path) -> Path:
    """A fail2ban configuration directory with the filter installed as the README says:
    next to the packaged filter.d/common.conf it includes."""
    confdir = tmp_path / "fail2ban"
    (confdir / "filter.d").mkdir(parents=True)
    shutil.copy(COMMON, confdir / "filter.d" / "common.conf")
    shutil.copy(FILTER, confdir / "filter.d" / "vmaild.conf")
    return confdir


def fail2ban_regex(log: Path, confdir: Path) -> tuple[int, int, Counter[str]]:
    """(matched, missed, matched addresses) as fail2ban-regex reports them."""
    base = ["fail2ban-regex", "--config", str(confdir), "--raw"]
    summary = subprocess.run(
        [*base, "--print-no-missed", str(log), "vmaild"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    m = re.search(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", summary)
    assert m, summary
    ips = subprocess.run(
        [*base, "-o", "ip", str(log), "vmaild"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    return int(m.group(3)), int(m.group(4)), Counter(ips)


@pytest.mark.parametrize("journal", [False, True], ids=["stderr", "journal"])
def test_the_filter_matches_every_failure_with_a_client_and_nothing_else(
    conf: Path, tmp_path: Path, journal: bool
) -> None:
    log = tmp_path / "vmaild.log"
    drive(conf, log, journal)
    raw = log.read_text()
    if journal:
        log.write_text(as_journal_entries(raw))
    lines = log.read_text().splitlines()
    failures = [x for x in lines if "login failed: client=" in x and "login blocked" not in x]
    assert len(failures) == sum(EXPECTED.values())
    assert len([x for x in lines if "login failed from a trusted network" in x]) == 4
    assert len([x for x in lines if "login blocked:" in x]) == 3  # 3 pairs
    assert "s3cret" not in raw  # an unknown name is withheld

    matched, missed, ips = fail2ban_regex(log, installed(tmp_path))
    assert matched == sum(EXPECTED.values())
    assert missed == len(lines) - matched
    assert ips == EXPECTED  # never 127.0.0.1, ::1, nor the crafted 192.0.2.66


def test_the_jail_example_names_the_filter_and_the_journal(tmp_path: Path) -> None:
    text = JAIL.read_text()
    assert re.search(r"^filter\s*=\s*vmaild$", text, re.M)
    assert re.search(r"^backend\s*=\s*systemd$", text, re.M)
    assert "journalmatch = SYSLOG_IDENTIFIER=vmaild" in FILTER.read_text()
