"""Postfix ``tcp_table(5)`` codec (PROTOCOLS.md section 1). Pure: no I/O.

Request:  ``get SP <hex-quoted key> LF``
Reply:    ``<3 digits> SP <hex-quoted text> LF``

The server feeds whatever bytes arrive to a :class:`TcpTableDecoder` and answers every
:class:`Request` with :func:`reply_found`, :func:`reply_not_found` or :func:`reply_temporary`,
and every :class:`BadRequest` with ``reply_temporary(reason)`` (keeping the connection). A
request line longer than the limit raises :class:`TcpTableError`: the server answers the
requests before it, then a ``400`` reply, and closes the connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from .buffer import DecodeError, StreamDecoder

# Postfix reads the reply with vstring_get_nonl_bound(..., 4096): at most 4096 bytes *including*
# the LF; without an LF among them it logs "text longer than 4096" and retries 10 times
# (dict_tcp.c, PROTOCOLS.md 1.3 step 1). So 4095 bytes + LF is accepted, 4096 bytes + LF is not.
MAX_REPLY_BYTES = 4096

# Requests have no documented limit; long quoted local parts are real (pitfall P-T2, 1.2).
DEFAULT_MAX_REQUEST = 65536

# The longest line (LF included) the listener's fast path takes; longer ones go through the
# decoder. Keys of such plain lines need no unquoting: printable ASCII except '%' (1.2).
PLAIN_MAX = 1024
_PLAIN_KEY_BYTES = frozenset(range(0x21, 0x7F)) - {ord("%")}

_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")

# hex_quote.c: a byte is copied iff it is ASCII-printable, not whitespace and not '%';
# every other byte becomes %XX with upper-case hex digits (1.2). Locale-free, hence a table.
_QUOTED = tuple(
    bytes((b,)) if 0x21 <= b <= 0x7E and b != ord("%") else b"%%%02X" % b for b in range(256)
)


class TcpTableError(DecodeError["Decoded"]):
    """The codec's error: a request line over the limit (raised by
    :meth:`TcpTableDecoder.feed`, ``decoded`` holding the requests before it), or a ``%``
    not followed by two hex digits (raised by :func:`unquote`)."""


def quote(data: bytes) -> bytes:
    """Quote *data* exactly as Postfix's ``hex_quote()`` does."""
    return b"".join(map(_QUOTED.__getitem__, data))


