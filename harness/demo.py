"""``make demo``: the seed tutorial on vmaild, brought up, shown working, torn down.

On a fresh Debian 12 machine as root: a private MariaDB with the seed's own SQL (its tables,
section 2), ``vmailctl db migrate``, ``vmaild serve`` as the mail owner, Courier's authdaemond
(through vmaild-authpipe), imapd and pop3d with their SSL variants, and a private Postfix,
all on loopback in a sandbox directory and all configured from the shipped files
(harness/stack/mailstack.py). Then the tutorial's last sections: a domain and a user, mail
in over SMTP, mail out over POP3 and IMAP, plus SMTP AUTH, a database outage and the
metrics. Each step prints one line. ``VMAILD_DEMO_KEEP=1`` keeps the sandbox.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable

from harness.common.procs import run
from harness.common.wait import wait_until
from harness.courier.procs import describe_identity, relay_pids
from harness.stack.mailstack import MailStack

DOMAIN, USER, PASSWORD = "raecoo.com", "sales@raecoo.com", "password"  # the seed's example
ALIAS = "info@raecoo.com"
SENDER = "friend@example.net"


class Demo:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.failures = 0

    def step(self, title: str, action: Callable[[], str]) -> None:
        try:
            detail = action()
        except Exception as e:  # noqa: BLE001 - a demo reports and goes on to tear down
            self.failures += 1
            print(f"  FAIL  {title}: {type(e).__name__}: {e}", flush=True)
            return
        print(f"  ok    {title}" + (f": {detail}" if detail else ""), flush=True)


def postmap(key: str, table: str) -> str:
    r = run(["postmap", "-q", key, table], check=False)
    if r.returncode == 0:
        return r.stdout.strip()
    return "(temporary failure)" if "error" in r.stderr else "(not found)"


def main() -> int:
    demo = Demo()
    stack = MailStack(seed_rows=False)
    print(f"vmaild demo, sandbox {stack.sandbox}")
    try:
        run_demo(demo, stack)
    finally:
        stack.stop()
        print("  ok    everything stopped")
        if os.environ.get("VMAILD_DEMO_KEEP"):
            print(f"sandbox kept: {stack.sandbox}")
        else:
            stack.cleanup()
    took = time.monotonic() - demo.started
    print(f"demo {'passed' if not demo.failures else 'FAILED'} in {took:.1f} s")
    return 1 if demo.failures else 0


def run_demo(demo: Demo, s: MailStack) -> None:
    titles = {
        "tls": lambda: (
            f"self-signed certificate for {s.cert.hostname if s.cert else '?'} "
            f"(STARTTLS, IMAPS, POP3S)"
        ),
        "mariadb": lambda: (
            f"MariaDB on 127.0.0.1:{s.mariadb.port} with the seed's tables, its SQL verbatim"
        ),
        "vmaild": lambda: (
            f"vmailctl db migrate ({last_line(s.migrate_output)}); vmaild as "
            f"{s.vmaild_user or 'root'}: socketmap {s.sockets['socketmap']}, policy "
            f"{s.sockets['policy']}, SMTP AUTH {s.sockets['sasl']}, auth "
            f"{s.rundir / 'auth.sock'}, metrics "
            f":{s.ports['metrics']}"
        ),
        "courier": lambda: (
            f"authdaemond -> vmaild-authpipe; imapd :{s.courier.imap_port}, "
            f"pop3d :{s.courier.pop3_port} (STARTTLS), imapd-ssl "
            f":{s.tls_listeners['imapd'].port}, pop3d-ssl "
            f":{s.tls_listeners['pop3d'].port}"
            if s.courier
            else "?"
        ),
        "postfix": lambda: (
            f"Postfix on 127.0.0.1:{s.postfix.smtp_port} from "
            "postfix/main.cf.vmaild, main.cf.policy, master.cf.vmaild"
            if s.postfix
            else "?"
        ),
    }
    for name, step in s.steps():
        try:
            s.run_step(name, step)
        except Exception as e:
            demo.failures += 1
            print(f"  FAIL  start {name}: {type(e).__name__}: {e}", flush=True)
            return
        print(f"  ok    {titles[name]()} [{s.timings[name]:.1f} s]", flush=True)
    for note in s.notes:
        print(f"  note  {note}", flush=True)
    assert s.postfix is not None
    socketmap = f"socketmap:unix:{s.sockets['socketmap']}"

    # -- the tutorial's section 8, with vmailctl ----------------------------------------
    demo.step(
        f"vmailctl domain add {DOMAIN}",
        lambda: last_line(s.vmailctl("domain", "add", DOMAIN).stdout),
    )

    def add_user() -> str:
        out = s.vmailctl(
            "user", "add", USER, "--password-stdin", "--quota", "50M", input=PASSWORD + "\n"
        ).stdout
        assert (s.maildir(USER) / "new").is_dir()
        return last_line(out) + "; no hello mail needed"

    demo.step(f"vmailctl user add {USER}", add_user)
    demo.step(
        f"vmailctl alias add {ALIAS} {USER}",
        lambda: last_line(s.vmailctl("alias", "add", ALIAS, USER).stdout),
    )
    demo.step(
        "postmap -q SALES+news@Raecoo.com (mailboxes: case, extension)",
        lambda: postmap("SALES+news@Raecoo.com", f"{socketmap}:mailboxes"),
    )
    demo.step(
        "postmap -q x'OR'1'='1@raecoo.com (a key, never SQL)",
        lambda: postmap("x'OR'1'='1@raecoo.com", f"{socketmap}:mailboxes"),
    )

    # -- mail in, mail out --------------------------------------------------------------
    def deliver(sender: str, rcpt: str, subject: str, **kw: object) -> str:
        mark = s.postfix.log_mark() if s.postfix else 0
        count = len(s.messages(USER))
        result = s.submit(sender, rcpt, subject, "email body\n", **kw)  # type: ignore[arg-type]
        if not result.accepted:
            raise RuntimeError(f"{result.code} {result.text}")
        # Both are real conditions: the message lands in the Maildir, and Postfix's status=
        # line (written through postlogd, possibly later) lands in the maillog.
        s.wait_for_messages(USER, count + 1)
        line = s.wait_for_delivery(mark, queue_id=result.queue_id)
        return f"{result.code} queued as {result.queue_id}; {line.relay}: {line.status} {line.text}"

    demo.step(
        f"SMTP from {SENDER} to {USER} (the seed's mailx test)",
        lambda: deliver(SENDER, USER, "email subject"),
    )

    def unknown() -> str:
        result = s.submit(SENDER, "nobody@raecoo.com", "x")
        return f"{result.code} {result.text}"

    demo.step("SMTP to nobody@raecoo.com", unknown)
    demo.step(f"POP3 (STLS) as {USER}", lambda: f"subjects {s.pop3_subjects(USER, PASSWORD)}")
    demo.step(f"IMAP (STARTTLS) as {USER}", lambda: f"subjects {s.imap_subjects(USER, PASSWORD)}")
    demo.step(
        f"IMAPS and POP3S as {USER}",
        lambda: (
            f"{len(s.imap_subjects(USER, PASSWORD, implicit_tls=True))} and "
            f"{len(s.pop3_subjects(USER, PASSWORD, implicit_tls=True))} message(s)"
        ),
    )

    def relays() -> str:
        pids = relay_pids(s.config_path)
        if not pids:
            raise RuntimeError("no vmaild-authpipe process found after the logins")
        return f"{len(pids)} relay(s) started by authdaemond as root, now " + "; ".join(
            sorted({describe_identity(pid) for pid in pids})
        )

    demo.step("vmaild-authpipe", relays)
    demo.step(
        f"SMTP AUTH PLAIN after STARTTLS as {USER}, to {ALIAS}",
        lambda: deliver(USER, ALIAS, "sent with SMTP AUTH", login=(USER, PASSWORD)),
    )

    # -- the database goes away -----------------------------------------------------------
    def stopped_with_a_warm_cache() -> bool:
        """A delivery to USER (every lookup the next one makes), then MariaDB stopped, and
        no cache flush in between. vmaild's change poller can flush once more up to
        check_interval (1 s) after vmailctl's own flush, and this demo gets here sooner;
        once the database is down it cannot flush. If it did flush: start, try again."""
        flushes = total(s.metrics(), "vmaild_cache_flushes_total")
        deliver(SENDER, USER, "just before the outage")
        s.mariadb.stop()
        if total(s.metrics(), "vmaild_cache_flushes_total") == flushes:
            return True
        s.mariadb.start()
        return False

    def outage() -> str:
        try:
            wait_until(
                stopped_with_a_warm_cache,
                60,
                "MariaDB stopped with no cache flush since the lookups for the next delivery",
                interval=0,
            )
            known = deliver(SENDER, USER, "while the database is down")
            newcomer = s.submit(SENDER, "newcomer@raecoo.com", "x")
        finally:
            s.mariadb.start()
        return (
            f"{USER}: {known.split(';')[1].strip()} (vmaild's cache); never-seen address: "
            f"{newcomer.code} {newcomer.text} (try later, not 550)"
        )

    demo.step("MariaDB stopped", outage)

    def metrics() -> str:
        text = s.metrics()
        lookups = {
            m: total(text, "vmaild_lookups_total", f'map="{m}"')
            for m in ("domains", "mailboxes", "forwardings")
        }
        logins = {
            svc: total(text, "vmaild_logins_total", f'service="{svc}"', 'result="ok"')
            for svc in ("imap", "pop3", "smtp")
        }
        decisions = total(text, "vmaild_policy_decisions_total")
        return f"lookups {fmt(lookups)}; logins {fmt(logins)}; policy decisions {decisions:g}"

    demo.step("metrics", metrics)


def total(text: str, name: str, *labels: str) -> float:
    """Sum of a Prometheus counter's samples whose labels include all of ``labels``."""
    result = 0.0
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} ([0-9.e+]+)$", text, re.M):
        if all(label in m.group(1) for label in labels):
            result += float(m.group(2))
    return result


def fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in values.items())


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


if __name__ == "__main__":
    sys.exit(main())
