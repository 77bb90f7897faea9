"""Tests for vmaild.codec.authpipe (PROTOCOLS.md sections 4 and 5, checklist 4.7)."""

from __future__ import annotations

import base64
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmaild.codec.authpipe import (
    CYRUS_MAX_REPLY,
    DEFAULT_MAX_REQUEST,
    FAIL,
    MAX_REPLY,
    OK,
    Auth,
    AuthpipeDecoder,
    AuthpipeError,
    BadRequest,
    Enumerate,
    Passwd,
    Pre,
    ReplyReader,
    reply_account,
    reply_enumerate,
)


def run(chunks: list[bytes], max_request: int) -> tuple[list, bool]:
    """Feed *chunks* to one decoder: (everything decoded, whether AuthpipeError was raised)."""
    decoder = AuthpipeDecoder(max_request)
    items: list = []
    for chunk in chunks:
        try:
            items += decoder.feed(chunk)
        except AuthpipeError as exc:
            return items + exc.decoded, True
    return items, False


def decode(data: bytes, max_request: int = DEFAULT_MAX_REQUEST) -> tuple[list, bool]:
    """Decode *data* whole and one byte at a time; both must agree."""
    whole = run([data], max_request)
    assert run([data[i : i + 1] for i in range(len(data))], max_request) == whole
    return whole


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[lo:hi] for lo, hi in pairwise(bounds)]


def auth(service: bytes, authtype: bytes, authdata: bytes) -> bytes:
    """An AUTH request as authpipe.c builds it: len = the bytes after the header line."""
    body = service + b"\n" + authtype + b"\n" + authdata
    return b"AUTH %d\n" % len(body) + body


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


LOGIN = Auth("imap", "login", b"joe@example.com\ns3cret\n")
CYRUS_AUTH = b"AUTH 34\nsmtp\nlogin\njoe@example.com\ns3cret\n\n"  # 5.1's example

REQUESTS = [
    # (wire bytes, expected items, AuthpipeError raised)
    (b"PRE . imap joe@example.com\n", [Pre(".", "imap", "joe@example.com")], False),
    (b"PRE . imap john doe@example.com\n", [Pre(".", "imap", "john doe@example.com")], False),
    (b"PRE authpipe login  x \n", [Pre("authpipe", "login", " x ")], False),
    (b"AUTH 34\nimap\nlogin\njoe@example.com\ns3cret\n", [LOGIN], False),  # 4.3's example
    (auth(b"imap", b"login", b"joe\ns3cret"), [Auth("imap", "login", b"joe\ns3cret")], False),
    # Exactly <len> bytes, never up to a newline: the next request follows at once.
    (
        auth(b"imap", b"login", b"joe\npw") + b"ENUMERATE\n",
        [Auth("imap", "login", b"joe\npw"), Enumerate()],
        False,
    ),
    (
        auth(b"imap", b"login", b"") + b"PRE . a b\n",
        [Auth("imap", "login", b""), Pre(".", "a", "b")],
        False,
    ),
    # Cyrus SASL sends one stray LF after the counted payload (5.1).
    (CYRUS_AUTH, [Auth("smtp", "login", LOGIN.authdata)], False),
    (CYRUS_AUTH * 2, [Auth("smtp", "login", LOGIN.authdata)] * 2, False),
    (b"PASSWD imap\tjoe\told\tnew\n", [Passwd("imap", "joe", "old", "new")], False),
    (b"PASSWD imap\tjoe\told\tnew\t\n", [Passwd("imap", "joe", "old", "new")], False),
    (b"PASSWD imap\tjo e\t\tn w\n", [Passwd("imap", "jo e", "", "n w")], False),
    (b"ENUMERATE\n", [Enumerate()], False),
    (b"\n\nENUMERATE\n\n", [Enumerate()], False),  # empty lines are skipped
    (b"PRE . imap joe", [], False),  # incomplete
    (b"AUTH 34\nimap\nlogin\n", [], False),  # body incomplete
    # Garbage that can be answered with FAIL.
    (b"HELLO\n", [BadRequest("unknown request 'HELLO'")], False),
    (b"pre . imap joe\n", [BadRequest("unknown request 'pre'")], False),
    (b"ENUMERATE all\n", [BadRequest("unknown request 'ENUMERATE'")], False),
    (b"PRE . imap\n", [BadRequest("PRE needs a module, a service and a username")], False),
    (b"PRE . imap \n", [BadRequest("PRE needs a module, a service and a username")], False),
    (b"PRE . imap j\xffe\n", [BadRequest("request is not valid UTF-8")], False),
    (b"PRE . imap j\0e\n", [BadRequest("request contains NUL")], False),
    (b"PASSWD imap\tjoe\told\n", [BadRequest("PASSWD needs four TAB-separated fields")], False),
    (b"PASSWD a\tb\tc\td\te\n", [BadRequest("PASSWD needs four TAB-separated fields")], False),
    (b"AUTH 0\n", [BadRequest("AUTH body needs a service and an authtype line")], False),
    (auth(b"imap", b"", b"x"), [BadRequest("empty AUTH service or authtype")], False),
    (
        auth(b"im\xffap", b"login", b"x"),
        [BadRequest("AUTH service or authtype is not valid UTF-8")],
        False,
    ),
    (b"AUTH 4\nimap", [BadRequest("AUTH body needs a service and an authtype line")], False),
    (b"HELLO\nENUMERATE\n", [BadRequest("unknown request 'HELLO'"), Enumerate()], False),
    # No way to find the next request: exit.
    (b"AUTH\n", [], True),
    (b"AUTH x\n", [], True),
    (b"AUTH -1\n", [], True),
    (b"AUTH 1 2\n", [], True),
    (b"AUTH \xd9\xa1\n", [], True),  # a non-ASCII digit
    (b"AUTH 16385\n", [], True),
    (b"ENUMERATE\nAUTH x\n", [Enumerate()], True),
]


