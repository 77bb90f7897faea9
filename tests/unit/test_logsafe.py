"""logsafe.py: client data escaped and cut short for the log, and the throttle that turns a
flood of one event into a few counted lines. The listeners' use of it is tested with each
listener (a 100 KB unknown map name, CR and escapes in policy attributes, a password typed
as a login name)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from passlib.hash import sha512_crypt

from tests.unit.fakes import FakeApp
from tests.unit.fakes_auth import aio
from tests.unit.fakes_auth import make_service as make_auth_service
from tests.unit.fakes_listeners import LogVolume, exchange, run_server_with_app
from tests.unit.fakes_policy import FakePolicyDB, decide, request
from tests.unit.fakes_policy import make_service as make_policy_service
from vmaild.codec import authpipe as codec
from vmaild.logsafe import Throttle, shown


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("joe@example.com", "joe@example.com"),
        ("a\rb\nc\td", "a\\rb\\nc\\td"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("back\\slash", "back\\\\slash"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("line\u2028sep", "line\\u2028sep"),
        ("\x7f\x85", "\\x7f\\x85"),
        ("üñí€😀", "üñí€😀"),  # printable: as it is
        (b"bytes\xff\xfe ok", "bytes\\xff\\xfe ok"),
        (b"caf\xc3\xa9", "café"),
        ("", ""),
    ],
)
def test_shown_escapes_what_could_forge_a_line_or_drive_a_terminal(
    value: str | bytes, expected: str
) -> None:
    assert shown(value) == expected


def test_shown_cuts_long_values_with_a_marker() -> None:
    text = shown("m" * 100_000)
    assert text == "m" * 200 + "...[99800 more]"
    escaped = shown("\x1b" * 1000, limit=20)
    assert escaped.startswith("\\x1b" * 5) and escaped.endswith("...[995 more]")
    assert len(shown("\x00" * 10**6)) < 300


def test_plain_text_is_returned_as_it_is() -> None:
    text = "joe@example.com"
    assert shown(text) is text


def test_throttle_logs_the_first_then_once_per_interval_with_a_count() -> None:
    now = [0.0]
    throttle = Throttle(60.0, lambda: now[0])
    seen = []
    for t in (0, 1, 2, 3, 61, 62, 200):
        now[0] = t
        seen.append(throttle.event())
    assert seen == [1, None, None, None, 4, None, 2]
    assert throttle.pending() == 0
    throttle.event()
    assert throttle.pending() == 1 and throttle.pending() == 0


# -- where client data reaches the log ----------------------------------------------------


def test_a_huge_unknown_map_name_is_one_short_line() -> None:
    name = b"x" * 99_000  # about 100 KB: the largest request the socketmap takes
    payload = name + b" key"
    netstring = b"%d:%s," % (len(payload), payload)

    async def scenario(port: int, db: Any, app: FakeApp) -> None:
        with LogVolume() as volume:
            got = await exchange(port, netstring * 5, 10**6, half_close=True)
            await asyncio.sleep(0.05)
        assert got == b"16:PERM unknown map," * 5
        assert len(volume.lines) == 2 and volume.size < 400, volume.lines
        assert volume.lines[0].startswith("socketmap: unknown map 'xxx")
        assert volume.lines[1] == "socketmap: 4 more problems on the connection just closed"

    run_server_with_app(lambda app: app.socketmap, scenario)


def test_policy_attributes_are_escaped_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    service, _ = make_policy_service(FakePolicyDB(), "ratelimit_check = no\n")
    caplog.set_level(logging.INFO, "vmaild.policy")
    evil = "x@example.com\r\nFAKE: login root ok\x1b]0;owned\x07"
    action = decide(
        service,
        request(sender=evil, sasl_method="plain", sasl_username="alice@example.com"),
    )
    assert action.startswith("553 ")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "\r" not in line and "\n" not in line and "\x1b" not in line and "\x07" not in line
    assert "sender=<x@example.com\\r\\nFAKE: login root ok\\x1b]0;owned\\x07>" in line


@aio
async def test_a_login_name_that_matches_no_account_stays_out_of_the_info_log(
    tmp_path: Path,
) -> None:
    service, db = make_auth_service(tmp_path, "rehash = no\nfail_delay = 0\n")
    db.add("joe@example.test", sha512_crypt.using(rounds=1000).hash("s3cret"))
    typed = "Summer2026!secret"  # a password typed into the user name field
    body = f"imap\nlogin\n{typed}\nwhatever\n".encode()
    request_ = (b"AUTH %d\n" % len(body)) + body
    with LogVolume() as volume:
        (decoded,) = codec.AuthpipeDecoder().feed(request_)
        assert await service.answer(decoded) == codec.FAIL
    assert not any(typed in line for line in volume.lines), volume.lines
    assert volume.lines == [
        "login (a name matching no account) (service imap) failed: unknown account"
    ]
    logger = logging.getLogger("vmaild")
    with LogVolume() as volume:
        logger.setLevel(logging.DEBUG)
        volume.setLevel(logging.DEBUG)
        await service.answer(decoded)
    assert any(typed in line for line in volume.lines)  # shown at debug, for a look
    # A known account's failures keep naming it.
    body = b"imap\nlogin\njoe@example.test\nwrong\n"
    with LogVolume() as volume:
        (decoded,) = codec.AuthpipeDecoder().feed(b"AUTH %d\n" % len(body) + body)
        await service.answer(decoded)
    assert volume.lines == ["login joe@example.test (service imap) failed: wrong password"]
    service.close()
