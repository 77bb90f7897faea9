"""No lost mail (README.md, "No lost mail"): while vmaild, authdaemond or MariaDB is
stopped, mail to valid users is deferred -- refused with 4xx at SMTP, or queued and deferred
-- and never bounced; when the service is back and the queue is flushed, every message is in
its Maildir exactly once.

Each run, on the shipped configuration (harness/stack/mailstack.py):
1. mail is queued with delivery held (``defer_transports = maildrop``): two messages each
   to a seed user, the tutorial's user, a user created for the run (nothing about it is
   cached yet) and an alias with two destinations;
2. the service stops and delivery is released: Postfix tries every message now;
3. more mail arrives over SMTP during the outage (what a sending MTA sees);
4. the service comes back; refused messages are sent again, as the sending MTA would;
   the queue is flushed until empty.
Counts come from Postfix's maillog (``status=`` lines) and from the Maildirs.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from harness.common.wait import wait_until
from harness.courier.paths import AUTHPROG
from harness.stack.clients import Submission
from harness.stack.mailstack import MailStack
from tests.integration.conftest import CourierSession, require
from tests.integration.test_e2e_seed import stack_requirements

SENDER = "postmaster@example.org"  # a local mailbox: a bounce would stay here, visibly
ALIAS = ("team@example.test", ("alice@example.test", "bob@example.test"))


@pytest.fixture(scope="module")
def stack(courier: CourierSession) -> Iterator[MailStack]:
    require(stack_requirements(), "the mail stack")
    courier.close()
    with MailStack() as s:
        # Warm the caches the way a running server has them: each seed recipient has
        # had mail before the outage.
        for rcpt in ("alice@example.test", "sales@raecoo.com", ALIAS[0]):
            assert s.submit(SENDER, rcpt, "warm-up").accepted
        wait_until(lambda: len(s.messages("bob@example.test")) >= 1, 30, "warm-up mail")
        yield s


@dataclass
class Run:
    """One outage run and its counts."""

    service: str
    stack: MailStack
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    expected: dict[str, list[str]] = field(default_factory=dict)  # mailbox -> tokens
    queued: list[str] = field(default_factory=list)  # queue ids
    refused_4xx: int = 0
    mark: int = 0
    started: float = field(default_factory=time.monotonic)

    def token(self, n: int) -> str:
        return f"[{self.service}-{self.tag}-{n:02d}]"

    def submit(self, rcpt: str, n: int) -> Submission:
        result = self.stack.submit(SENDER, rcpt, f"outage {self.token(n)}")
        if result.accepted:
            assert result.queue_id is not None
            self.queued.append(result.queue_id)
            for box in dict([ALIAS]).get(rcpt, (rcpt,)):
                self.expected.setdefault(box, []).append(self.token(n))
        return result


def outage(
    stack: MailStack,
    service: str,
    stop: Callable[[], object],
    start: Callable[[], object],
    fresh: str,
    during: list[str],
) -> dict[str, float]:
    assert stack.postfix is not None
    pf = stack.postfix
    run = Run(service, stack)
    run_mark = pf.log_mark()
    # 1. queued, delivery held
    stack.hold_delivery()
    n = 0
    for rcpt in ("alice@example.test", "sales@raecoo.com", fresh, ALIAS[0]) * 2:
        assert run.submit(rcpt, n).accepted, rcpt
        n += 1
    held = list(run.queued)
    # 2. the outage; Postfix tries every queued message
    stop()
    outage_mark = pf.log_mark()
    refused: list[tuple[str, int]] = []
    problems: list[str] = []

    def smtp_during_outage() -> None:
        for number, rcpt in enumerate(during, start=n):
            result = run.submit(rcpt, number)
            if result.temporary:
                refused.append((rcpt, number))
            elif not result.accepted:
                problems.append(f"{rcpt}: {result.code} {result.text}")

    # A tcp: table that cannot be reached costs smtpd ~10 s per map (10 connect tries,
    # docs/STACK.md): run the SMTP part alongside the queue's retries.
    client = threading.Thread(target=smtp_during_outage)
    client.start()
    stack.release_delivery()

    def tried() -> bool:
        lines = [d for d in stack.deliveries(outage_mark) if "deferred transport" not in d.text]
        return {d.queue_id for d in lines} >= set(run.queued)

    client.join(60)
    assert not client.is_alive() and not problems, problems
    # Every message in the queue -- held before, or accepted during the outage -- has been
    # tried while the service was away.
    wait_until(
        tried, 60, f"every queued message to be tried during the {service} outage", interval=0.1
    )
    during_outage = stack.deliveries(outage_mark)
    # 3. back; the sending MTA retries what got 4xx
    start()
    run.refused_4xx = len(refused)
    for rcpt, number in refused:
        wait_until(
            lambda: run.submit(rcpt, number).accepted,  # noqa: B023 - used at once
            30,
            f"{rcpt} to be accepted again",
        )
    pf.wait_for_empty_queue(60, flush=True)
    pf.wait_for_removed(run.queued, since=run_mark)  # and every status= line is logged
    # 4. count
    everything = stack.deliveries(run_mark)
    deferred = {
        d.queue_id
        for d in during_outage
        if d.status == "deferred" and "deferred transport" not in d.text
    }
    counts: dict[str, float] = {
        "sent": len(run.queued),
        "refused_4xx": run.refused_4xx,
        "deferred": len(deferred),
        "delivered_during_outage": sum(d.status == "sent" for d in during_outage),
        "bounced": sum(d.status == "bounced" for d in everything),
        "delivered": sum(d.status == "sent" and d.relay == "maildrop" for d in everything),
        "seconds": round(time.monotonic() - run.started, 1),
    }
    copies = {
        box: [stack.count_tagged(box, t) for t in tokens] for box, tokens in run.expected.items()
    }
    counts["in_maildirs"] = sum(sum(c) for c in copies.values())
    _report(service, counts)
    assert counts["bounced"] == 0, [d for d in everything if d.status == "bounced"]
    assert all(c == [1] * len(c) for c in copies.values()), copies  # each exactly once
    assert counts["in_maildirs"] == counts["delivered"]
    counts["held"] = len(held)
    return counts


def _report(service: str, counts: dict[str, float]) -> None:
    line = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"\n[outage {service}] {line}", flush=True)


# -- the three outages ------------------------------------------------------------------------


def test_vmaild_outage(stack: MailStack, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = f"fresh-v-{uuid.uuid4().hex[:6]}@example.test"
    stack.add_user(fresh, "fresh-pw-1")
    with capsys.disabled():
        counts = outage(
            stack,
            "vmaild",
            stack.stop_vmaild,
            stack.start_vmaild,
            fresh,
            during=["alice@example.test"],
        )
    # Nothing can be resolved or looked up: every queued message was deferred, and the
    # message offered during the outage got 451 4.3.0 at RCPT.
    assert counts["deferred"] == counts["held"]
    assert counts["refused_4xx"] == 1


def test_authdaemond_outage(stack: MailStack, capsys: pytest.CaptureFixture[str]) -> None:
    assert stack.courier is not None
    fresh = f"fresh-a-{uuid.uuid4().hex[:6]}@example.test"
    stack.add_user(fresh, "fresh-pw-1")
    with capsys.disabled():
        counts = outage(
            stack,
            "authdaemond",
            stack.courier.stop_authdaemond,
            stack.courier.start_authdaemond,
            fresh,
            during=["alice@example.test", fresh],
        )
    # maildrop -a: "Temporary authentication failure" for every delivery; SMTP still
    # accepts (the maps are vmaild's), and that mail is deferred too.
    assert counts["deferred"] == counts["sent"]
    assert counts["refused_4xx"] == 0 and counts["delivered_during_outage"] == 0


def test_mariadb_outage(stack: MailStack, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = f"fresh-m-{uuid.uuid4().hex[:6]}@example.test"
    stack.add_user(fresh, "fresh-pw-1")
    unseen = f"unseen-m-{uuid.uuid4().hex[:6]}@example.test"
    stack.add_user(unseen, "unseen-pw-1")
    with capsys.disabled():
        counts = outage(
            stack,
            "mariadb",
            stack.mariadb.stop,
            stack.mariadb.start,
            fresh,
            during=["alice@example.test", unseen],
        )
    # vmaild serves what it has seen (maps and accounts) while the database is down, so
    # mail for known users is still delivered; the run's fresh user (never delivered to)
    # is deferred; the unseen user gets 451 at RCPT.
    assert counts["deferred"] >= 2
    assert counts["refused_4xx"] == 1


# -- "no such user" from authdaemond -------------------------------------------------------


def wait_held(stack: MailStack, result: Submission, recipient: str) -> None:
    """Wait until the queue manager has held ``result`` (``status=deferred (deferred
    transport)``, hold_delivery). It writes that line after the SMTP session has ended, as
    late as a second or more on a busy machine: a log mark taken before it is written
    would let the wait for the real delivery attempt match the hold instead."""
    assert stack.postfix is not None
    stack.postfix.wait_for_log(
        rf"{result.queue_id}: to=<{re.escape(recipient)}>.* status=deferred \(deferred transport\)"
    )


def test_authpipe_disabled_defers(stack: MailStack) -> None:
    """authdaemond started while authProg was not executable: authpipe is disabled and every
    lookup answers "no such user" (not a temporary error), so maildrop -a exits 67. The
    wrapper asks vmaild's mailbox map, which knows the user: deferred, not bounced."""
    assert stack.courier is not None and stack.postfix is not None
    stack.hold_delivery()
    token = f"[disabled-{uuid.uuid4().hex[:8]}]"
    result = stack.submit(SENDER, "alice@example.test", token)
    assert result.accepted
    wait_held(stack, result, "alice@example.test")
    AUTHPROG.chmod(0o644)
    try:
        stack.courier.restart_authdaemond()
        mark = stack.postfix.log_mark()
        stack.release_delivery()
        line = stack.postfix.wait_for_log(
            rf"{result.queue_id}: to=<alice@example.test>.* status=(\w+) (.*)", since=mark
        )
        assert line.group(1) == "deferred", line.group(0)
        assert "vmaild's mailbox map answered 'found'" in line.group(2)
    finally:
        AUTHPROG.chmod(0o755)
        stack.courier.restart_authdaemond()
    stack.postfix.wait_for_empty_queue(30, flush=True)
    assert stack.count_tagged("alice@example.test", token) == 1


def test_mailbox_removed_after_queueing_bounces(stack: MailStack) -> None:
    """The one bounce that is right: the account was deleted after its mail was queued.
    authdaemond says no such user and vmaild's map agrees."""
    assert stack.postfix is not None
    gone = f"gone-{uuid.uuid4().hex[:6]}@example.test"
    stack.add_user(gone, "gone-pw-1")
    stack.hold_delivery()
    result = stack.submit(SENDER, gone, "to be bounced")
    assert result.accepted
    wait_held(stack, result, gone)
    stack.vmailctl("user", "remove", gone)
    mark = stack.postfix.log_mark()
    stack.release_delivery()
    line = stack.postfix.wait_for_log(rf"{result.queue_id}: to=<{gone}>.* status=(\w+)", since=mark)
    assert line.group(1) == "bounced"
    stack.postfix.wait_for_empty_queue(30, flush=True)