@pytest.mark.parametrize(("wire", "expected", "error"), REQUESTS)
def test_requests(wire: bytes, expected: list, error: bool) -> None:
    assert decode(wire) == (expected, error)


def test_cyrus_length_counts_the_password_lf_only() -> None:
    # n = 4+1+5+1+15+1+6+1 = 34 (5.1)
    assert auth(b"smtp", b"login", b"joe@example.com\ns3cret\n").startswith(b"AUTH 34\n")


def test_oversized_input() -> None:
    assert decode(b"PRE . a bcd\n", max_request=11) == ([Pre(".", "a", "bcd")], False)
    assert decode(b"PRE . a bcde\n", max_request=11) == ([], True)
    assert decode(b"PRE . a bcde", max_request=11) == ([], True)  # no LF needed to fail
    assert decode(b"AUTH 11\nimap\nlogin\n", max_request=11)[1] is False
    assert decode(b"AUTH 12\n", max_request=11) == ([], True)
    assert decode(b"x" * (DEFAULT_MAX_REQUEST + 1)) == ([], True)


def test_failed_decoder_stays_failed() -> None:
    decoder = AuthpipeDecoder()
    with pytest.raises(AuthpipeError):
        decoder.feed(b"AUTH x\n")
    with pytest.raises(AuthpipeError):
        decoder.feed(b"ENUMERATE\n")


@pytest.mark.parametrize(
    ("req", "login", "cram"),
    [
        (LOGIN, ("joe@example.com", "s3cret"), None),
        (Auth("imap", "login", b"joe\ns3cret"), ("joe", "s3cret"), None),  # no final LF
        (Auth("imap", "LOGIN", b"joe\n\n"), ("joe", ""), None),  # empty password: caller FAILs
        (Auth("imap", "login", b"joe\n"), None, None),
        (Auth("imap", "login", b"\npw\n"), None, None),
        (Auth("imap", "login", b"joe\npw\nmore\n"), None, None),
        (Auth("imap", "login", b"j\xffe\npw\n"), None, None),
        (Auth("imap", "plain", b"joe\npw\n"), None, None),
        (
            Auth("imap", "cram-md5", b64("<1.2@host>") + b"\n" + b64("joe 0a1b") + b"\n"),
            None,
            ("<1.2@host>", "joe 0a1b"),
        ),
        (Auth("imap", "CRAM-SHA256", b64("<c>") + b"\n" + b64("u d")), None, ("<c>", "u d")),
        (Auth("imap", "cram-md5", b"!!!\n" + b64("u d") + b"\n"), None, None),
        (Auth("imap", "cram-md5", b64("<c>") + b"\n"), None, None),
    ],
)
def test_authdata_helpers(req: Auth, login: object, cram: object) -> None:
    assert req.login() == login
    assert req.cram() == cram


