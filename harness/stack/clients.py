"""What :class:`harness.stack.mailstack.MailStack`'s tests and demo do as mail clients and
users: SMTP submission, IMAP and POP3 sessions (STARTTLS or implicit TLS), and reading
the Maildirs and the maillog."""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import re
import smtplib
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from harness.common.ports import LOOPBACK
from harness.common.procs import tail
from harness.common.tls import Certificate
from harness.common.wait import HarnessTimeout, wait_until
from harness.courier.server import Courier
from harness.courier.tls import TlsListener
from harness.postfix.server import Postfix


@dataclass
class Delivery:
    """One ``status=`` line of the maillog."""

    queue_id: str
    to: str
    relay: str
    status: str
    text: str


_STATUS = re.compile(
    r" postfix/(?P<svc>[\w/-]+)\[\d+\]: (?P<qid>[0-9A-F]+): to=<(?P<to>[^>]*)>,"
    r".*? relay=(?P<relay>[^,]+),.*? status=(?P<status>\w+) (?P<text>.*)$",
    re.M,
)


@dataclass(frozen=True)
class Submission:
    """What an SMTP client got for one message (see :meth:`MailStack.submit`)."""

    code: int
    text: str
    queue_id: str | None

    @property
    def accepted(self) -> bool:
        return self.queue_id is not None

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