def unquote(data: bytes) -> bytes:
    """Undo :func:`quote`; ``%XX`` may use any hex case (Postfix accepts all three, 1.2).

    Bytes that are not part of an escape are copied as they are, like ``hex_unquote()``.
    """
    first, *escaped = data.split(b"%")
    out = bytearray(first)
    for chunk in escaped:
        digits = chunk[:2]
        # Check the digits explicitly: int(..., 16) would also accept b"+1", b" 1" or b"1_".
        if len(digits) != 2 or not _HEX_DIGITS.issuperset(digits):
            raise TcpTableError("bad %-escape")
        out.append(int(digits, 16))
        out += chunk[2:]
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Request:
    """A well-formed ``get`` request; *key* is unquoted and UTF-8 decoded."""

    key: str


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A complete line that is not a valid request; answer ``400 <reason>`` and keep going."""

    reason: str


Decoded = Request | BadRequest


class TcpTableDecoder(StreamDecoder[Decoded]):
    """Incremental request decoder; gives the same results however the input is split.

    *max_request* bounds a request line, counted without its LF (and with a CR before it):
    a longer one, complete or not, raises :class:`TcpTableError`. The buffer never holds
    more than that plus one partial chunk.
    """

    error = TcpTableError

    def __init__(self, max_request: int = DEFAULT_MAX_REQUEST) -> None:
        super().__init__(max_request)
        self._plain_max = min(PLAIN_MAX, max_request + 1)  # a whole line, its LF included
        self._too_long = f"request line longer than {max_request} bytes"

    def _step(self, out: list[Decoded]) -> bool:
        line = self._buf.line(self.max_request, self._too_long)
        if line is None:
            return False
        out.append(_parse_line(line))
        return True

    def plain_request(self, data: bytes) -> str | None:
        """The fast path: the key when the decoder is idle and *data* is exactly one ``get
        <key> LF`` line whose key needs no unquoting (printable ASCII, no ``%``); else None,
        and :meth:`feed` decides. Postfix sends one request and waits for the answer (1.4),
        so almost every chunk is such a line. Whenever this returns a key, ``feed(data)``
        would return exactly ``[Request(key)]`` and leave the decoder idle (a property test
        checks it); nothing changes state.
        """
        # Idle: nothing buffered (a line decoder keeps no other state) and not failed.
        if self._buf or self._failed or len(data) > self._plain_max:
            return None
        if not (data.startswith(b"get ") and data.endswith(b"\n")):
            return None
        key = data[4:-1]
        if not key or not _PLAIN_KEY_BYTES.issuperset(key):
            return None
        return key.decode("ascii")


def _parse_line(line: bytes) -> Request | BadRequest:
    # Postfix never sends a raw CR (it would be quoted as %0D); strip one so that
    # `telnet`/`nc -C` sessions work.
    if line.endswith(b"\r"):
        line = line[:-1]
    verb, sp, quoted = line.partition(b" ")
    if verb != b"get":
        # `put` is never sent: dict_tcp only supports read-only lookups (1.1).
        name = verb[:20].decode("ascii", "backslashreplace")
        return BadRequest(f"unsupported command {name!r}")
    if not sp:
        return BadRequest("missing key")
    try:
        raw = unquote(quoted)
    except TcpTableError as exc:
        return BadRequest(str(exc))
    if not raw:
        # maps_find() never asks for an empty key (1.2).
        return BadRequest("empty key")
    if b"\0" in raw:
        # Keys are C strings in Postfix, so %00 cannot come from it.
        return BadRequest("key contains NUL")
    try:
        return Request(raw.decode("utf-8"))
    except UnicodeDecodeError:
        # With smtputf8_enable=yes Postfix never sends a non-UTF-8 key (1.5).
        return BadRequest("key is not valid UTF-8")


def _reply(status: bytes, text: str) -> bytes:
    """``<status> SP quote(text) LF``, with *text* cut so the line fits MAX_REPLY_BYTES."""
    # Postfix hex_unquote()s the text of every status, so it must be quoted too: a bare `%`
    # turns the reply into "malformed" and a clean 500 into a temporary error (1.3).
    # A NUL would truncate the logged text; '?' is what Postfix itself prints for it.
    quoted = quote(text.replace("\0", "?").encode("utf-8", "replace"))
    budget = MAX_REPLY_BYTES - len(status) - 2  # the SP and the LF
    if len(quoted) > budget:
        quoted = quoted[:budget]
        # Do not leave half an escape behind: its '%' would sit in the last two bytes.
        cut = quoted.rfind(b"%", budget - 2)
        if cut >= 0:
            quoted = quoted[:cut]
    return status + b" " + quoted + b"\n"


def reply_found(value: str) -> bytes:
    """``200 <quoted value> LF``.

    Raises ValueError for an empty value: Postfix reads ``200 `` with no data as an empty
    result, which maps_find() turns into a configuration (temporary) error, not a
    not-found (1.3). Answer :func:`reply_not_found` instead.
    Values Postfix could not use become :func:`reply_temporary` answers.
    """
    if not value:
        raise ValueError("empty value: send reply_not_found() instead")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        # dict_utf8 rejects a non-UTF-8 value as a configuration error anyway (1.5).
        return reply_temporary("value is not valid UTF-8")
    if b"\0" in data:
        # %00 decodes to NUL, which silently truncates the value in Postfix (1.3).
        return reply_temporary("value contains NUL")
    line = b"200 " + quote(data) + b"\n"
    if len(line) > MAX_REPLY_BYTES:
        return reply_temporary("reply too long")
    return line


def reply_not_found(text: str = "not found") -> bytes:
    """``500 <quoted text> LF``: not found; Postfix keeps the connection (1.3)."""
    return _reply(b"500", text)


def reply_temporary(text: str) -> bytes:
    """``400 <quoted text> LF``: temporary error; Postfix defers and drops the connection."""
    return _reply(b"400", text)
