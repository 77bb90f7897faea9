"""Courier authlib ``authpipe`` / authdaemond codec (PROTOCOLS.md sections 4 and 5). Pure: no I/O.

Requests, as authpipe.c builds them::

    PRE . <service> <username> LF
    AUTH <len> LF <service> LF <authtype> LF <authdata>      (exactly <len> bytes after the LF)
    PASSWD <service> TAB <username> TAB <old> TAB <new> LF
    ENUMERATE LF
    RELAY 1 LF            (vmaild's own: vmaild-authpipe asks for a persistent connection)

Replies: :func:`reply_account`, :data:`FAIL`, :data:`OK` (PASSWD), :func:`reply_enumerate`.
A temporary failure is *no* reply: the program exits instead (4.4).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .buffer import DecodeError, StreamDecoder

# authdaemonlib.c reads a reply into a BUFSIZ buffer: at most 8191 bytes, or the '.' is lost (4.4).
MAX_REPLY = 8191
# Cyrus SASL's checkpw.c reads until EOF or 8191 bytes and treats a full buffer as an error, so
# a reply to libsasl must stay one byte shorter (5.2).
CYRUS_MAX_REPLY = 8190
DEFAULT_MAX_REQUEST = 16384

FAIL = b"FAIL\n"  # must be exactly these 5 bytes, nothing before or after (4.4)
OK = b"OK\n"  # PASSWD success; anything else is a failure (4.4)


class AuthpipeError(DecodeError["Decoded"]):
    """The stream cannot be resynchronised (bad AUTH length, oversized input, a reply that is
    too long or followed by stray bytes): exit or close."""


@dataclass(frozen=True, slots=True)
class Pre:
    """Password-less account lookup. *module* is ``.`` ("any module") from authpipe."""

    module: str
    service: str
    username: str


@dataclass(frozen=True, slots=True)
class Auth:
    """Authentication request; *authdata* stays raw (and out of repr(): it holds a password)."""

    service: str
    authtype: str
    authdata: bytes = field(repr=False)

    def login(self) -> tuple[str, str] | None:
        """(username, password) from ``username LF password [LF]`` for authtype ``login``;
        None for another authtype or bad layout/UTF-8 (the caller answers FAIL)."""
        if self.authtype.lower() != "login":
            return None
        lines = _split_authdata(self.authdata)
        if lines is None:
            return None
        username, password = lines
        return (username, password) if username else None

    def cram(self) -> tuple[str, str] | None:
        """(challenge, response), both base64-decoded, for authtype ``cram-*``, else None.

        The challenge is the ``<random@host>`` text the HMAC covers; the response is ``username
        SP hex(HMAC(password, challenge))``: split it at its LAST space (4.3). None for bad
        base64 or UTF-8 (the caller answers FAIL)."""
        if not self.authtype.lower().startswith("cram-"):
            return None
        lines = _split_authdata(self.authdata)
        if lines is None:
            return None
        try:
            decoded = [base64.b64decode(line, validate=True).decode("utf-8") for line in lines]
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded[0], decoded[1]


def _split_authdata(data: bytes) -> tuple[str, str] | None:
    """Two LF-terminated lines, the last LF optional (4.3); None if malformed."""
    parts = data.removesuffix(b"\n").split(b"\n")
    if len(parts) != 2 or b"\0" in data:
        return None
    try:
        return parts[0].decode("utf-8"), parts[1].decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class Passwd:
    """Password change request (the passwords are kept out of repr())."""

    service: str
    username: str
    old: str = field(repr=False)
    new: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Enumerate:
    """List all accounts (``authenumerate``)."""


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A complete request that makes no sense; answer :data:`FAIL`."""

    reason: str


@dataclass(frozen=True, slots=True)
class RelayHello:
    """Not Courier's: ``RELAY 1`` opens vmaild-authpipe's persistent connection to vmaild's
    ``[auth] listen`` socket (answered with :data:`RELAY_HELLO`). Without it, vmaild answers
    one request per connection and closes, as a reader-to-EOF client expects (5.2)."""


