"""Tests for vmaild.codec.dovecot_auth (PROTOCOLS.md section 6, checklist 6.5)."""

from __future__ import annotations

import base64
import ipaddress
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmaild.codec.dovecot_auth import (
    DEFAULT_MAX_LINE,
    PASSWORD_PROMPT,
    USERNAME_PROMPT,
    Credentials,
    DovecotAuthError,
    DovecotAuthServer,
    Reply,
    escape,
    unescape,
)

HELLO = b"VERSION\t1\t0\nCPID\t4242\n"  # what Postfix sends first (6.2)


def run(chunks: list[bytes], server: DovecotAuthServer | None = None) -> tuple[list, bool]:
    """Feed *chunks* to one server: (every event, whether DovecotAuthError was raised)."""
    server = server or DovecotAuthServer()
    items: list = []
    for chunk in chunks:
        try:
            items += server.feed(chunk)
        except DovecotAuthError as exc:
            return items + exc.decoded, True
    return items, False


def decode(data: bytes) -> tuple[list, bool]:
    """Decode *data* whole and one byte at a time; both must agree."""
    whole = run([data])
    assert run([data[i : i + 1] for i in range(len(data))]) == whole
    return whole


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def auth(request_id: int, mech: str, *params: bytes) -> bytes:
    """An AUTH line as Postfix's xsasl_dovecot_server_first() writes it."""
    fields = [b"AUTH", b"%d" % request_id, mech.encode(), b"service=smtp", b"nologin"]
    return b"\t".join([*fields, b"lip=192.0.2.10", *params]) + b"\n"


def fail(request_id: int, reason: str) -> Reply:
    return Reply(f"FAIL\t{request_id}\treason={reason}\n".encode(), reason)


def cont(request_id: int, challenge: str) -> Reply:
    return Reply(f"CONT\t{request_id}\t{challenge}\n".encode())


CLIENT = ipaddress.ip_address("198.51.100.5")
RIP = b"rip=198.51.100.5"
JOE = b64(b"\0joe@example.com\0s3cret")  # 6.4's example


def joe(request_id: int = 1, mechanism: str = "PLAIN", **kw: object) -> Credentials:
    values: dict = {"client": CLIENT, "secured": False, **kw}
    return Credentials(request_id, mechanism, "smtp", "joe@example.com", "s3cret", **values)


