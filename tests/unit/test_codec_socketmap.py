"""Tests for vmaild.codec.socketmap (PROTOCOLS.md section 2, checklist 2.5)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmaild.codec.socketmap import (
    DEFAULT_MAX_REQUEST,
    MAX_REPLY,
    BadRequest,
    NetstringError,
    Request,
    SocketmapDecoder,
    encode_netstring,
    reply_found,
    reply_not_found,
    reply_permanent,
    reply_temporary,
)


def run(chunks: list[bytes], max_request: int) -> tuple[list, bool]:
    """Feed *chunks* to one decoder: (everything decoded, whether NetstringError was raised)."""
    decoder = SocketmapDecoder(max_request)
    items: list = []
    for chunk in chunks:
        try:
            items += decoder.feed(chunk)
        except NetstringError as exc:
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


def request(text: str) -> bytes:
    return encode_netstring(text.encode())


# -- requests ------------------------------------------------------------------------------

REQUESTS = [
    # (wire bytes, expected items, NetstringError raised)
    (b"25:users joe@example.com x y,", [Request("users", "joe@example.com x y")], False),
    (b"23:virtual joe@example.com,", [Request("virtual", "joe@example.com")], False),
    # The key is raw and split off at the first SP only; lengths count bytes (2.1, 2.2).
    (request("m  a:b%20 é@x"), [Request("m", " a:b%20 é@x")], False),
    (request("m "), [Request("m", "")], False),
    (b"3:m a,3:m b,", [Request("m", "a"), Request("m", "b")], False),
    # Client EOF mid-netstring is normal: nothing decoded, no error (2.4, P-S3).
    (b"", [], False),
    (b"2", [], False),
    (b"25:users joe", [], False),
    (b"3:m a", [], False),  # the ',' is still to come
    # Well framed but not "<map> SP <key>": answered with PERM.
    (b"0:,", [BadRequest("missing space after the map name")], False),
    (b":,", [BadRequest("missing space after the map name")], False),  # empty length = 0
    (b"5:users,", [BadRequest("missing space after the map name")], False),
    (b"4: joe,", [BadRequest("empty map name")], False),
    (b"5:m a\0b,", [BadRequest("request contains NUL")], False),
    (b"4:m \xff\xfe,", [BadRequest("request is not valid UTF-8")], False),
    (b"0:,3:m a,", [BadRequest("missing space after the map name"), Request("m", "a")], False),
    # Broken framing: the server closes (2.5).
    (b"x:,", [], True),
    (b" 3:m a,", [], True),
    (b"-3:m a,", [], True),
    (b"+3:m a,", [], True),
    (b"3\n:m a,", [], True),
    (b"3:m a;", [], True),  # missing ','
    (b"3:m ab,", [], True),  # length too short
    (b"1000000:", [], True),  # over the limit, refused before the payload arrives
    (b"0000000003:m a,", [], True),  # more digits than the limit needs
    (b"3:m a,3:m b;", [Request("m", "a")], True),  # earlier requests still come out
]


@pytest.mark.parametrize(("wire", "expected", "error"), REQUESTS)
def test_requests(wire: bytes, expected: list, error: bool) -> None:
    assert decode(wire) == (expected, error)


def test_limit_boundary() -> None:
    assert decode(b"10:map 123456,", max_request=10) == ([Request("map", "123456")], False)
    assert decode(b"11:map 1234567,", max_request=10) == ([], True)
    assert decode(b"011:", max_request=10) == ([], True)


def test_failed_decoder_stays_failed() -> None:
    decoder = SocketmapDecoder()
    with pytest.raises(NetstringError):
        decoder.feed(b"x")
    with pytest.raises(NetstringError):
        decoder.feed(b"3:m a,")


# -- the listener's fast path -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "request_"),
    [
        (request("mailboxes joe@ex.com"), ("mailboxes", "joe@ex.com")),
        (request("mailboxes a b@ex.com"), ("mailboxes", "a b@ex.com")),  # raw key, spaces kept
        (request("mailboxes"), None),
        (request(" joe@ex.com"), None),
        (b"5:mailboxes joe@ex.com,", None),  # wrong length
        (request("mailboxes joe@ex.com")[:-1], None),  # not whole yet
        (request("m a") + request("m b"), None),  # two requests
        (request("mailboxes é@ex.com"), None),  # UTF-8: the decoder's job
        (b"x:abc,", None),
    ],
)
def test_plain_request(data: bytes, request_: tuple[str, str] | None) -> None:
    assert SocketmapDecoder().plain_request(data) == request_


def test_plain_request_only_when_the_decoder_would_take_it() -> None:
    assert SocketmapDecoder().plain_request(b"5:m a\0b,") is None  # a BadRequest
    assert SocketmapDecoder(10).plain_request(b"10:map 123456,") == ("map", "123456")
    assert SocketmapDecoder(10).plain_request(b"11:map 1234567,") is None  # over the limit
    assert SocketmapDecoder(10).plain_request(b"003:m a,") is None  # more digits than needed
    decoder = SocketmapDecoder()
    decoder.feed(b"3:")
    assert decoder.plain_request(b"3:m a,") is None  # it would be the pending payload


# Arbitrary bytes, and netstrings (some with leading zeros) whose payloads reach the fast
# path's checks or pass them.
payloads = st.binary() | st.from_regex(rb"[!-~]{0,10} (?:[ -~]|\0|\xe9){0,20}", fullmatch=True)
chunks = st.binary(max_size=40) | st.builds(
    lambda zeros, payload: b"0" * zeros + encode_netstring(payload),
    st.sampled_from([0, 0, 0, 1, 4]),
    payloads,
)


@settings(max_examples=500)
@given(chunks, st.lists(st.binary(max_size=20), max_size=2), st.sampled_from([5, 100, 100000]))
def test_fast_path_agrees_with_the_decoder(data: bytes, history: list[bytes], limit: int) -> None:
    """Whenever the listener's fast path takes a chunk, the decoder, fed the same chunk
    whole or in 1-byte pieces, decodes exactly that one request and is idle again."""

    def decoder() -> SocketmapDecoder:  # in the state the earlier traffic left it in
        dec = SocketmapDecoder(limit)
        try:
            for chunk in history:
                dec.feed(chunk)
        except NetstringError:
            pass
        return dec

    request_ = decoder().plain_request(data)
    if request_ is None:
        return  # the fast path declines: the decoder alone decides
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        dec = decoder()
        assert [item for piece in pieces for item in dec.feed(piece)] == [Request(*request_)]
        assert dec.idle


# -- replies -------------------------------------------------------------------------------


def postfix_reads(reply: bytes) -> tuple[str, bytes]:
    """dict_sockmap.c's view of one reply: (status, rest), or ("error", b"") (2.3)."""
    length, colon, rest = reply.partition(b":")
    if not (colon and length.isdigit()) or int(length) > MAX_REPLY:
        return "error", b""
    payload, comma = rest[: int(length)], rest[int(length) :]
    if comma != b",":
        return "error", b""
    status, _, value = payload.partition(b" ")
    return status.decode(), value