RELAY_HELLO = b"RELAY 1\n"

Decoded = Pre | Auth | Passwd | Enumerate | RelayHello | BadRequest


class AuthpipeDecoder(StreamDecoder[Decoded]):
    """Incremental request decoder; gives the same results however the input is split.

    *max_request* bounds both a request line (without its LF) and an AUTH body, so the
    buffer never holds more than that plus one chunk. After an :class:`AuthpipeError` every
    further ``feed()`` raises again.
    """

    error = AuthpipeError

    def __init__(self, max_request: int = DEFAULT_MAX_REQUEST) -> None:
        super().__init__(max_request)
        self._body: int | None = None  # length of the AUTH body still to come
        self._too_long = f"request line longer than {max_request} bytes"

    def _in_request(self) -> bool:
        return self._body is not None

    def _step(self, out: list[Decoded]) -> bool:
        """Consume one line or one AUTH body; False when more input is needed."""
        if self._body is not None:
            # Exactly <len> bytes, never up to a newline: authdata need not end with LF (4.3).
            body = self._buf.take(self._body)
            if body is None:
                return False
            out.append(_parse_auth(body))
            self._body = None
            return True
        line = self._buf.line(self.max_request, self._too_long)
        if line is None:
            return False
        verb, _, rest = line.partition(b" ")
        if verb == b"AUTH":
            self._body = self._auth_length(rest)
        elif line:  # an empty line is Cyrus SASL's LF after the counted payload (5.1): skip it
            out.append(_parse_line(verb, rest))
        return True

    def _auth_length(self, digits: bytes) -> int:
        # Without a valid length we cannot know where the body ends: no way to resync.
        if not digits.isdigit():  # bytes.isdigit() is ASCII-only
            raise AuthpipeError("bad AUTH length")
        length = int(digits)
        if length > self.max_request:
            raise AuthpipeError(f"AUTH body longer than {self.max_request} bytes")
        return length


def _parse_line(verb: bytes, rest: bytes) -> Decoded:
    if b"\0" in rest:
        return BadRequest("request contains NUL")
    try:
        text = rest.decode("utf-8")
    except UnicodeDecodeError:
        return BadRequest("request is not valid UTF-8")
    if verb == b"PRE":
        # PRE SP module SP service SP username: the rest of the line is the username, which
        # may contain spaces (4.3).
        fields = text.split(" ", 2)
        if len(fields) != 3 or not all(fields):
            return BadRequest("PRE needs a module, a service and a username")
        return Pre(*fields)
    if verb == b"PASSWD":
        fields = text.split("\t")
        # authpipe sends four fields; its documentation shows a trailing TAB (4.3).
        if len(fields) == 5 and fields[4] == "":
            del fields[4]
        if len(fields) != 4 or not fields[0] or not fields[1]:
            return BadRequest("PASSWD needs four TAB-separated fields")
        return Passwd(*fields)
    if verb == b"ENUMERATE" and not rest:
        return Enumerate()
    if verb == b"RELAY" and rest == b"1":
        return RelayHello()
    return BadRequest(f"unknown request {verb[:20].decode('ascii', 'backslashreplace')!r}")


def _parse_auth(body: bytes) -> Decoded:
    # <service> LF <authtype> LF <authdata>; authdata may hold anything, LFs included.
    parts = body.split(b"\n", 2)
    if len(parts) != 3:
        return BadRequest("AUTH body needs a service and an authtype line")
    try:
        service, authtype = parts[0].decode("utf-8"), parts[1].decode("utf-8")
    except UnicodeDecodeError:
        return BadRequest("AUTH service or authtype is not valid UTF-8")
    if not service or not authtype:
        return BadRequest("empty AUTH service or authtype")
    return Auth(service, authtype, parts[2])