REQUESTS = [
    # (wire bytes after VERSION and CPID, expected events, DovecotAuthError raised)
    (auth(1, "PLAIN", RIP, b"secured", b"resp=" + JOE), [joe(secured=True)], False),
    # The mechanism as the SMTP client typed it; unknown parameters ignored (6.3).
    (auth(1, "plain", RIP, b"x-new=1", b"flag", b"resp=" + JOE), [joe()], False),
    (auth(7, "PLAIN", b"secured=tls", RIP, b"resp=" + JOE), [joe(7, secured=True)], False),
    # authzid equal to authcid is fine; rip= empty or not an address: no client.
    (
        auth(1, "PLAIN", b"rip=", b"resp=" + b64(b"joe@example.com\0joe@example.com\0s3cret")),
        [joe(client=None)],
        False,
    ),
    (auth(1, "PLAIN", b"rip=x", b"resp=" + JOE), [joe(client=None)], False),
    (
        auth(1, "PLAIN", b"rip=::ffff:198.51.100.5", b"resp=" + JOE),
        [joe()],
        False,
    ),
    (
        auth(1, "PLAIN", b"rip=2001:db8::1", b"resp=" + JOE),
        [joe(client=ipaddress.ip_address("2001:db8::1"))],
        False,
    ),
    # No initial response, "=" or empty: an empty challenge, then the message in CONT.
    (auth(1, "PLAIN", RIP) + b"CONT\t1\t" + JOE + b"\n", [cont(1, ""), joe()], False),
    (auth(1, "PLAIN", RIP, b"resp==") + b"CONT\t1\t" + JOE + b"\n", [cont(1, ""), joe()], False),
    (auth(1, "PLAIN", RIP, b"resp="), [cont(1, "")], False),
    # LOGIN: Username:, then Password: (6.4); with resp= the first prompt is skipped.
    (
        auth(1, "LOGIN", RIP)
        + b"CONT\t1\t"
        + b64(b"joe@example.com")
        + b"\nCONT\t1\t"
        + b64(b"s3cret")
        + b"\n",
        [cont(1, USERNAME_PROMPT), cont(1, PASSWORD_PROMPT), joe(mechanism="LOGIN")],
        False,
    ),
    (
        auth(1, "login", RIP, b"resp=" + b64(b"joe@example.com"))
        + b"CONT\t1\t"
        + b64(b"s3cret")
        + b"\n",
        [cont(1, PASSWORD_PROMPT), joe(mechanism="LOGIN")],
        False,
    ),
    # Requests answered by a FAIL for their id, the connection goes on.
    (auth(1, "CRAM-MD5", RIP), [fail(1, "unsupported mechanism")], False),
    (auth(1, "PLAIN", RIP, b"resp=%%%"), [fail(1, "invalid base64 data")], False),
    (auth(1, "PLAIN", RIP, b"resp=AAA"), [fail(1, "invalid base64 data")], False),  # padding
    (auth(1, "PLAIN", b"resp=" + b64(b"joe\0pw")), [fail(1, "malformed PLAIN message")], False),
    (
        auth(1, "PLAIN", RIP, b"resp=" + b64(b"\0\xff\0pw")),
        [fail(1, "malformed PLAIN message")],
        False,
    ),
    (auth(1, "PLAIN", RIP, b"resp=" + b64(b"\0\0pw")), [fail(1, "empty PLAIN user name")], False),
    (
        auth(1, "PLAIN", RIP, b"resp=" + b64(b"boss@x\0joe@x\0pw")),
        [fail(1, "authorization identity differs from the user name")],
        False,
    ),
    (
        auth(1, "LOGIN", RIP, b"resp=" + b64(b"a\0b")),
        [fail(1, "malformed LOGIN user name")],
        False,
    ),
    (
        auth(1, "LOGIN", RIP) + b"CONT\t1\t=\n",
        [cont(1, USERNAME_PROMPT), fail(1, "malformed LOGIN user name")],
        False,
    ),
    (b"CONT\t9\t" + JOE + b"\n", [fail(9, "unknown or expired request")], False),
    # A refused request is gone: its id may come again.
    (
        auth(1, "PLAIN", RIP, b"resp=AAA") + auth(1, "PLAIN", RIP, b"resp=" + JOE),
        [fail(1, "invalid base64 data"), joe()],
        False,
    ),
    # Several requests in flight, answered in any order by the listener.
    (
        auth(1, "LOGIN", RIP) + auth(2, "PLAIN", RIP, b"resp=" + JOE),
        [cont(1, USERNAME_PROMPT), joe(2)],
        False,
    ),
    # Broken: the connection is closed (after what came before).
    (b"AUTH\t1\n", [], True),
    (auth(1, "PLAIN", RIP, b"resp=" + JOE) + auth(1, "PLAIN", b"resp=" + JOE), [joe()], True),
    (b"AUTH\t1\tPLAIN\tresp=" + JOE + b"\n", [], True),  # no service=
    (b"AUTH\t1\tPLAIN\tservice=\xff\n", [], True),
    (b"AUTH\tx\tPLAIN\tservice=smtp\n", [], True),
    (b"AUTH\t4294967296\tPLAIN\tservice=smtp\n", [], True),
    (b"AUTH\t-1\tPLAIN\tservice=smtp\n", [], True),
    (auth(1, "PLAIN", RIP, b"resp=" + JOE) + b"CONT\t1\t" + JOE + b"\n", [joe()], True),
    (b"CONT\t1\n", [], True),
    (b"VERSION\t1\t0\n", [], True),  # only once
    (b"CPID\t1\n", [], True),
    (b"CANCEL\t1\n", [], True),
    (b"auth\t1\tPLAIN\tservice=smtp\n", [], True),
    (b"AUTH\t1\tPLAIN\tservice=smtp\r\n", [cont(1, "")], False),  # CR: part of the last field
    # A half line is no error: more may come.
    (b"AUTH\t1\tPLAIN\tservice=smtp", [], False),
]


