"""``make demo`` itself, as CI runs it: ``python -m harness.demo`` on this machine, exit 0,
and every step the README promises for it in its output (one line each).

Twice in a row: the demo's first run on a fresh machine once failed on a race (the message
was in the Maildir before Postfix's status= line was in the log) that a warm second run
hides; running it twice here lets CI see a first run and a repeat (about 10 s each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import CourierSession, require
from tests.integration.test_e2e_seed import stack_requirements

ROOT = Path(__file__).resolve().parents[2]

#: Substrings of the lines the demo must print, in order.
STEPS = (
    "vmaild demo, sandbox ",
    "ok    MariaDB on 127.0.0.1:",
    "ok    vmailctl db migrate (schema migrated",
    "ok    authdaemond -> vmaild-authpipe; imapd",
    "ok    Postfix on 127.0.0.1:",
    "ok    vmailctl domain add raecoo.com",
    "ok    vmailctl user add sales@raecoo.com",
    "ok    SMTP from friend@example.net to sales@raecoo.com",
    "ok    SMTP to nobody@raecoo.com: 550 5.1.1",
    "ok    POP3 (STLS) as sales@raecoo.com: subjects ['email subject']",
    "ok    IMAP (STARTTLS) as sales@raecoo.com: subjects ['email subject']",
    "ok    IMAPS and POP3S as sales@raecoo.com: 1 and 1 message(s)",
    "ok    vmaild-authpipe: ",
    "ok    SMTP AUTH PLAIN after STARTTLS as sales@raecoo.com",
    "ok    MariaDB stopped: sales@raecoo.com: maildrop: sent",
    "ok    metrics: lookups domains=",
    "ok    everything stopped",
    "demo passed in ",
)


@pytest.mark.parametrize("attempt", [1, 2], ids=["first-run", "second-run"])
def test_make_demo(courier: CourierSession, attempt: int) -> None:
    require(stack_requirements(), "the mail stack")
    courier.close()  # the demo starts its own Courier (global paths)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VMAILD_DEMO_KEEP", None)
    result = subprocess.run(
        [sys.executable, "-m", "harness.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, f"run {attempt}:\n{output}{result.stderr}"
    assert "FAIL" not in output, f"run {attempt}:\n{output}"
    lines = output.splitlines()
    position = 0
    for step in STEPS:
        found = [i for i, line in enumerate(lines) if step in line and i >= position]
        assert found, f"no line with {step!r} after line {position}:\n{output}"
        position = found[0]
    # The relays gave up root for vmaild's account (privdrop.py), whichever it runs as.
    vmaild_user = "vmail" if any("; vmaild as vmail:" in line for line in lines) else "root"
    relays = next(line for line in lines if "ok    vmaild-authpipe: " in line)
    assert f"now {vmaild_user} (uid" in relays and ";" not in relays.split(" now ")[1], relays
    if vmaild_user == "vmail":
        assert "uid 5000 gid 5000, no groups, no_new_privs)" in relays, relays
    seconds = float(lines[-1].split(" in ")[1].split()[0])
    assert seconds < 60, lines[-1]
    sandbox = lines[0].removeprefix("vmaild demo, sandbox ")
    assert not Path(sandbox).exists()  # cleaned up