class ReplyReader:
    """Reads ONE reply on the client side (the relay program, test harnesses).

    :meth:`feed` returns the whole reply once complete, else None. Complete means (4.4): the
    first line is ``FAIL`` or ``OK``, or a line is ``.``; deciding line by line keeps this
    independent of how the bytes were split (authdaemond checks "ends with \\n.\\n" after each
    read). A lone ``.\\n`` (an empty ENUMERATE listing) is complete. With *single_line* (PASSWD:
    authdaemond stops at the first LF) the first line is the reply. Raises AuthpipeError when
    the reply exceeds *max_reply* or bytes follow its end (authdaemond kills such a child).
    """

    def __init__(self, max_reply: int = MAX_REPLY, *, single_line: bool = False) -> None:
        self._max = max_reply
        self._single_line = single_line
        self._buf = bytearray()
        self._line_start = 0
        self._done = False

    def feed(self, data: bytes) -> bytes | None:
        if self._done:
            if data:
                raise AuthpipeError("data after the end of the reply")
            return None
        buf = self._buf
        buf += data
        while (nl := buf.find(b"\n", self._line_start)) >= 0:
            line = buf[self._line_start : nl]
            first = self._line_start == 0
            self._line_start = nl + 1
            if line == b"." or (first and (self._single_line or line == b"FAIL" or line == b"OK")):
                return self._finish(end=nl + 1)
        if len(buf) > self._max:
            raise AuthpipeError(f"reply longer than {self._max} bytes")
        return None

    def _finish(self, end: int) -> bytes:
        if end > self._max:
            raise AuthpipeError(f"reply longer than {self._max} bytes")
        if end < len(self._buf):
            raise AuthpipeError("data after the end of the reply")
        self._done = True
        return bytes(self._buf)


def reply_account(
    fields: Sequence[tuple[str, str]] | Mapping[str, str], *, max_reply: int = MAX_REPLY
) -> bytes:
    """``NAME=value LF`` lines, then ``. LF``: a successful PRE or AUTH (4.4).

    Raises ValueError for output authdaemond would misread: a name or value with LF, CR or NUL
    (a value runs to the end of its line; a CR would stay in it), an empty name or one with
    '=', a missing or empty ADDRESS, HOME or GID, neither UID nor USERNAME, a non-numeric
    UID/GID (atol() would read it as 0, i.e. root), or a reply over *max_reply* bytes (use
    CYRUS_MAX_REPLY for libsasl).
    """
    items = list(fields.items() if isinstance(fields, Mapping) else fields)
    lines = []
    for name, value in items:
        if not name or "=" in name or _has_control(name) or _has_control(value):
            raise ValueError(f"bad account field {name!r}")
        if name in ("UID", "GID") and not (value.isascii() and value.isdigit()):
            raise ValueError(f"{name} must be a decimal number")
        lines.append(f"{name}={value}\n")
    present = {name for name, value in items if value}
    missing = [name for name in ("ADDRESS", "HOME", "GID") if name not in present]
    if not present & {"UID", "USERNAME"}:
        missing.append("UID or USERNAME")
    if missing:
        raise ValueError(f"account reply lacks {', '.join(missing)}")
    reply = "".join(lines).encode("utf-8") + b".\n"
    if len(reply) > max_reply:
        raise ValueError(f"account reply longer than {max_reply} bytes")
    return reply


def _has_control(text: str) -> bool:
    return any(ch in text for ch in "\n\r\0")


def reply_enumerate(rows: Iterable[tuple[str, int, int, str, str | None]]) -> bytes:
    """``name TAB uid TAB gid TAB home [TAB maildir] LF`` lines, then ``. LF`` (4.4).

    Rows (name, uid, gid, home, maildir) authenumerate would drop or misread are skipped: uid
    or gid <= 0, an empty name or home, any field with ``#`` (it starts a comment anywhere in
    a line, cutting the rest), TAB (the separator), LF, CR or NUL."""
    out = []
    for name, uid, gid, home, maildir in rows:
        texts = (name, home, maildir or "")
        if uid <= 0 or gid <= 0 or not name or not home:
            continue
        if any(ch in text for text in texts for ch in "#\t\n\r\0"):
            continue
        line = f"{name}\t{uid}\t{gid}\t{home}" + (f"\t{maildir}" if maildir else "")
        out.append(line.encode("utf-8") + b"\n")
    return b"".join(out) + b".\n"