REPLIES = [
    (reply_found("joe@mailhost.x"), b"17:OK joe@mailhost.x,"),
    (reply_found("a b"), b"6:OK a b,"),
    (reply_found("josé"), b"8:OK jos\xc3\xa9,"),  # counted in bytes
    (reply_not_found(), b"9:NOTFOUND ,"),
    (reply_temporary("db down"), b"12:TEMP db down,"),
    (reply_permanent("unknown map"), b"16:PERM unknown map,"),
    (reply_temporary("a\r\nb"), b"9:TEMP a??b,"),  # keep the logged reason on one line
    (reply_permanent(""), b"5:PERM ,"),
    (reply_found("a\0b"), b"23:TEMP value contains NUL,"),
]


@pytest.mark.parametrize(("reply", "expected"), REPLIES)
def test_replies(reply: bytes, expected: bytes) -> None:
    assert reply == expected


def test_never_ok_with_empty_value() -> None:
    with pytest.raises(ValueError):
        reply_found("")


def test_reply_size_boundary() -> None:
    fits = reply_found("v" * (MAX_REPLY - 3))  # "OK " + value = exactly MAX_REPLY bytes
    assert postfix_reads(fits) == ("OK", b"v" * (MAX_REPLY - 3))
    assert postfix_reads(reply_found("v" * (MAX_REPLY - 2))) == ("TEMP", b"reply too long")
    assert postfix_reads(reply_found("é" * (MAX_REPLY // 2)))[0] == "TEMP"  # bytes, not chars


@pytest.mark.parametrize("reason", ["x" * 200000, "é" * 60000, "a" + "é" * 60000])
def test_long_reason_truncated_to_valid_utf8(reason: str) -> None:
    status, text = postfix_reads(reply_temporary(reason))
    assert status == "TEMP"
    assert len(text) <= MAX_REPLY - 5
    text.decode("utf-8")


# -- properties ----------------------------------------------------------------------------

no_nul = st.characters(exclude_categories=("Cs",), exclude_characters="\0")


@given(st.text(no_nul, min_size=1).filter(lambda s: " " not in s), st.text(no_nul))
def test_any_request_round_trips(name: str, key: str) -> None:
    wire = request(f"{name} {key}")
    assert decode(wire * 2) == ([Request(name, key)] * 2, False)


@given(st.text(min_size=1))
def test_ok_replies_are_readable(value: str) -> None:
    status, data = postfix_reads(reply_found(value))
    assert (status, data) == ("OK", value.encode()) or status == "TEMP"


@given(st.binary(), st.data())
def test_fuzz_any_split_gives_the_same_result(data: bytes, draw: st.DataObject) -> None:
    limit = draw.draw(st.sampled_from([5, 100, DEFAULT_MAX_REQUEST]))
    whole = run([data], limit)  # raises nothing but NetstringError
    cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=8))
    assert run(split(data, cuts), limit) == whole


@given(st.lists(st.binary(max_size=30), max_size=5), st.data())
def test_fuzz_valid_framing_never_fails(payloads: list[bytes], draw: st.DataObject) -> None:
    wire = b"".join(map(encode_netstring, payloads))
    cuts = draw.draw(st.lists(st.integers(0, len(wire)), max_size=8))
    items, error = run(split(wire, cuts), DEFAULT_MAX_REQUEST)
    assert not error and len(items) == len(payloads)