class StackClients:
    """The client half of :class:`harness.stack.mailstack.MailStack` (a mixin: the attributes
    below are MailStack's)."""

    ports: dict[str, int]
    base: Path
    tls: bool
    cert: Certificate | None
    courier: Courier | None
    postfix: Postfix | None
    tls_listeners: dict[str, TlsListener]

    def maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.base / domain / local

    def messages(self, address: str) -> list[Path]:
        box = self.maildir(address)
        found: list[Path] = []
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                found += [p for p in (box / sub).iterdir() if p.is_file()]
        return sorted(found)

    def count_tagged(self, address: str, tag: str) -> int:
        """How many messages in the Maildir carry ``tag`` (a unique Subject token)."""
        needle = tag.encode()
        return sum(1 for p in self.messages(address) if needle in p.read_bytes())

    def wait_for_messages(self, address: str, count: int, timeout: float = 30.0) -> list[Path]:
        assert self.postfix is not None
        try:
            wait_until(
                lambda: len(self.messages(address)) >= count,
                timeout,
                f"{count} message(s) in {self.maildir(address)}",
                interval=0.05,
            )
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n--- maillog ---\n{tail(self.postfix.log_file, 40)}") from None
        return self.messages(address)

    def smtp(self, timeout: float = 30.0, *, submission: bool = False) -> smtplib.SMTP:
        """A client of port 25 (the harness's ``smtp inet``), or with ``submission`` of
        the shipped submission service (port 587 in production)."""
        assert self.postfix is not None
        port = self.ports["submission"] if submission else self.postfix.smtp_port
        return smtplib.SMTP(LOOPBACK, port, timeout=timeout)

    @contextlib.contextmanager
    def smtp_session(
        self,
        *,
        login: tuple[str, str] | None = None,
        starttls: bool = False,
        submission: bool = False,
    ) -> Iterator[smtplib.SMTP]:
        """A greeted SMTP session: EHLO; STARTTLS when asked, for a ``login`` (AUTH is
        offered only under TLS, smtpd_tls_auth_only) and on the submission port; then AUTH."""
        with self.smtp(submission=submission) as client:
            client.ehlo("client.example.net")
            if starttls or login or submission:
                client.starttls(context=self.client_tls())
                client.ehlo("client.example.net")
            if login:
                client.login(*login)
            yield client

    def client_tls(self) -> ssl.SSLContext:
        """Clients check the sandbox certificate and its name, as a careful MUA would."""
        assert self.cert is not None
        ctx = self.cert.client_context()
        ctx.check_hostname = False  # we connect to 127.0.0.1, the certificate names HOSTNAME
        return ctx

    def message(
        self, sender: str, recipients: Sequence[str], subject: str, body: str = "hello\n"
    ) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = subject
        msg.set_content(body)
        return msg

    def send(
        self,
        sender: str,
        recipients: str | Sequence[str],
        subject: str,
        body: str = "hello\n",
        *,
        login: tuple[str, str] | None = None,
        starttls: bool = False,
    ) -> dict[str, tuple[int, bytes]]:
        """Send one message through Postfix; ``login`` implies STARTTLS (AUTH is offered
        only under TLS, smtpd_tls_auth_only). Returns smtplib's refused recipients."""
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        with self.smtp_session(login=login, starttls=starttls) as client:
            return client.send_message(
                self.message(sender, rcpts, subject, body), from_addr=sender, to_addrs=rcpts
            )

    @contextlib.contextmanager
    def imap(
        self, address: str, password: str, *, implicit_tls: bool = False
    ) -> Iterator[imaplib.IMAP4]:
        """A logged-in IMAP session: STARTTLS on the imapd port (IMAP_TLS_REQUIRED=1 in
        courier/imapd-ssl.vmaild), or IMAPS on the imapd-ssl port."""
        assert self.courier is not None and self.courier.imap_port is not None
        client: imaplib.IMAP4
        if implicit_tls:
            client = imaplib.IMAP4_SSL(
                LOOPBACK,
                self.tls_listeners["imapd"].port,
                ssl_context=self.client_tls(),
                timeout=30,
            )
        else:
            client = imaplib.IMAP4(LOOPBACK, self.courier.imap_port, timeout=30)
            if self.tls:
                client.starttls(ssl_context=self.client_tls())
        try:
            client.login(address, password)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    @contextlib.contextmanager
    def pop3(
        self, address: str, password: str, *, implicit_tls: bool = False
    ) -> Iterator[poplib.POP3]:
        """A logged-in POP3 session (STLS on the pop3d port, or POP3S)."""
        assert self.courier is not None and self.courier.pop3_port is not None
        client: poplib.POP3
        if implicit_tls:
            client = poplib.POP3_SSL(
                LOOPBACK, self.tls_listeners["pop3d"].port, context=self.client_tls(), timeout=30
            )
        else:
            client = poplib.POP3(LOOPBACK, self.courier.pop3_port, timeout=30)
            if self.tls:
                client.stls(context=self.client_tls())
        try:
            client.user(address)
            client.pass_(password)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.quit()

    def imap_subjects(self, address: str, password: str, **kw: bool) -> list[str]:
        with self.imap(address, password, **kw) as m:
            typ, data = m.select("INBOX")
            count = int(data[0] or 0) if typ == "OK" else 0
            if not count:
                return []
            typ, fetched = m.fetch(f"1:{count}", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            return [
                part[1].decode().strip().removeprefix("Subject: ")
                for part in fetched
                if isinstance(part, tuple)
            ]

    def pop3_subjects(self, address: str, password: str, **kw: bool) -> list[str]:
        with self.pop3(address, password, **kw) as p:
            count = p.stat()[0]
            subjects = []
            for i in range(1, count + 1):
                lines = p.top(i, 0)[1]
                subjects += [line.decode()[9:] for line in lines if line.startswith(b"Subject: ")]
            return subjects

    def deliveries(self, since: int = 0) -> list[Delivery]:
        """Every ``status=`` line in the maillog after offset ``since``, as far as it has
        been written: Postfix logs through postlogd, so a message can be in its Maildir
        (and out of the queue) before its line is. See :meth:`wait_for_delivery`."""
        assert self.postfix is not None
        return [
            Delivery(m["qid"], m["to"], m["relay"], m["status"], m["text"])
            for m in _STATUS.finditer(self.postfix.log_text(), since)
        ]

    def wait_for_delivery(
        self,
        since: int = 0,
        *,
        queue_id: str | None = None,
        to: str | None = None,
        timeout: float = 30.0,
    ) -> Delivery:
        """The first ``status=`` line after offset ``since`` for ``queue_id`` and/or the
        recipient ``to``, waiting until the maillog has it; a timeout names what was
        missing and shows the log's tail."""
        assert self.postfix is not None
        if queue_id is None and to is None:
            raise ValueError("wait_for_delivery needs a queue_id or a recipient")

        def found() -> Delivery | None:
            return next(
                (
                    d
                    for d in self.deliveries(since)
                    if queue_id in (None, d.queue_id) and to in (None, d.to)
                ),
                None,
            )

        what = " ".join(x for x in (queue_id and f"queue id {queue_id}", to and f"to=<{to}>") if x)
        try:
            line = wait_until(
                found,
                timeout,
                f"a status= line for {what} in the maillog after offset {since}",
                interval=0.05,
            )
        except TimeoutError as e:
            raise HarnessTimeout(
                f"{e}\n--- maillog ---\n{tail(self.postfix.log_file, 40)}"
            ) from None
        assert line is not None  # wait_until returns only a truthy value
        return line

    def submit(
        self,
        sender: str,
        recipient: str,
        subject: str,
        body: str = "hello\n",
        *,
        login: tuple[str, str] | None = None,
        size: bool = True,
        submission: bool = False,
    ) -> Submission:
        """One message to one recipient, step by step, the way an MTA client sees it:
        the RCPT or DATA reply, and the queue id when Postfix took the message. ``size``
        False leaves out SIZE= (the policy service then cannot refuse a big message at
        RCPT, only maildrop's quota can). ``submission`` uses the submission port, with
        STARTTLS whether or not there is a ``login``."""
        data = self.message(sender, [recipient], subject, body).as_bytes()
        with self.smtp_session(login=login, submission=submission) as client:
            options = [f"SIZE={len(data)}"] if size else []
            code, text = client.mail(sender, options)
            if code == 250:
                code, text = client.rcpt(recipient)
            if code not in (250, 251):
                client.rset()
                return Submission(code, text.decode(errors="replace"), None)
            code, text = client.data(data)
        reply = text.decode(errors="replace")
        queued = re.search(r"queued as ([0-9A-F]+)", reply)
        return Submission(code, reply, queued.group(1) if queued else None)