@pytest.mark.parametrize(("wire", "expected", "error"), REQUESTS)
def test_requests(wire: bytes, expected: list, error: bool) -> None:
    assert decode(HELLO + wire) == (expected, error)


@pytest.mark.parametrize(
    "hello",
    [
        b"CPID\t1\nVERSION\t1\t0\n",  # VERSION first
        b"VERSION\t2\t0\n",  # another major version
        b"VERSION\t1\n",
        b"VERSION\t1\t0\t0\n",
        b"VERSION\t1\tx\n",
        b"VERSION\t1\t0\nAUTH\t1\tPLAIN\tservice=smtp\n",  # CPID second
        b"VERSION\t1\t0\nCPID\t\n",
        b"VERSION\t1\t0\nCPID\tx\n",
        b"\n",
    ],
)
def test_handshake_order(hello: bytes) -> None:
    assert decode(hello) == ([], True)


def test_any_minor_version() -> None:
    assert decode(b"VERSION\t1\t99\nCPID\t1\n") == ([], False)


def test_server_handshake() -> None:
    """6.2: VERSION, MECH lines flagged plaintext, SPID, CUID, COOKIE, DONE."""
    assert DovecotAuthServer(["plain", "LOGIN"]).handshake(777, 1, "0" * 32) == (
        b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\n"
        b"SPID\t777\nCUID\t1\nCOOKIE\t" + b"0" * 32 + b"\nDONE\n"
    )
    assert DovecotAuthServer(["PLAIN"]).handshake(1, 2, "c").count(b"MECH") == 1
    assert run([HELLO + auth(1, "LOGIN")], DovecotAuthServer(["PLAIN"]))[0] == [
        fail(1, "unsupported mechanism")
    ]
    for bad in ([], ["CRAM-MD5"]):
        with pytest.raises(ValueError, match="mechanisms"):
            DovecotAuthServer(bad)


def test_replies_and_what_is_in_flight() -> None:
    server = DovecotAuthServer()
    events = server.feed(HELLO + auth(1, "PLAIN", RIP, b"resp=" + JOE) + auth(2, "LOGIN"))
    assert events == [joe(), cont(2, USERNAME_PROMPT)]
    assert server.verifying == 1 and not server.idle
    with pytest.raises(ValueError, match="not being verified"):
        server.ok(2, "x")  # still waiting for the client
    assert server.ok(1, "joe@example.com") == b"OK\t1\tuser=joe@example.com\n"
    with pytest.raises(ValueError):
        server.fail(1)  # answered already
    assert server.feed(b"CONT\t2\t" + b64(b"joe") + b"\n") == [cont(2, PASSWORD_PROMPT)]
    [creds] = server.feed(b"CONT\t2\t" + b64(b"pw") + b"\n")
    assert creds == Credentials(2, "LOGIN", "smtp", "joe", "pw")
    assert server.fail(2) == b"FAIL\t2\treason=authentication failure\n"
    assert server.idle
    server.feed(auth(3, "PLAIN", b"resp=" + JOE))
    server.forget(3)  # a temporary failure: no reply at all
    assert server.idle and server.verifying == 0
    # Values are tab-escaped (Postfix does not unescape them, but they stay one field).
    server.feed(auth(4, "PLAIN", b"resp=" + JOE))
    assert server.ok(4, "a\tb") == b"OK\t4\tuser=a\x01tb\n"