def test_passwords_stay_out_of_repr() -> None:
    assert "s3cret" not in repr(LOGIN)
    assert "s3cret" not in repr(Passwd("imap", "joe", "s3cret", "s3cret2"))


# -- replies -------------------------------------------------------------------------------

ACCOUNT = {
    "UID": "5000",
    "GID": "5000",
    "HOME": "/srv/mail/example.com/joe",
    "ADDRESS": "joe@example.com",
    "MAILDIR": "/srv/mail/example.com/joe/Maildir",
    "QUOTA": "1000000000S,10000C",
}
ACCOUNT_BYTES = (
    b"UID=5000\nGID=5000\nHOME=/srv/mail/example.com/joe\nADDRESS=joe@example.com\n"
    b"MAILDIR=/srv/mail/example.com/joe/Maildir\nQUOTA=1000000000S,10000C\n.\n"
)


def test_reply_account() -> None:
    assert reply_account(ACCOUNT) == ACCOUNT_BYTES
    assert reply_account(list(ACCOUNT.items())) == ACCOUNT_BYTES
    with_username = {**ACCOUNT, "USERNAME": "vmail"}
    del with_username["UID"]
    assert reply_account(with_username).startswith(b"GID=5000\n")
    assert (FAIL, OK) == (b"FAIL\n", b"OK\n")


@pytest.mark.parametrize(
    "change",
    [
        {"ADDRESS": None},
        {"HOME": None},
        {"HOME": ""},
        {"GID": None},
        {"UID": None},  # and no USERNAME
        {"UID": "abc"},  # atol() would make it 0: root
        {"GID": "-1"},
        {"NAME": "a\nb"},
        {"NAME": "a\rb"},
        {"NAME": "a\0b"},
        {"A=B": "x"},
        {"": "x"},
        {"NAME": "x" * MAX_REPLY},
    ],
)
def test_reply_account_refuses(change: dict[str, str | None]) -> None:
    fields = {**ACCOUNT, **change}
    with pytest.raises(ValueError):
        reply_account({k: v for k, v in fields.items() if v is not None})


def test_reply_account_size_boundary() -> None:
    room = MAX_REPLY - len(ACCOUNT_BYTES) - len("NAME=\n")
    assert len(reply_account({**ACCOUNT, "NAME": "x" * room})) == MAX_REPLY
    with pytest.raises(ValueError):
        reply_account({**ACCOUNT, "NAME": "x" * (room + 1)})
    with pytest.raises(ValueError):
        reply_account({**ACCOUNT, "NAME": "x" * room}, max_reply=CYRUS_MAX_REPLY)


def test_reply_enumerate() -> None:
    rows = [
        ("joe@example.com", 5000, 5000, "/srv/mail/joe", "/srv/mail/joe/Maildir"),
        ("ann@example.com", 5000, 5001, "/srv/mail/ann", None),
        ("root@example.com", 0, 5000, "/root", None),  # uid 0: authenumerate drops it
        ("gid0@example.com", 5000, 0, "/x", None),
        ("has#hash@example.com", 5000, 5000, "/x", None),  # '#' starts a comment
        ("tab@example.com", 5000, 5000, "/x\ty", None),
        ("lf@example.com", 5000, 5000, "/x", "/x\n/y"),
        ("", 5000, 5000, "/x", None),
    ]
    assert reply_enumerate(rows) == (
        b"joe@example.com\t5000\t5000\t/srv/mail/joe\t/srv/mail/joe/Maildir\n"
        b"ann@example.com\t5000\t5001\t/srv/mail/ann\n"
        b".\n"
    )
    assert reply_enumerate([]) == b".\n"


