"""The seed tutorial end to end on vmaild, with the shipped files.

One :class:`harness.stack.mailstack.MailStack` for the module: MariaDB loaded with the
seed's SQL and rows and migrated with ``vmailctl db migrate``; ``vmaild serve`` as vmail; Courier's
authdaemond, imapd, pop3d and their SSL variants; Postfix with postfix/main.cf.vmaild,
main.cf.policy, master.cf.vmaild (delivery through postfix/vmaild-maildrop and maildrop),
Cyrus SASL and STARTTLS. Mail goes in over SMTP and comes out of the Maildir over POP3 and
IMAP, as in the tutorial's last section.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.common.procs import pids_with_cwd_under, run
from harness.common.wait import wait_until
from harness.courier.server import Courier
from harness.mariadb.server import MariaDB
from harness.postfix.config import cool_down
from harness.postfix.server import Postfix
from harness.stack.mailstack import MailStack
from harness.stack.seed import SEED_USERS
from tests.integration.conftest import CourierSession, require
from vmaild import config as config_mod
from vmaild.values import Listen

SENDER = "friend@example.net"  # mail "from the internet": unauthenticated, not ours


def stack_requirements() -> list[str]:
    missing = MariaDB.missing_requirements() + Postfix.missing_requirements()
    missing += Courier.missing_requirements("authpipe")
    missing += [
        tool
        for tool in ("maildrop", "openssl", "setpriv", "systemd-tmpfiles")
        if shutil.which(tool) is None
    ]
    return missing


@pytest.fixture(scope="module")
def stack(courier: CourierSession) -> Iterator[MailStack]:
    require(stack_requirements(), "the mail stack")
    courier.close()  # Courier's paths are global: the session's instance makes way
    with MailStack() as s:
        yield s


def tag() -> str:
    return f"[{uuid.uuid4().hex[:10]}]"


def bounced(stack: MailStack, since: int) -> list[str]:
    return [f"{d.to}: {d.text}" for d in stack.deliveries(since) if d.status == "bounced"]


# -- the walkthrough ------------------------------------------------------------------------


def test_seed_walkthrough(stack: MailStack) -> None:
    """Section 8 of the seed: add a domain and a user, send mail, read it over POP3 and
    IMAP -- without the "send a hello mail first" step and without making the domain
    directory by hand."""
    assert stack.postfix is not None
    mark = stack.postfix.log_mark()
    stack.vmailctl("domain", "add", "walkthrough.test")
    stack.add_user("sales@walkthrough.test", "walk-pw-1")
    box = stack.maildir("sales@walkthrough.test")
    assert (box / "new").is_dir() and box.stat().st_uid == 5000
    # The seed's gotcha: POP3 right after adding the user. An empty mailbox, not an error.
    with stack.pop3("sales@walkthrough.test", "walk-pw-1") as p:
        assert p.stat()[0] == 0
    subject = f"email subject {tag()}"
    assert stack.send(SENDER, "sales@walkthrough.test", subject, "email body\n") == {}
    stack.wait_for_messages("sales@walkthrough.test", 1)
    assert stack.pop3_subjects("sales@walkthrough.test", "walk-pw-1") == [subject]
    assert stack.imap_subjects("sales@walkthrough.test", "walk-pw-1") == [subject]
    # ...and over IMAPS and POP3S (couriertls in front, as /usr/sbin/imapd-ssl runs it).
    assert stack.imap_subjects("sales@walkthrough.test", "walk-pw-1", implicit_tls=True) == [
        subject
    ]
    assert stack.pop3_subjects("sales@walkthrough.test", "walk-pw-1", implicit_tls=True) == [
        subject
    ]
    stack.wait_for_delivery(mark, to="sales@walkthrough.test")  # the log can lag the Maildir
    delivered = [d for d in stack.deliveries(mark) if d.to == "sales@walkthrough.test"]
    assert [(d.relay, d.status) for d in delivered] == [("maildrop", "sent")]


def test_seed_user_with_encrypt_password(stack: MailStack) -> None:
    """The tutorial's own user, stored with MariaDB's ENCRYPT(): mail in, POP3S out."""
    subject = f"for sales {tag()}"
    stack.send(SENDER, "sales@raecoo.com", subject)
    stack.wait_for_messages("sales@raecoo.com", 1)
    assert subject in stack.pop3_subjects(
        "sales@raecoo.com", SEED_USERS["sales@raecoo.com"], implicit_tls=True
    )


def test_unknown_recipient_is_refused_at_rcpt(stack: MailStack) -> None:
    """Never accepted-then-bounced: 550 5.1.1 while the client is still connected."""
    result = stack.submit(SENDER, "nobody@raecoo.com", "x")
    assert result.code == 550 and "5.1.1" in result.text
    result = stack.submit(SENDER, "someone@elsewhere.example", "x")
    assert result.code == 554 and "Relay access denied" in result.text


# -- aliases ----------------------------------------------------------------------------------


def test_forwarding_to_two_destinations(stack: MailStack) -> None:
    """The seed's forwardings table: team@example.test -> alice and bob, one copy each."""
    assert stack.postfix is not None
    mark = stack.postfix.log_mark()
    t = tag()
    stack.send(SENDER, "team@example.test", f"team {t}")
    for user in ("alice@example.test", "bob@example.test"):
        stack.wait_for_messages(user, 1)
    for user in ("alice@example.test", "bob@example.test"):
        assert stack.count_tagged(user, t) == 1
        stack.wait_for_delivery(mark, to=user)  # the log can lag the Maildir
    sent = {(d.to, d.status) for d in stack.deliveries(mark)}
    assert sent == {("alice@example.test", "sent"), ("bob@example.test", "sent")}


