"""vmaild's log lines on stderr: plain for a terminal, with priorities for the journal."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile

import pytest

from vmaild.cli import JournalFormatter, stderr_is_journal


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.DEBUG, "<7>DEBUG "),
        (logging.INFO, "<6>INFO "),
        (logging.WARNING, "<4>WARNING "),
        (logging.ERROR, "<3>ERROR "),
        (logging.CRITICAL, "<2>CRITICAL "),
    ],
)
def test_journal_lines_carry_the_priority(level: int, prefix: str) -> None:
    record = logging.LogRecord("vmaild", level, __file__, 1, "db %s down", ("h1",), None)
    assert JournalFormatter().format(record) == f"{prefix}db h1 down"


def _journal_check(stream_of: str) -> str:
    """Run stderr_is_journal() in a child whose stderr is a file and whose JOURNAL_STREAM
    names that file ("same"), another file ("other"), or is malformed ("bad")."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as other:
        target = err if stream_of == "same" else other
        st = os.fstat(target.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        if stream_of == "bad":
            env["JOURNAL_STREAM"] = "not-a-stream"
        code = "from vmaild.cli import stderr_is_journal; print(stderr_is_journal())"
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            stderr=err,
            capture_output=False,
            stdout=subprocess.PIPE,
            text=True,
        )
        return out.stdout.strip()


def test_stderr_is_the_journal_only_when_the_descriptor_matches() -> None:
    assert _journal_check("same") == "True"
    assert _journal_check("other") == "False"  # inherited by a child with another stderr
    assert _journal_check("bad") == "False"


def test_not_the_journal_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert stderr_is_journal() is False