def read(data: bytes, **kwargs: object) -> bytes | str | None:
    """Read *data* whole and one byte at a time: the reply, None, or "error"; both agree."""

    def attempt(chunks: list[bytes]) -> bytes | str | None:
        reader = ReplyReader(**kwargs)  # type: ignore[arg-type]
        replies = []
        try:
            replies = [reply for chunk in chunks if (reply := reader.feed(chunk)) is not None]
        except AuthpipeError:
            return "error"
        assert len(replies) <= 1
        return replies[0] if replies else None

    whole = attempt([data])
    assert attempt([data[i : i + 1] for i in range(len(data))]) == whole
    return whole


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"FAIL\n", b"FAIL\n"),
        (b"OK\n", b"OK\n"),
        (ACCOUNT_BYTES, ACCOUNT_BYTES),
        (b".\n", b".\n"),  # an empty ENUMERATE listing
        (b"X=1\nFAIL\nY=2\n.\n", b"X=1\nFAIL\nY=2\n.\n"),
        (b"FAIL", None),
        (b"X=1\n", None),
        (b"X=1\n.", None),
        (b"", None),
        (b"FAIL\nX", "error"),  # authdaemond would kill the child for the extra bytes
        (ACCOUNT_BYTES + b"\n", "error"),
        (b"X=" + b"x" * (MAX_REPLY - 5) + b"\n.\n", b"X=" + b"x" * (MAX_REPLY - 5) + b"\n.\n"),
        (b"X=" + b"x" * (MAX_REPLY - 4) + b"\n.\n", "error"),
        (b"X=" + b"x" * MAX_REPLY, "error"),
    ],
)
def test_reply_reader(data: bytes, expected: bytes | str | None) -> None:
    assert read(data) == expected


def test_reply_reader_options() -> None:
    assert read(b"ERR\n", single_line=True) == b"ERR\n"  # PASSWD: first line only
    assert read(b"ERR\n") is None
    assert read(b"a\tb\n" * 5000 + b".\n", max_reply=10**6) is not None  # a long ENUMERATE
    reader = ReplyReader()
    assert reader.feed(FAIL) == FAIL
    assert reader.feed(b"") is None
    with pytest.raises(AuthpipeError):
        reader.feed(b"x")


# -- properties ----------------------------------------------------------------------------

field_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n\r\0"))


@given(st.dictionaries(st.sampled_from(["NAME", "OPTIONS", "PASSWD2", "X"]), field_text))
def test_account_replies_end_where_authdaemond_stops(extra: dict[str, str]) -> None:
    try:
        reply = reply_account({**ACCOUNT, **extra})
    except ValueError:
        return  # too long
    assert reply.endswith(b"\n.\n") and not reply.startswith(b"FAIL\n")
    assert len(reply) <= MAX_REPLY
    assert ReplyReader().feed(reply) == reply


@given(st.text(min_size=1).filter(lambda s: "\n" not in s and "\0" not in s), field_text)
def test_login_round_trips(username: str, password: str) -> None:
    [request], _ = decode(auth(b"imap", b"login", f"{username}\n{password}\n".encode()))
    assert request.login() == (username, password)


@given(st.binary(), st.data())
def test_fuzz_any_split_gives_the_same_result(data: bytes, draw: st.DataObject) -> None:
    limit = draw.draw(st.sampled_from([8, 100, DEFAULT_MAX_REQUEST]))
    whole = run([data], limit)  # raises nothing but AuthpipeError
    cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=8))
    assert run(split(data, cuts), limit) == whole
    for item in whole[0]:
        if isinstance(item, Auth):
            item.login(), item.cram()  # never raise


@given(st.binary(), st.data())
def test_fuzz_reply_reader(data: bytes, draw: st.DataObject) -> None:
    reader = ReplyReader(max_reply=draw.draw(st.sampled_from([16, MAX_REPLY])))
    cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=8))
    try:
        for chunk in split(data, cuts):
            reader.feed(chunk)
    except AuthpipeError:
        pass
