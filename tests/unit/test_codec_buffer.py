"""Tests for vmaild.codec.buffer: the receive buffer, and the interface all four request
decoders share (one loop, one error family carrying what came before the error, a bound)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from vmaild.codec import authpipe, policy, socketmap, tcp_table
from vmaild.codec.buffer import DecodeError, ReceiveBuffer, StreamDecoder

# -- ReceiveBuffer -------------------------------------------------------------------------


def lines(data: bytes, limit: int = 100, pieces: bool = False) -> tuple[list[bytes], bool]:
    """Every complete line of *data* (fed whole or in 1-byte pieces), and whether the limit
    was hit."""
    buf = ReceiveBuffer(DecodeError)
    out: list[bytes] = []
    for chunk in [data[i : i + 1] for i in range(len(data))] if pieces else [data]:
        buf.append(chunk)
        try:
            while (line := buf.line(limit, "too long")) is not None:
                out.append(line)
        except DecodeError as exc:
            assert str(exc) == "too long"
            return out, True
    return out, False


@pytest.mark.parametrize(
    ("data", "limit", "expected"),
    [
        (b"", 5, ([], False)),
        (b"abc", 5, ([], False)),  # no LF yet
        (b"abc\n", 5, ([b"abc"], False)),
        (b"a\n\nb\n", 5, ([b"a", b"", b"b"], False)),
        (b"a\r\n", 5, ([b"a\r"], False)),  # only the LF is taken off
        (b"abcde\n", 5, ([b"abcde"], False)),  # the LF is not counted
        (b"abcdef\n", 5, ([], True)),
        (b"abcdef", 5, ([], True)),  # an incomplete line fails as soon as it is too long
        (b"ab\nabcdef", 5, ([b"ab"], True)),  # the lines before still come out
    ],
)
@pytest.mark.parametrize("pieces", [False, True], ids=["whole", "1-byte"])
def test_line(data: bytes, limit: int, expected: tuple[list[bytes], bool], pieces: bool) -> None:
    assert lines(data, limit, pieces) == expected


def test_take_find_peek_clear() -> None:
    buf = ReceiveBuffer(DecodeError)
    buf.append(b"12:abc")
    assert (buf.find(b":"), buf.peek(2), len(buf)) == (2, b"12", 6)
    assert buf.take(7) is None and len(buf) == 6  # not there yet: nothing consumed
    assert buf.take(3) == b"12:" and buf.take(3) == b"abc" and buf.take(0) == b""
    assert not buf
    buf.append(b"x\ny")
    assert buf.line(5, "") == b"x"
    buf.clear()
    assert not buf and buf.line(5, "") is None


# -- the decoders' shared interface --------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """One protocol's decoder with a sample of each kind of input."""

    make: Callable[[int], StreamDecoder[Any]]
    error: type[DecodeError[Any]]
    good: bytes  # one complete request
    broken: bytes  # input the stream cannot recover from
    endless: Callable[[int], bytes]  # input that never ends a request, over *limit* bytes


CODECS = {
    "tcp_table": Codec(
        tcp_table.TcpTableDecoder,
        tcp_table.TcpTableError,
        b"get a\n",
        b"get " + b"x" * 200 + b"\n",
        lambda n: b"g" * (n + 1),
    ),
    "socketmap": Codec(
        socketmap.SocketmapDecoder,
        socketmap.NetstringError,
        b"3:m a,",
        b"3:m a;",
        lambda n: b"9" * (len(str(n)) + 1),
    ),
    "policy": Codec(
        policy.PolicyDecoder,
        policy.PolicyError,
        b"a=1\n\n",
        b"novalue\n\n",
        lambda n: b"a" * (n + 1),
    ),
    "authpipe": Codec(
        authpipe.AuthpipeDecoder,
        authpipe.AuthpipeError,
        b"ENUMERATE\n",
        b"AUTH x\n",
        lambda n: b"P" * (n + 1),
    ),
}
LIMIT = 100
codecs = pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS.keys())


def feed_all(decoder: StreamDecoder[Any], data: bytes, pieces: bool) -> list[Any]:
    """Feed *data* whole or in 1-byte pieces; the requests, or the error with them."""
    out: list[Any] = []
    for chunk in [data[i : i + 1] for i in range(len(data))] if pieces else [data]:
        try:
            out += decoder.feed(chunk)
        except DecodeError as exc:
            return [*out, *exc.decoded, type(exc)]
    return out


@codecs
@pytest.mark.parametrize("pieces", [False, True], ids=["whole", "1-byte"])
def test_requests_then_error(codec: Codec, pieces: bool) -> None:
    """Requests before the error come out with it, however the input is split; a failed
    decoder stays failed."""
    assert issubclass(codec.error, DecodeError) and issubclass(codec.error, ValueError)
    decoder = codec.make(LIMIT)
    items = feed_all(decoder, codec.good * 2 + codec.broken + codec.good, pieces)
    assert len(items) == 3 and items[2] is codec.error
    assert items[:2] == feed_all(codec.make(LIMIT), codec.good * 2, pieces)
    assert decoder.failed and not decoder.idle
    with pytest.raises(codec.error, match="already failed"):
        decoder.feed(codec.good)


@codecs
@pytest.mark.parametrize("pieces", [False, True], ids=["whole", "1-byte"])
def test_bounded(codec: Codec, pieces: bool) -> None:
    """Input that never completes a request fails once it passes the limit, so the buffer
    never holds more than the limit and one chunk."""
    assert feed_all(codec.make(LIMIT), codec.endless(LIMIT), pieces)[-1] is codec.error
    assert codec.error not in feed_all(codec.make(LIMIT), codec.endless(LIMIT)[:-2], pieces)


@codecs
def test_idle_between_requests(codec: Codec) -> None:
    decoder = codec.make(LIMIT)
    assert decoder.idle and not decoder.failed
    for byte in codec.good[:-1]:
        assert decoder.feed(bytes((byte,))) == []
        assert not decoder.idle
    assert len(decoder.feed(codec.good[-1:])) == 1
    assert decoder.idle
