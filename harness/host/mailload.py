"""A steady SMTP load with a ledger: what was sent, deferred, rejected, and what arrived.

Each message carries ``X-Vmaild-Seq: RUN-N``. The sender behaves like an MTA: a 4xx reply or
a refused connection keeps the message for another try (counted as deferred); a 5xx reply is
a rejection, which for the existing users and aliases the tests send to is a bounce. Reading
the Maildirs back afterwards (:func:`maildir_seqs`) counts every copy of every message, so a
lost or duplicated message cannot hide.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path

HEADER = "X-Vmaild-Seq"


@dataclass
class Ledger:
    run: str
    #: seq -> the Maildirs (relative to the mail base) the message must reach.
    expected: dict[str, tuple[str, ...]] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    deferred: int = 0  # 4xx or connection failures, tried again later
    #: why, per deferral: the reply ("451 4.3.0 ...") or the exception's name
    reasons: Counter[str] = field(default_factory=Counter)
    rejected: dict[str, str] = field(default_factory=dict)  # seq -> 5xx reply
    pending: list[tuple[str, str]] = field(default_factory=list)  # (seq, recipient)
    #: sent, but the reply to the end of data was lost: a second copy may be right.
    ambiguous: set[str] = field(default_factory=set)


class SmtpLoad:
    """Sends ``rate`` messages a second, round robin over ``targets`` (recipient -> the
    Maildirs it delivers to), from a background thread, until :meth:`stop`."""

    def __init__(
        self,
        run: str,
        targets: dict[str, tuple[str, ...]],
        sender: str,
        rate: float = 4.0,
        host: str = "127.0.0.1",
        port: int = 25,
    ) -> None:
        self.ledger = Ledger(run)
        self.targets = list(targets.items())
        self.sender = sender
        self.interval = 1.0 / rate
        self.host, self.port = host, port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"smtp-load-{run}", daemon=True)
        self._n = 0
        self._lock = threading.Lock()

    def __enter__(self) -> SmtpLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _send(self, seq: str, rcpt: str) -> None:
        body = (
            f"From: <{self.sender}>\r\nTo: <{rcpt}>\r\nSubject: load {seq}\r\n"
            f"Message-ID: <{seq}@load.test>\r\n{HEADER}: {seq}\r\n\r\n"
            f"message {seq} to {rcpt}\r\n"
        ).encode()
        led = self.ledger
        smtp = smtplib.SMTP(timeout=30)
        stage = "connect"
        try:
            smtp.connect(self.host, self.port)
            stage = "envelope"
            smtp.ehlo()
            code, msg = smtp.mail(self.sender)
            if code != 250:
                return self._refused(seq, rcpt, code, msg)
            code, msg = smtp.rcpt(rcpt)
            if code not in (250, 251):
                return self._refused(seq, rcpt, code, msg)
            stage = "data"
            code, msg = smtp.data(body)
            if code != 250:
                return self._refused(seq, rcpt, code, msg)
            # Accepted: the reply to the end of data is what counts (RFC 5321 4.1.1.4); what
            # happens to QUIT afterwards (a 421 from a restarting Postfix) changes nothing.
            led.accepted.add(seq)
        except smtplib.SMTPResponseException as exc:
            self._refused(seq, rcpt, exc.smtp_code, exc.smtp_error)
        except (OSError, smtplib.SMTPException) as exc:
            if stage == "data":
                # The connection broke while the message was sent or before its reply came:
                # the server may have queued it. Sent again, as an MTA would, so a copy too
                # many is possible (RFC 1047); such messages are counted apart.
                led.ambiguous.add(seq)
            led.deferred += 1
            led.reasons[f"{stage}: {type(exc).__name__}"] += 1
            led.pending.append((seq, rcpt))
        finally:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()

    def _refused(self, seq: str, rcpt: str, code: int, msg: bytes | str) -> None:
        led = self.ledger
        if 400 <= code < 500:
            led.deferred += 1
            text = msg.decode(errors="replace") if isinstance(msg, bytes) else msg
            led.reasons[f"{code} {text[:120]}"] += 1
            led.pending.append((seq, rcpt))
        else:
            led.rejected[seq] = f"{code} {msg!r}"

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                self._n += 1
                seq = f"{self.ledger.run}-{self._n}"
                rcpt, boxes = self.targets[self._n % len(self.targets)]
                self.ledger.expected[seq] = boxes
            self._send(seq, rcpt)
            self._retry_pending(limit=2)
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _retry_pending(self, limit: int) -> None:
        for _ in range(min(limit, len(self.ledger.pending))):
            seq, rcpt = self.ledger.pending.pop(0)
            self._send(seq, rcpt)

    def stop(self, drain_timeout: float = 120) -> Ledger:
        """Stop sending new messages, then retry the deferred ones until all are accepted."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        deadline = time.monotonic() + drain_timeout
        while self.ledger.pending and time.monotonic() < deadline:
            self._retry_pending(limit=len(self.ledger.pending))
            if self.ledger.pending:
                time.sleep(1)
        return self.ledger


def maildir_seqs(base: Path) -> Counter[tuple[str, str]]:
    """(Maildir relative to ``base``, seq) -> copies found, over new/ and cur/."""
    found: Counter[tuple[str, str]] = Counter()
    parser = BytesHeaderParser()
    for sub in ("new", "cur"):
        for path in base.glob(f"**/{sub}/*"):
            try:
                with path.open("rb") as f:
                    seq = parser.parse(f).get(HEADER)
            except OSError:
                continue  # moved between new/ and cur/ while reading: seen on the other pass
            if seq:
                found[(str(path.parent.parent.relative_to(base)), seq.strip())] += 1
    return found


@dataclass
class Tally:
    sent: int
    deferred: int
    rejected: int
    delivered: int
    lost: list[tuple[str, str]]
    duplicated: list[tuple[str, str]]
    unexpected: list[tuple[str, str]]
    #: copies too many of messages whose end-of-data reply was lost and that were sent again
    #: (the SMTP client's ambiguity, RFC 1047): reported, not a loss of vmaild's making.
    resent_copies: list[tuple[str, str]]

    def line(self, phase: str) -> str:
        return (
            f"{phase}: sent {self.sent}, deferred (4xx tries) {self.deferred}, bounced/rejected "
            f"{self.rejected}, delivered {self.delivered}, lost {len(self.lost)}, "
            f"duplicated {len(self.duplicated)}, resent after a lost reply "
            f"{len(self.resent_copies)}"
        )

    @property
    def clean(self) -> bool:
        return not (self.rejected or self.lost or self.duplicated or self.unexpected)


def tally(ledger: Ledger, found: Counter[tuple[str, str]]) -> Tally:
    mine = {k: v for k, v in found.items() if k[1].startswith(ledger.run + "-")}
    want = {(box, seq) for seq, boxes in ledger.expected.items() for box in boxes}
    return Tally(
        sent=len(ledger.expected),
        deferred=ledger.deferred,
        rejected=len(ledger.rejected),
        delivered=sum(1 for k in want if mine.get(k, 0) >= 1),
        lost=sorted(k for k in want if k not in mine),
        duplicated=sorted(k for k, n in mine.items() if n > 1 and k[1] not in ledger.ambiguous),
        unexpected=sorted(k for k in mine if k not in want),
        resent_copies=sorted(k for k, n in mine.items() if n > 1 and k[1] in ledger.ambiguous),
    )
