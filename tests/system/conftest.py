"""The booted-host tier (`make systemtest`): the README's install on Debian 12 under systemd.

Each test module boots its own host (harness/host/nspawn.py) and runs, inside it, only what a
user would type. These tests need root, systemd-nspawn and debootstrap
(scripts/install-systemtest-deps.sh); they are not part of `make test`.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.host.nspawn import Host

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def readme_block(marker: str) -> list[str]:
    """The command lines of the README's fenced block after ``<!-- MARKER`` (comments and
    blank lines dropped), exactly as a user copies them."""
    text = README.read_text()
    start = text.index(f"<!-- {marker}")
    block = re.search(r"```sh\n(.*?)```", text[start:], re.S)
    assert block is not None, f"no ```sh block after <!-- {marker}"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def copy_checkout(host: Host, dest: str) -> None:
    """The checkout as `git clone` would give it (tracked and new files, not ignored ones)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    target = host.path(dest)
    target.mkdir(parents=True, exist_ok=True)
    names = [f.decode() for f in files if f and (REPO / f.decode()).is_file()]
    subprocess.run(["cp", "-a", "--parents", *names, str(target)], cwd=REPO, check=True)


def wait_for(
    what: str, check: Callable[[], bool], timeout: float = 60, interval: float = 0.5
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session", autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("the system tests boot containers: run as root")
