"""Postfix's smtpd using vmaild's tcp: maps: what a sending server sees at RCPT time.

Known users get 250, unknown ones 550 (Postfix's own "User unknown" from a `500` answer),
and with the database down an uncached user gets 451 4.3.0: deferred, never bounced.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.mariadb.server import MariaDB
from harness.postfix.server import Postfix
from harness.stack import seed
from harness.vmaild.server import Vmaild, config_text, seed_ports

pytestmark = pytest.mark.integration


def rcpt(pf: Postfix, address: str) -> tuple[int, str]:
    with pf.smtp() as s:
        s.ehlo("client.example.net")
        s.mail("sender@example.net")
        code, text = s.rcpt(address)
        return code, text.decode()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[MariaDB, Postfix]]:
    with MariaDB() as m:
        db = seed.load_seed(m)
        ports = seed_ports()
        cfg = config_text(
            db_port=m.port,
            dbname=db.dbname,
            user=db.user,
            password=db.password,
            ports=ports,
            cache="ttl = 60\nnegative_ttl = 60\nstale_ttl = 3600",
        )
        main_cf = {
            "virtual_alias_domains": "",
            "virtual_mailbox_domains": f"tcp:127.0.0.1:{ports['domains']}",
            "virtual_mailbox_maps": f"tcp:127.0.0.1:{ports['mailboxes']}",
            "virtual_alias_maps": (
                f"tcp:127.0.0.1:{ports['forwardings']}, tcp:127.0.0.1:{ports['email2email']}"
            ),
            "virtual_transport": "discard:",
            "smtpd_recipient_restrictions": "reject_unauth_destination",
        }
        with Vmaild(cfg, tmp_path / "vmaild"), Postfix(main_cf) as pf:
            yield m, pf


def test_rcpt_codes_and_outage_defers(stack: tuple[MariaDB, Postfix]) -> None:
    m, pf = stack
    assert rcpt(pf, "sales@raecoo.com")[0] == 250
    assert rcpt(pf, "SALES+news@RAECOO.com")[0] == 250
    assert rcpt(pf, "info@raecoo.com")[0] == 250  # an alias
    assert rcpt(pf, "anyone@example.org")[0] == 250  # the seed's catch-all
    code, text = rcpt(pf, "nobody@raecoo.com")
    assert code == 550 and "5.1.1" in text
    code, _ = rcpt(pf, "someone@not-our-domain.test")
    assert code == 554  # relay access denied: the domain is not ours

    m.stop()
    try:
        # A user whose answers are cached (the mailbox, and the "not found" of the alias
        # maps that smtpd asks first) keeps receiving mail through the outage.
        assert rcpt(pf, "sales@raecoo.com")[0] == 250
        assert rcpt(pf, "nobody@raecoo.com")[0] == 550  # a fresh cached "not found"
        # Anything the cache cannot answer is deferred, never rejected.
        for never_seen in ("alice@example.test", "ghost@raecoo.com"):
            code, text = rcpt(pf, never_seen)
            assert code == 451 and "4.3.0" in text, (never_seen, text)
    finally:
        m.start()
    # Back without restarting anything. (A new address: smtpd keeps a one-entry cache of
    # its last address resolution, failures included, so the same smtpd process would
    # repeat the 451 for alice without asking trivial-rewrite again.)
    assert rcpt(pf, "bob@example.test")[0] == 250


def test_message_is_accepted_end_to_end(stack: tuple[MariaDB, Postfix]) -> None:
    _, pf = stack
    refused = pf.send("sender@example.net", ["sales@raecoo.com", "team@example.test"])
    assert refused == {}
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        pf.send("sender@example.net", ["nobody@raecoo.com"])