def test_catch_all_and_an_existing_mailbox_in_its_domain(stack: MailStack) -> None:
    """@example.org -> postmaster@example.org catches unknown addresses; a mailbox added in
    that domain gets its own mail (vmaild's forwardings map chains email2email, which keeps
    Postfix's order across the seed's two alias maps)."""
    stack.add_user("real@example.org", "real-pw-1")
    caught, own = tag(), tag()
    stack.send(SENDER, "whoever@example.org", f"caught {caught}")
    stack.send(SENDER, "real@example.org", f"own {own}")
    stack.wait_for_messages("real@example.org", 1)
    wait_tagged(stack, "postmaster@example.org", caught)
    assert stack.count_tagged("real@example.org", own) == 1
    assert stack.count_tagged("real@example.org", caught) == 0
    assert stack.count_tagged("postmaster@example.org", own) == 0


def test_extension_address(stack: MailStack) -> None:
    """user+ext@domain is accepted (vmaild strips the extension) and lands in user's Maildir;
    maildrop gets the login without it (${user}@${nexthop}) and the extension as $1."""
    assert stack.postfix is not None
    t = tag()
    result = stack.submit(SENDER, "Bob+Lists@Example.TEST", f"extension {t}")
    assert result.accepted
    wait_tagged(stack, "bob@example.test", t)
    line = stack.postfix.wait_for_log(
        rf"{result.queue_id}: to=<([^>]*)>, orig_to=<([^>]*)>,"
        r".* relay=maildrop,.* status=sent"
    )
    assert line.groups() == ("bob@example.test", "Bob+Lists@Example.TEST")


def wait_tagged(stack: MailStack, address: str, t: str, timeout: float = 30.0) -> None:
    from harness.common.wait import wait_until

    wait_until(
        lambda: stack.count_tagged(address, t) >= 1,
        timeout,
        f"a message tagged {t} in {address}'s Maildir",
        interval=0.05,
    )


# -- quota ------------------------------------------------------------------------------------


def test_over_quota_is_refused_or_deferred_never_bounced(stack: MailStack) -> None:
    """A full mailbox: the policy service refuses at RCPT (452 4.2.2, SIZE= counted); a
    message that gets past it (no SIZE=) is deferred by maildrop's own quota check (it
    keeps maildirsize from the QUOTA field vmaild returns) and delivered once the quota is
    raised. Nothing bounces."""
    assert stack.postfix is not None
    user = "quota@example.test"
    stack.add_user(user, "quota-pw-1", "--quota", "4K")
    mark = stack.postfix.log_mark()
    first = stack.submit(SENDER, user, f"small {tag()}", "x" * 500 + "\n")
    assert first.accepted
    stack.wait_for_messages(user, 1)
    big = "y" * 6000 + "\n"
    refused = stack.submit(SENDER, user, f"big {tag()}", big)
    assert refused.code == 452 and "4.2.2" in refused.text
    t = tag()
    sneaked = stack.submit(SENDER, user, f"big {t}", big, size=False)
    assert sneaked.accepted
    stack.postfix.wait_for_log(
        rf"{sneaked.queue_id}: to=<{user}>.*status=deferred.*over quota", since=mark
    )
    assert stack.count_tagged(user, t) == 0
    assert "4096S" in (stack.maildir(user) / "maildirsize").read_text()
    stack.vmailctl("user", "quota", user, "1M")
    stack.postfix.flush()
    wait_tagged(stack, user, t)
    assert bounced(stack, mark) == []


# -- SMTP AUTH, STARTTLS, metrics -------------------------------------------------------------


