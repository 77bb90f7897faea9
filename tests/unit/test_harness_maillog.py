"""The harness's maillog readers wait for lines that postlogd writes late, and say what is
missing when a line never comes (the demo once died on a bare StopIteration instead)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.common.wait import HarnessTimeout
from harness.postfix.server import Postfix
from harness.stack.clients import StackClients

SENT = (
    "Dec  2 12:00:01 mail postfix/pipe[42]: {qid}: to=<{to}>, relay=maildrop, delay=0.1, "
    "delays=0/0/0/0.1, dsn=2.0.0, status=sent (delivered via maildrop service)\n"
)
REMOVED = "Dec  2 12:00:01 mail postfix/qmgr[40]: {qid}: removed\n"


@pytest.fixture
def postfix(tmp_path: Path) -> Postfix:
    pf = Postfix(basedir=tmp_path)  # nothing started: only its log file is used
    pf.log_dir.mkdir()
    pf.log_file.write_text("Dec  2 12:00:00 mail postfix/master[1]: daemon started\n")
    return pf


@pytest.fixture
def clients(postfix: Postfix) -> StackClients:
    c = StackClients()
    c.postfix = postfix
    return c


@pytest.fixture
def later(postfix: Postfix) -> Iterator[list[str]]:
    """Lines appended to the maillog 0.2 s from now, as postlogd would, after the caller
    has already seen the message in its Maildir."""
    lines: list[str] = []

    def append() -> None:
        with postfix.log_file.open("a") as f:
            f.writelines(lines)

    timer = threading.Timer(0.2, append)
    timer.start()
    yield lines
    timer.join()


def test_wait_for_delivery_waits_for_a_late_line(
    clients: StackClients, postfix: Postfix, later: list[str]
) -> None:
    mark = postfix.log_mark()
    later += [SENT.format(qid="AAAA1", to="other@x.test"), SENT.format(qid="BBBB2", to="a@x.test")]
    assert clients.deliveries(mark) == []  # not there yet
    line = clients.wait_for_delivery(mark, queue_id="BBBB2", timeout=5)
    assert (line.queue_id, line.to, line.relay, line.status) == (
        "BBBB2",
        "a@x.test",
        "maildrop",
        "sent",
    )
    assert clients.wait_for_delivery(mark, to="other@x.test").queue_id == "AAAA1"


def test_wait_for_delivery_names_what_never_came(clients: StackClients, postfix: Postfix) -> None:
    postfix.log_file.write_text(postfix.log_text() + SENT.format(qid="AAAA1", to="a@x.test"))
    with pytest.raises(HarnessTimeout, match=r"(?s)queue id CCCC3 .*maillog ---\n.*AAAA1") as e:
        clients.wait_for_delivery(0, queue_id="CCCC3", timeout=0.1)
    assert "a status= line for queue id CCCC3" in str(e.value)
    with pytest.raises(HarnessTimeout, match="to=<b@x.test>"):
        clients.wait_for_delivery(0, queue_id="AAAA1", to="b@x.test", timeout=0.1)
    with pytest.raises(ValueError):
        clients.wait_for_delivery(0)


def test_wait_for_removed(postfix: Postfix, later: list[str]) -> None:
    mark = postfix.log_mark()
    later += [REMOVED.format(qid="AAAA1"), REMOVED.format(qid="BBBB2")]
    postfix.wait_for_removed(["AAAA1", "BBBB2"], 5, since=mark)
    with pytest.raises(HarnessTimeout, match=r"still missing: \['CCCC3'\]"):
        postfix.wait_for_removed(["AAAA1", "CCCC3"], 0.1, since=mark)
    with pytest.raises(HarnessTimeout, match="AAAA1"):  # only lines after the mark count
        postfix.wait_for_removed(["AAAA1"], 0.1, since=postfix.log_mark())
