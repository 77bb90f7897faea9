"""Postfix ``socketmap_table(5)`` codec (PROTOCOLS.md section 2). Pure: no I/O.

Every request and reply is a netstring ``<decimal length>:<payload>,``; a request payload is
``<mapname> SP <key>``, a reply payload ``OK <value>``, ``NOTFOUND ``, ``TEMP <reason>`` or
``PERM <reason>``, built by :func:`reply_found`, :func:`reply_not_found`,
:func:`reply_temporary` and :func:`reply_permanent`. A framing error cannot be answered, so
:class:`SocketmapDecoder` raises :class:`NetstringError` and the server closes the connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from .buffer import DecodeError, StreamDecoder

# Request payload limit (bytes). Postfix refuses keys over socketmap_max_query_size (10000 by
# default) without asking us (2.2), so 100000 leaves room for the map name and larger settings.
DEFAULT_MAX_REQUEST = 100000

# socketmap_max_reply_size: a longer reply payload is a netstring size error for Postfix,
# i.e. a temporary lookup failure (2.3).
MAX_REPLY = 100000

_DIGITS = frozenset(b"0123456789")


@dataclass(frozen=True, slots=True)
class Request:
    """A lookup of *key* (raw, may contain SP, ``:``, ``%``) in the map named *map*."""

    map: str
    key: str


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A well-framed payload that is not ``<map> SP <key>``; answer :func:`reply_permanent`."""

    reason: str


Decoded = Request | BadRequest


class NetstringError(DecodeError[Decoded]):
    """Broken framing: close the connection (there is no way to answer, 2.5)."""


def encode_netstring(payload: bytes) -> bytes:
    """``<len>:<payload>,`` with the length in bytes and no leading zeros (2.1)."""
    return b"%d:%s," % (len(payload), payload)


class SocketmapDecoder(StreamDecoder[Decoded]):
    """Incremental netstring request decoder; gives the same results however input is split.

    *max_request* bounds the payload length, so the buffer stays below that plus one chunk.
    After a :class:`NetstringError` every further ``feed()`` raises again.
    """

    error = NetstringError

    def __init__(self, max_request: int = DEFAULT_MAX_REQUEST) -> None:
        super().__init__(max_request)
        self._max_digits = len(str(max_request))
        self._length: int | None = None  # payload length once its prefix has been read

    def _in_request(self) -> bool:
        return self._length is not None

    def _step(self, out: list[Decoded]) -> bool:
        """Consume one length prefix or one payload; False when more input is needed."""
        buf = self._buf
        if self._length is None:
            colon = buf.find(b":")
            digits = buf.peek(colon if colon >= 0 else len(buf))
            self._check_prefix(digits)
            if colon < 0:
                return False
            # Postfix's netstring_get_length() accepts an empty length as 0 (2.1).
            self._length = int(digits or b"0")
            buf.take(colon + 1)
        # The payload and its ',' (the length was checked against the limit above).
        netstring = buf.take(self._length + 1)
        if netstring is None:
            return False
        if netstring[-1] != ord(","):
            raise NetstringError("netstring not terminated by ','")
        out.append(_parse_payload(netstring[:-1]))
        self._length = None
        return True

    def _check_prefix(self, digits: bytes) -> None:
        # Postfix writes "%ld:" and reads only ASCII digits up to ':' (2.1).
        if not _DIGITS.issuperset(digits):
            raise NetstringError("bad netstring length")
        if len(digits) > self._max_digits or (digits and int(digits) > self.max_request):
            raise NetstringError(f"netstring longer than {self.max_request} bytes")

    def plain_request(self, data: bytes) -> tuple[str, str] | None:
        """The fast path: (map, key) when the decoder is idle and *data* is exactly one
        netstring ``<len>:<map> SP <key>,`` of plain ASCII with a non-empty map and key; else
        None, and :meth:`feed` decides. Postfix sends one request and waits (2.4), so a chunk
        is almost always exactly one netstring. Whenever this returns (map, key),
        ``feed(data)`` would return exactly ``[Request(map, key)]`` and leave the decoder
        idle (a property test checks it); nothing changes state.
        """
        if self._buf or self._failed or self._length is not None:
            return None
        colon = data.find(b":", 0, self._max_digits + 1)
        if colon <= 0 or not data.endswith(b",") or not data[:colon].isdigit():
            return None
        payload = data[colon + 1 : -1]
        length = int(data[:colon])
        if length != len(payload) or length > self.max_request or not payload.isascii():
            return None
        if 0 in payload:  # a NUL: the decoder answers a BadRequest (memchr, unlike b"\0")
            return None
        name, sp, key = payload.decode("ascii").partition(" ")
        if not sp or not name or not key:
            return None
        return name, key


def _parse_payload(payload: bytes) -> Decoded:
    # The map name is the last ':' field of the table name, and it comes first; the key
    # is raw and split off at the FIRST space only (2.2, pitfall P-S1).
    name, sp, key = payload.partition(b" ")
    if not sp:
        return BadRequest("missing space after the map name")
    if not name:
        return BadRequest("empty map name")
    if b"\0" in payload:
        # Postfix keys are C strings; a NUL cannot come from it.
        return BadRequest("request contains NUL")
    try:
        return Request(name.decode("utf-8"), key.decode("utf-8"))
    except UnicodeDecodeError:
        return BadRequest("request is not valid UTF-8")


def _status(status: bytes, reason: str) -> bytes:
    """Netstring of ``<status> SP <reason>``, the reason cleaned and cut to fit MAX_REPLY."""
    # Postfix logs the reason ("socketmap server temporary error: ..."); keep it one line.
    text = "".join("?" if ch < " " or ch == "\x7f" else ch for ch in reason)
    data = text.encode("utf-8", "replace")[: MAX_REPLY - len(status) - 1]
    # Cutting may split a UTF-8 sequence; drop the broken tail.
    data = data.decode("utf-8", "ignore").encode("utf-8")
    return encode_netstring(status + b" " + data)


def reply_found(value: str) -> bytes:
    """Netstring of ``OK <value>``.

    Raises ValueError for an empty value: ``OK `` is an empty result, which Postfix turns into
    a configuration error, and ``OK`` alone means different things in different versions
    (2.3). Answer :func:`reply_not_found` instead. Values Postfix could not use become
    :func:`reply_temporary` answers.
    """
    if not value:
        raise ValueError("empty value: send reply_not_found() instead")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        return reply_temporary("value is not valid UTF-8")
    if b"\0" in data:
        # The value becomes a C string in Postfix: a NUL would silently truncate it.
        return reply_temporary("value contains NUL")
    payload = b"OK " + data
    if len(payload) > MAX_REPLY:
        return reply_temporary("reply too long")
    return encode_netstring(payload)


def reply_not_found() -> bytes:
    """``9:NOTFOUND ,`` (Postfix also accepts it without the SP; this is the documented form)."""
    return encode_netstring(b"NOTFOUND ")


def reply_temporary(reason: str) -> bytes:
    """``TEMP <reason>``: DICT_ERR_RETRY, a temporary lookup failure (2.3)."""
    return _status(b"TEMP", reason)


def reply_permanent(reason: str) -> bytes:
    """``PERM <reason>``: DICT_ERR_CONFIG; Postfix defers with 451, it is *not* a not-found."""
    return _status(b"PERM", reason)