def test_password_kept_out_of_repr() -> None:
    assert "s3cret" not in repr(joe())


def test_requests_in_flight_are_bounded() -> None:
    """Requests abandoned by the client (Postfix: the SMTP client sent "*") make room for
    new ones; requests being verified do not."""
    server = DovecotAuthServer(max_requests=3)
    server.feed(HELLO + auth(1, "LOGIN") + auth(2, "PLAIN", b"resp=" + JOE))
    server.feed(auth(3, "PLAIN", b"resp=" + JOE) + auth(4, "PLAIN", b"resp=" + JOE))
    # Request 1 (waiting for the client) was forgotten to make room for 4.
    assert server.feed(b"CONT\t1\t" + b64(b"joe") + b"\n") == [
        fail(1, "unknown or expired request")
    ]
    with pytest.raises(DovecotAuthError, match="more than 3 requests in flight"):
        server.feed(auth(5, "PLAIN", b"resp=" + JOE))


def test_line_length_bound() -> None:
    long_resp = b"resp=" + b"%" * (DEFAULT_MAX_LINE - 60)
    line = auth(1, "PLAIN", long_resp)
    assert len(line) - 1 <= DEFAULT_MAX_LINE
    assert decode(HELLO + line) == ([fail(1, "invalid base64 data")], False)
    too_long = auth(1, "PLAIN", b"resp=" + b"A" * DEFAULT_MAX_LINE)
    assert decode(HELLO + too_long) == ([], True)
    # Refused before the LF arrives: the buffer never waits for more.
    assert run([HELLO, b"A" * (DEFAULT_MAX_LINE + 1)]) == ([], True)


def test_failed_server_stays_failed() -> None:
    server = DovecotAuthServer()
    with pytest.raises(DovecotAuthError):
        server.feed(b"HELLO\n")
    with pytest.raises(DovecotAuthError):
        server.feed(HELLO)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [("plain", "plain"), ("a\tb", "a\x01tb"), ("\x01\n\r\0", "\x011\x01n\x01r\x010")],
)
def test_escape(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped
    assert unescape(escaped.encode()) == raw.encode()


def test_unescape_unknown_and_trailing() -> None:
    assert unescape(b"a\x01xb\x01") == b"axb"


# -- fuzz ------------------------------------------------------------------------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[lo:hi] for lo, hi in pairwise(bounds)]


LINES = st.sampled_from(
    [
        auth(1, "PLAIN", RIP, b"resp=" + JOE),
        auth(2, "LOGIN", RIP),
        b"CONT\t2\t" + b64(b"joe") + b"\n",
        b"CONT\t2\t" + b64(b"pw") + b"\n",
        auth(3, "PLAIN"),
        b"CONT\t3\t" + JOE + b"\n",
        auth(4, "x"),
        b"CONT\t4\t\n",
        b"\t\n",
        b"\x01",
        b"AUTH\t",
    ]
)
STREAMS = st.lists(LINES | st.binary(max_size=30), max_size=12).map(lambda x: HELLO + b"".join(x))


@settings(max_examples=300, deadline=None)
@given(STREAMS, st.lists(st.integers(0, 2000), max_size=8))
def test_any_split_gives_the_same_events(data: bytes, cuts: list[int]) -> None:
    """However the stream is split, the same events and the same error, and nothing else
    raised than DovecotAuthError."""
    assert run(split(data, [c % (len(data) + 1) for c in cuts])) == run([data])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_the_codec_error(data: bytes) -> None:
    server = DovecotAuthServer(max_requests=4)
    try:
        events = server.feed(HELLO + data)
    except DovecotAuthError:
        return
    for event in events:
        if isinstance(event, Credentials):
            assert server.fail(event.id).startswith(b"FAIL\t%d\t" % event.id)
        else:
            assert event.data.endswith(b"\n") and event.data.count(b"\n") == 1
    assert server.verifying == 0
