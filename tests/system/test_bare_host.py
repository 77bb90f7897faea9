"""`make install` on a bare booted Debian 12: no vmail account, no mail packages.

The first user report: on such a host `make install` exited 2 without a word (getent under
pipefail), and without courier-authlib-pipe nobody could log in. Here the README's first two
steps run verbatim; then a second run changes nothing, and a step that fails is named.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.host.nspawn import Host
from tests.system.conftest import copy_checkout, readme_block

NEEDED = (
    "postfix",
    "courier-authdaemon",
    "courier-authlib-pipe",
    "courier-imap",
    "courier-pop",
    "maildrop",
    "libsasl2-modules",
    "python3-venv",
)


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    h = Host("bare", hostname="mail.example.test")
    h.create()
    copy_checkout(h, "root/vmaild")
    try:
        h.boot()
        yield h
    finally:
        h.__exit__(None, None, None)


def test_make_install_on_a_bare_host(host: Host) -> None:
    assert host.run(["getent", "group", "vmail"]).returncode == 2
    first, install = readme_block("install-steps")[:2]
    assert install == "make install"
    host.sh(first, cwd="/root/vmaild")
    done = host.sh(install, cwd="/root/vmaild", check=False, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "install: group vmail: changed (gid 5000)" in done.stdout
    assert "install: user vmail: changed (uid 5000)" in done.stdout
    assert host.run(["id", "-u", "vmail"]).stdout.strip() == "5000"
    status = host.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\\n", *NEEDED])
    assert sorted(status.stdout.split()) == sorted([*NEEDED, *["installed"] * len(NEEDED)])
    assert host.path("usr/lib/courier-authlib/libauthpipe.so.0").exists()
    assert "postfix in group courier: changed" in done.stdout
    assert "next: set [database]" in done.stdout.strip().splitlines()[-1]

    again = host.sh(install, cwd="/root/vmaild")
    assert "install: done: nothing to change" in again.stdout, again.stdout[-2000:]


def test_a_failing_step_is_named(host: Host) -> None:
    # /etc/vmaild made a file: the configuration step cannot create its directory.
    host.sh("mv /etc/vmaild /etc/vmaild.saved && touch /etc/vmaild")
    failed = host.sh("make install", cwd="/root/vmaild", check=False)
    assert failed.returncode != 0
    assert 'install: error: step "configuration files" failed' in failed.stderr, failed.stderr
    assert '"make install" again' in failed.stderr
    host.sh("rm /etc/vmaild && mv /etc/vmaild.saved /etc/vmaild")
    assert "nothing to change" in host.sh("make install", cwd="/root/vmaild").stdout
