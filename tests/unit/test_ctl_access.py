"""vmaild.ctl.access: how ``user show`` prints the login details."""

from __future__ import annotations

import datetime as dt

from vmaild.ctl import access, output


def test_login_details_as_lines() -> None:
    details = {
        "access": {"imap": "on", "pop3": "off", "smtp": "app"},
        "app_passwords": 2,
        "last_login": {
            "imap": {"at": dt.datetime(2026, 12, 2, 15, 0, 1), "from": None},
            "smtp": {"at": dt.datetime(2026, 12, 2, 16, 0, 0), "from": "192.0.2.1"},
            "sieve": {"at": dt.datetime(2026, 1, 1), "from": "2001:db8::1"},
        },
    }
    flat = access.flatten(details)
    labels = access.labels(details)
    formats = access.formats(flat)
    lines = output.record([(label, formats[key](None)) for key, label in labels])
    assert lines.splitlines() == [
        "imap access       on",
        "pop3 access       off",
        "smtp access       app",
        "app passwords     2",
        "last imap login   2026-12-02 15:00:01",
        "last pop3 login   never",
        "last smtp login   2026-12-02 16:00:00 from 192.0.2.1",
        "last sieve login  2026-01-01 00:00:00 from 2001:db8::1",
    ]