def test_smtp_auth_only_after_starttls(stack: MailStack) -> None:
    """AUTH is offered only under TLS (smtpd_tls_auth_only); then PLAIN works with the
    seed's ENCRYPT() password through Cyrus SASL -> authdaemond -> vmaild, and the
    Received: header names the login (smtpd_sasl_authenticated_header)."""
    with stack.smtp() as s:
        s.ehlo("client.example.net")
        assert "starttls" in s.esmtp_features and "auth" not in s.esmtp_features
        assert "30720000" in s.esmtp_features["size"]  # message_size_limit, as in the seed
        s.starttls(context=stack.client_tls())
        s.ehlo("client.example.net")
        assert set(s.esmtp_features["auth"].split()) >= {"PLAIN", "LOGIN"}
    t = tag()
    stack.send(
        "bob@example.test",
        "alice@example.test",
        f"authenticated {t}",
        login=("bob@example.test", SEED_USERS["bob@example.test"]),
    )
    wait_tagged(stack, "alice@example.test", t)
    message = next(p for p in stack.messages("alice@example.test") if t.encode() in p.read_bytes())
    assert b"(Authenticated sender: bob@example.test)" in message.read_bytes()


def test_wrong_password_is_535(stack: MailStack) -> None:
    import smtplib

    with stack.smtp_session(starttls=True) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login("bob@example.test", "not-the-password")
        assert e.value.smtp_code == 535


def test_submission_needs_tls_then_a_login(stack: MailStack) -> None:
    """Port 587 (master.cf.vmaild's submission service): nothing before STARTTLS
    (smtpd_tls_security_level=encrypt), and after it nothing without a login, not even
    mail for a local mailbox (smtpd_client_restrictions)."""
    with stack.smtp(submission=True) as s:
        s.ehlo("client.example.net")
        assert "starttls" in s.esmtp_features and "auth" not in s.esmtp_features
        code, text = s.mail(SENDER)
        assert code == 530 and b"STARTTLS" in text, (code, text)
    result = stack.submit(SENDER, "alice@example.test", f"no login {tag()}", submission=True)
    assert result.code == 554 and "5.7.1" in result.text and not result.accepted, result


def test_submission_delivers_and_checks_the_sender(stack: MailStack) -> None:
    """A logged-in client on port 587: its mail is delivered, with the login in
    Received:, and vmaild's policy refuses a sender address the login does not own."""
    bob = ("bob@example.test", SEED_USERS["bob@example.test"])
    t = tag()
    sent = stack.submit(
        "bob@example.test", "alice@example.test", f"via 587 {t}", login=bob, submission=True
    )
    assert sent.accepted, sent
    wait_tagged(stack, "alice@example.test", t)
    message = next(p for p in stack.messages("alice@example.test") if t.encode() in p.read_bytes())
    assert b"(Authenticated sender: bob@example.test)" in message.read_bytes()
    forged = stack.submit(
        "alice@example.test", "sales@raecoo.com", f"forged {tag()}", login=bob, submission=True
    )
    assert forged.code == 553 and "not owned" in forged.text, forged


def test_submission_defers_while_the_policy_service_cannot_be_asked(stack: MailStack) -> None:
    """The submission service's default_action=DEFER_IF_PERMIT: with the policy service
    unreachable (pointed at a missing socket in master.cf here), a logged-in client's mail
    is deferred (450), never sent with its sender unchecked."""
    assert stack.postfix is not None
    master_cf = stack.postfix.config_dir / "master.cf"
    shipped = master_cf.read_text()
    policy = "unix:vmaild/policy,"
    assert shipped.count(policy) == 1  # the submission entry's; port 25's is in main.cf
    master_cf.write_text(shipped.replace(policy, "unix:vmaild/nowhere,"))
    stack.postfix.reload()
    try:
        result = stack.submit(
            "bob@example.test",
            "alice@example.test",
            f"policy away {tag()}",
            login=("bob@example.test", SEED_USERS["bob@example.test"]),
            submission=True,
        )
    finally:
        master_cf.write_text(shipped)
        stack.postfix.reload()
    assert result.code == 450 and "4.7.1" in result.text and not result.accepted, result


def test_metrics_show_the_lookups_and_logins(stack: MailStack) -> None:
    metrics = stack.metrics()
    for name in ("domains", "mailboxes", "forwardings"):
        assert f'vmaild_lookups_total{{map="{name}"' in metrics
    assert 'vmaild_logins_total{result="ok",service="smtp"}' in metrics
    assert 'vmaild_logins_total{result="ok",service="pop3"}' in metrics
    assert "vmaild_policy_decisions_total{" in metrics


# -- who can reach vmaild's sockets ----------------------------------------------------------


