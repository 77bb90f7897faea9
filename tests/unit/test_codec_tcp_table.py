"""Tests for vmaild.codec.tcp_table (PROTOCOLS.md section 1, checklist 1.8)."""

from __future__ import annotations

import re
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmaild.codec.tcp_table import (
    DEFAULT_MAX_REQUEST,
    MAX_REPLY_BYTES,
    BadRequest,
    Request,
    TcpTableDecoder,
    TcpTableError,
    quote,
    reply_found,
    reply_not_found,
    reply_temporary,
    unquote,
)


def run(chunks: list[bytes], max_request: int) -> tuple[list, bool]:
    """Feed *chunks* to one decoder: (everything decoded, whether TcpTableError was raised)."""
    decoder = TcpTableDecoder(max_request)
    items: list = []
    for chunk in chunks:
        try:
            items += decoder.feed(chunk)
        except TcpTableError as exc:
            return items + exc.decoded, True
    return items, False


def decode(data: bytes, max_request: int = DEFAULT_MAX_REQUEST) -> tuple[list, bool]:
    """Decode *data* whole and one byte at a time; both must agree."""
    whole = run([data], max_request)
    assert run([data[i : i + 1] for i in range(len(data))], max_request) == whole
    return whole


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """*data* cut at the given offsets."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[lo:hi] for lo, hi in pairwise(bounds)]


def postfix_reads(reply: bytes) -> tuple[str, bytes]:
    """What dict_tcp.c makes of one reply (1.3): ("found"|"notfound"|"retry", value)."""
    line, lf, _ = reply[:MAX_REPLY_BYTES].partition(b"\n")  # vstring_get_nonl_bound(4096)
    if not lf:
        return "retry", b"text longer than 4096"
    if not (line[:3].isdigit() and line[3:4] in (b" ", b"\t")):
        return "retry", b"malformed"
    try:
        value = unquote(line[4:])
    except TcpTableError:
        return "retry", b"malformed"
    kind = {b"2": "found", b"5": "notfound"}.get(line[:1], "retry")
    return kind, value


# -- requests ------------------------------------------------------------------------------

REQUESTS = [
    # (wire bytes, expected decoded items)
    (b"get joe@example.com\n", [Request("joe@example.com")]),
    (b'get "john%20doe"@example.com\n', [Request('"john doe"@example.com')]),
    (b"get 100%25@x\n", [Request("100%@x")]),
    (b"get a%0Ab@x\n", [Request("a\nb@x")]),
    (b"get jos%C3%A9@ex%C3%A4mple.com\n", [Request("josé@exämple.com")]),
    (b"get jos%c3%a9@x\n", [Request("josé@x")]),  # lower-case hex
    (b"get jos%c3%A9@x\n", [Request("josé@x")]),  # mixed case
    (b"get user+ext@example.com\n", [Request("user+ext@example.com")]),  # '+' stays '+'
    (b'get ""\n', [Request('""')]),  # the null sender in quoted form (P-T4)
    (b"get joe@x\r\n", [Request("joe@x")]),  # one trailing CR stripped (telnet)
    (b"get a\nget b\n", [Request("a"), Request("b")]),
    (b"get a", []),  # incomplete
    (b"put a b\n", [BadRequest("unsupported command 'put'")]),
    (b"GET a\n", [BadRequest("unsupported command 'GET'")]),
    (b"get\n", [BadRequest("missing key")]),
    (b"\n", [BadRequest("unsupported command ''")]),
    (b"get \n", [BadRequest("empty key")]),
    (b"get 100%\n", [BadRequest("bad %-escape")]),
    (b"get %4\n", [BadRequest("bad %-escape")]),
    (b"get %zz\n", [BadRequest("bad %-escape")]),
    (b"get %+1\n", [BadRequest("bad %-escape")]),  # int("+1", 16) would take it
    (b"get a%00b\n", [BadRequest("key contains NUL")]),
    (b"get %FF\n", [BadRequest("key is not valid UTF-8")]),
    # A bad request does not end the connection.
    (b"put a b\nget x\n", [BadRequest("unsupported command 'put'"), Request("x")]),
]


@pytest.mark.parametrize(("wire", "expected"), REQUESTS)
def test_requests(wire: bytes, expected: list) -> None:
    assert decode(wire) == (expected, False)


def test_oversized_boundary() -> None:
    assert decode(b"get 123456\n", max_request=10) == ([Request("123456")], False)  # 10 + LF
    assert decode(b"get 1234567\n", max_request=10) == ([], True)
    assert decode(b"get 1234567", max_request=10) == ([], True)  # no LF yet
    # A trailing CR counts: the limit is on the raw line.
    assert decode(b"get 123456\r\n", max_request=10) == ([], True)


def test_oversized_is_final() -> None:
    wire = b"get a\nget 123456789\nget b\n"
    assert decode(wire, max_request=10) == ([Request("a")], True)
    decoder = TcpTableDecoder(10)
    with pytest.raises(TcpTableError):
        decoder.feed(b"x" * 11)
    with pytest.raises(TcpTableError):
        decoder.feed(b"\nget b\n")


def test_long_encoded_key_accepted_by_default() -> None:
    # Kilobytes of %-escapes are real (P-T2); the default takes a 64 KiB line.
    key = '"' + "Namé <a@b>; " * 3000 + '"@example.com'
    wire = b"get " + quote(key.encode()) + b"\n"
    assert 50000 < len(wire) < DEFAULT_MAX_REQUEST
    assert decode(wire) == ([Request(key)], False)


def test_many_requests_one_chunk() -> None:
    wire = b"".join(b"get user%d@x\n" % i for i in range(10000))
    assert decode(wire) == ([Request(f"user{i}@x") for i in range(10000)], False)


# -- the listener's fast path -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (b"get joe@ex.com\n", "joe@ex.com"),
        (b"get a+b@ex.com\n", "a+b@ex.com"),
        (b"get 100%25@ex.com\n", None),  # an escape: the decoder's job
        (b"get a b\n", None),
        (b"get \n", None),
        (b"get joe@ex.com\r\n", None),
        (b"get a\nget b\n", None),  # two requests in one chunk
        (b"get joe@ex.com", None),  # not a whole line yet
        (b"put joe@ex.com\n", None),
        (b"get \xc3\xa9@ex.com\n", None),
        (b"get " + b"a" * 2000 + b"\n", None),
    ],
)
def test_plain_request(data: bytes, key: str | None) -> None:
    assert TcpTableDecoder().plain_request(data) == key


def test_plain_request_only_when_idle_and_within_the_limit() -> None:
    decoder = TcpTableDecoder(10)
    assert decoder.plain_request(b"get 123456\n") == "123456"  # 10 bytes + LF
    assert decoder.plain_request(b"get 1234567\n") is None  # the decoder refuses it
    decoder.feed(b"get a")
    assert decoder.plain_request(b"get b\n") is None  # it would end the pending line
    with pytest.raises(TcpTableError):
        decoder.feed(b"x" * 10)
    assert decoder.plain_request(b"get b\n") is None  # failed


# -- quoting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "quoted"),
    [
        (b"joe@example.com", b"joe@example.com"),
        (b"a b", b"a%20b"),
        (b"100%", b"100%25"),
        (b"\t\n\r\x0b\x0c\x7f", b"%09%0A%0D%0B%0C%7F"),
        ("é".encode(), b"%C3%A9"),
        (b"+@\"\\'<>=", b"+@\"\\'<>="),  # printable non-space ASCII is copied
    ],
)
def test_quote(raw: bytes, quoted: bytes) -> None:
    assert quote(raw) == quoted
    assert unquote(quoted) == raw


def test_unquote_copies_unescaped_bytes() -> None:
    assert unquote(b"a b+c") == b"a b+c"  # like hex_unquote(); never unquote_plus


# -- replies -------------------------------------------------------------------------------

REPLIES = [
    (reply_found("joe@mailhost.x"), b"200 joe@mailhost.x\n"),
    (reply_found("a@x, b@y"), b"200 a@x,%20b@y\n"),
    (reply_found("100%"), b"200 100%25\n"),
    (reply_found("josé"), b"200 jos%C3%A9\n"),
    (reply_found("a\r\nb"), b"200 a%0D%0Ab\n"),  # no raw CR ever
    (reply_found("x+y"), b"200 x+y\n"),
    (reply_not_found(), b"500 not%20found\n"),
    (reply_not_found("not found 100%"), b"500 not%20found%20100%25\n"),  # % must be encoded
    (reply_temporary("db down: 50%"), b"400 db%20down:%2050%25\n"),
    (reply_temporary(""), b"400 \n"),
    (reply_temporary("a\0b"), b"400 a?b\n"),
    (reply_found("a\0b"), b"400 value%20contains%20NUL\n"),  # %00 would truncate the value
    (reply_found("\udcff"), b"400 value%20is%20not%20valid%20UTF-8\n"),
]


@pytest.mark.parametrize(("reply", "expected"), REPLIES)
def test_replies(reply: bytes, expected: bytes) -> None:
    assert reply == expected


def test_never_200_without_value() -> None:
    with pytest.raises(ValueError):
        reply_found("")


def test_reply_length_boundary() -> None:
    # 4095 bytes + LF = 4096 bytes: Postfix still finds the LF within its bound.
    fits = reply_found("v" * (MAX_REPLY_BYTES - 5))
    assert len(fits) == MAX_REPLY_BYTES and fits.startswith(b"200 ")
    assert postfix_reads(fits) == ("found", b"v" * (MAX_REPLY_BYTES - 5))
    # 4096 bytes + LF: "text longer than 4096" in Postfix, so we send a 400 instead.
    too_long = b"200 " + b"v" * (MAX_REPLY_BYTES - 4) + b"\n"
    assert postfix_reads(too_long)[0] == "retry"
    assert reply_found("v" * (MAX_REPLY_BYTES - 4)) == b"400 reply%20too%20long\n"
    # The limit counts the quoted form.
    assert reply_found("%" * 1363).startswith(b"200 ")  # 4 + 4089 + 1 = 4094 bytes
    assert reply_found("%" * 1364).startswith(b"400 ")  # 4 + 4092 + 1 = 4097 bytes


@pytest.mark.parametrize("prefix", ["", "a", "ab"])
def test_long_text_truncated_without_breaking_an_escape(prefix: str) -> None:
    for make in (reply_temporary, reply_not_found):
        reply = make(prefix + "%" * 3000)
        assert len(reply) <= MAX_REPLY_BYTES
        assert postfix_reads(reply)[0] in ("retry", "notfound")
        unquote(reply[4:-1])  # does not raise


# -- properties ----------------------------------------------------------------------------

keys = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), min_size=1)
QUOTED_FORM = re.compile(rb"(?:[!-$&-~]|%[0-9A-F]{2})*")


@given(keys)
def test_any_key_round_trips(key: str) -> None:
    quoted = quote(key.encode())
    assert QUOTED_FORM.fullmatch(quoted)  # printable ASCII, no SP, '%' only in escapes
    assert decode(b"get " + quoted + b"\n") == ([Request(key)], False)


@given(st.binary())
def test_quote_unquote_round_trip(raw: bytes) -> None:
    quoted = quote(raw)
    assert unquote(quoted) == raw
    assert unquote(re.sub(rb"%[0-9A-F]{2}", lambda m: m[0].lower(), quoted)) == raw


@given(st.text())
def test_replies_are_always_readable_by_postfix(text: str) -> None:
    for reply in (reply_not_found(text), reply_temporary(text)):
        assert reply.count(b"\n") == 1 and reply.endswith(b"\n")
        assert b"\r" not in reply and len(reply) <= MAX_REPLY_BYTES
        assert postfix_reads(reply)[1] != b"malformed"
    if text:
        kind, value = postfix_reads(reply_found(text))
        assert (kind, value) == ("found", text.encode()) or kind == "retry"


# Arbitrary bytes, and "get ... LF" lines that reach the fast path's checks or pass them.
chunks = (
    st.binary(max_size=40)
    | st.builds(b"get %b\n".__mod__, st.binary())
    | st.from_regex(rb"get [ -~\r\n]{0,80}\n", fullmatch=True)
    | st.from_regex(rb"get [!-~]{0,80}\n", fullmatch=True)
)


@settings(max_examples=500)
@given(chunks, st.lists(st.binary(max_size=20), max_size=2), st.sampled_from([8, 64, 65536]))
def test_fast_path_agrees_with_the_decoder(data: bytes, history: list[bytes], limit: int) -> None:
    """Whenever the listener's fast path takes a chunk, the decoder, fed the same chunk
    whole or in 1-byte pieces, decodes exactly that one request and is idle again."""

    def decoder() -> TcpTableDecoder:  # in the state the earlier traffic left it in
        dec = TcpTableDecoder(limit)
        try:
            for chunk in history:
                dec.feed(chunk)
        except TcpTableError:
            pass
        return dec

    key = decoder().plain_request(data)
    if key is None:
        return  # the fast path declines: the decoder alone decides
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        dec = decoder()
        assert [item for piece in pieces for item in dec.feed(piece)] == [Request(key)]
        assert dec.idle


@given(st.text(st.sampled_from("abcXYZ019+-_.@!~\"'"), min_size=1, max_size=100))
def test_fast_path_takes_plain_keys(key: str) -> None:
    assert TcpTableDecoder().plain_request(b"get " + key.encode() + b"\n") == key


@given(st.binary(), st.data())
def test_fuzz_any_split_gives_the_same_result(data: bytes, draw: st.DataObject) -> None:
    limit = draw.draw(st.sampled_from([8, 64, DEFAULT_MAX_REQUEST]))
    whole = run([data], limit)  # raises nothing but TcpTableError
    cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=8))
    assert run(split(data, cuts), limit) == whole