def connects_as(user: str, listen: Listen) -> bool:
    """Can ``user``, with its groups (Postfix's daemons get their user's groups), connect?"""
    target = repr(listen.path) if listen.path else repr((listen.host, listen.port))
    family = "AF_UNIX" if listen.path else "AF_INET"
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.socket(socket.{family}).connect({target})\n"
        "except OSError as e:\n"
        "    print('refused', e.errno)\n"
        "else:\n"
        "    print('connected')\n"
    )
    gid = pwd.getpwnam(user).pw_gid
    result = run(
        ["setpriv", f"--reuid={user}", f"--regid={gid}", "--init-groups", "/usr/bin/python3"],
        input=code,
        cwd="/",
    )
    assert result.stdout.split()[0] in ("connected", "refused"), result
    return result.stdout.strip() == "connected"


def test_only_postfix_reaches_the_policy_and_socketmap_listeners(stack: MailStack) -> None:
    """Any local account could send the policy service a request in anybody's name (one
    END-OF-MESSAGE with recipient_count=500 blocked that login's mail for an hour) and
    look anything up. The shipped configuration serves both on unix sockets that only
    Postfix (group postfix), vmail (the maildrop wrapper) and root can connect to."""
    cfg = config_mod.load(str(stack.config_path))
    for listen in (cfg.policy.listen, cfg.socketmap.listen):
        assert listen is not None
        assert not connects_as("nobody", listen), listen
        assert connects_as("postfix", listen), listen
        assert connects_as("vmail", listen), listen
        assert listen.path is not None
        st = os.stat(listen.path)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, grp.getgrgid(st.st_gid).gr_name) == (
            0o660,
            5000,
            "postfix",
        )


def test_chrooted_postfix_daemons_reach_the_sockets(stack: MailStack) -> None:
    """Debian's master.cf chroots cleanup (virtual_alias_maps), trivial-rewrite
    (virtual_mailbox_domains) and smtpd: main.cf names the sockets relative to the queue
    directory, which is a chrooted daemon's / and every daemon's working directory."""
    pf = stack.postfix
    assert pf is not None
    services = ["cleanup/unix", "rewrite/unix", f"127.0.0.1:{pf.smtp_port}/inet"]

    def chroot(flag: str) -> None:
        run(["postconf", "-c", str(pf.config_dir), "-F", *(f"{s}/chroot={flag}" for s in services)])
        cool_down(pf.config_dir / "master.cf")
        pf.reload()

    decisions = policy_decisions(stack)
    chroot("y")
    try:
        t = tag()
        assert stack.send(SENDER, "team@example.test", f"chroot {t}") == {}
        for user in ("alice@example.test", "bob@example.test"):
            stack.wait_for_messages(user, 1)
            wait_until(lambda u=user: stack.count_tagged(u, t) == 1, 30, f"{user} got it")
        result = stack.submit(SENDER, "nobody@raecoo.com", "x")
        assert result.code == 550 and "5.1.1" in result.text, result  # an answer, not 451
        roots = {
            os.readlink(f"/proc/{pid}/root")
            for pid in pids_with_cwd_under(pf.queue_dir)
            if Path(f"/proc/{pid}/comm").read_text().strip() in ("cleanup", "trivial-rewrite")
        }
        assert roots == {str(pf.queue_dir)}, roots  # they did run chrooted
        assert policy_decisions(stack) > decisions  # smtpd asked the policy service
    finally:
        chroot("n")


def policy_decisions(stack: MailStack) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in stack.metrics().splitlines()
        if line.startswith("vmaild_policy_decisions_total{")
    )


# -- the running configuration ---------------------------------------------------------------


def test_running_postfix_configuration_is_clean(stack: MailStack) -> None:
    """The instance the tests ran on: `postconf -n` without any warning, and every shipped
    setting in effect (with the sandbox's ports and paths)."""
    from harness.common.procs import run

    assert stack.postfix is not None
    result = run(["postconf", "-c", str(stack.postfix.config_dir), "-n"])
    assert result.stderr == ""
    for name, value in stack.postfix_main_cf().items():
        assert stack.postfix.postconf_value(name) == value, name


def test_vmaild_reload_and_its_notifications(stack: MailStack) -> None:
    """systemd's ExecReload (SIGHUP): RELOADING=1 then READY=1 on NOTIFY_SOCKET, as
    Type=notify expects, and mail keeps flowing."""
    assert stack.vmaild is not None
    stack.vmaild.reload()
    t = tag()
    stack.send(SENDER, "alice@example.test", f"after reload {t}")
    wait_tagged(stack, "alice@example.test", t)
    assert 'vmaild_config_reloads_total{result="ok"} 1.0' in stack.metrics()
