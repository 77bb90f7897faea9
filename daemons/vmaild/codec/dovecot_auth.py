"""The server side of Dovecot's auth-client protocol, as Postfix's ``smtpd_sasl_type =
dovecot`` speaks it (PROTOCOLS.md section 6). Pure: no I/O.

One :class:`DovecotAuthServer` per connection. :meth:`~DovecotAuthServer.handshake` is what
the server sends first; :meth:`~DovecotAuthServer.feed` takes the client's bytes and returns
events: a :class:`Reply` to send now (a ``CONT`` challenge, or a ``FAIL`` for a request that
makes no sense) or the :class:`Credentials` of a request ready to be verified, which the
listener answers later, in any order, with :meth:`~DovecotAuthServer.ok`,
:meth:`~DovecotAuthServer.fail` or :meth:`~DovecotAuthServer.forget` (no reply at all: a
temporary failure, 6.3).

Client lines, TAB-separated, LF-terminated (6.2, 6.3)::

    VERSION TAB 1 TAB <minor>              first, once; another major version is an error
    CPID TAB <pid>                         second, once
    AUTH TAB <id> TAB <mech> TAB service=<name> [TAB <param>]... [TAB resp=<base64>]
    CONT TAB <id> TAB <base64>

The rules that keep it bounded: a line is at most ``max_line`` bytes; at most
``max_requests`` requests are in flight per connection (an AUTH beyond that first forgets
the oldest one still waiting for the client's ``CONT``, which Postfix abandons when its SMTP
client sends "*"; if every one is being verified, the connection is broken); an id is unique
among the requests in flight. Anything that breaks the framing or the order raises
:class:`DovecotAuthError` (the listener logs it and closes); a well-formed request the server
cannot take (an unknown mechanism, bad base64, a malformed PLAIN message, an authorization
identity other than the login) is answered ``FAIL`` for its id.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from .buffer import DecodeError, StreamDecoder

# Dovecot's AUTH_CLIENT_MAX_LINE_LENGTH; Postfix's own lines are far shorter (its SMTP
# line_length_limit is 2048).
DEFAULT_MAX_LINE = 16384
# Postfix has one request in flight per connection (6.3); a few more for other clients.
DEFAULT_MAX_REQUESTS = 16
MECHANISMS = ("PLAIN", "LOGIN")
# What the server says it speaks; Postfix checks only the major version (6.2).
VERSION = (1, 2)
# base64 of the LOGIN prompts, as Dovecot and Cyrus send them (6.4).
USERNAME_PROMPT = base64.b64encode(b"Username:").decode()
PASSWORD_PROMPT = base64.b64encode(b"Password:").decode()
# Every FAIL carries a reason: Postfix shows it to the SMTP client ("535 5.7.8 Error:
# authentication failed: <reason>"), and Postfix before 3.7.11/3.8.6/3.9 reused the last
# challenge ("UGFzc3dvcmQ6") as the reason when none came (6.3).
REASON_FAILED = "authentication failure"
_MAX_ID = 2**32 - 1  # Postfix prints ids with %u and reads them back with strtoul()
_ID_DIGITS = len(str(_MAX_ID))

Client = ipaddress.IPv4Address | ipaddress.IPv6Address


class DovecotAuthError(DecodeError["Event"]):
    """The client broke the protocol (framing, order, a duplicate id): close."""


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes to send now. *problem* says what was wrong with the request when the reply is
    a FAIL the client caused (for the log line and the protocol-error count)."""

    data: bytes
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """A request ready for verification: answer it with ok(), fail() or forget()."""

    id: int
    mechanism: str  # "PLAIN" or "LOGIN"
    service: str  # the service= parameter as sent ("smtp" from Postfix)
    login: str
    password: str = field(repr=False)
    client: Client | None = None  # rip=, when it is an address
    secured: bool = False  # the "secured" flag: TLS (Postfix) or a local connection


Event = Reply | Credentials


@dataclass(slots=True)
class _Request:
    mechanism: str
    service: str
    client: Client | None
    secured: bool
    waiting: str  # "plain", "username", "password": the client's CONT; "" = verifying
    login: str = ""


def escape(value: str) -> str:
    """Dovecot's tab-escaping: \\001 is the escape character (6.3)."""
    if not any(ch in value for ch in "\x01\t\n\r\0"):
        return value
    return (
        value.replace("\x01", "\x011")
        .replace("\t", "\x01t")
        .replace("\n", "\x01n")
        .replace("\r", "\x01r")
        .replace("\0", "\x010")
    )


def unescape(value: bytes) -> bytes:
    """The inverse of :func:`escape`; an unknown escape stands for the character after it,
    and a trailing escape character is dropped (Dovecot's rule)."""
    if b"\x01" not in value:
        return value
    named = {ord("0"): b"\0", ord("1"): b"\x01", ord("t"): b"\t", ord("r"): b"\r", ord("n"): b"\n"}
    out = bytearray()
    i = 0
    while i < len(value):
        byte = value[i]
        if byte == 1:
            i += 1
            if i < len(value):
                out += named.get(value[i], value[i : i + 1])
        else:
            out.append(byte)
        i += 1
    return bytes(out)


def _line(*fields: str) -> bytes:
    return ("\t".join(fields) + "\n").encode("utf-8")


class DovecotAuthServer(StreamDecoder[Event]):
    """One connection's protocol state; gives the same events however input is split."""

    error = DovecotAuthError

    def __init__(
        self,
        mechanisms: Iterable[str] = MECHANISMS,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        max_requests: int = DEFAULT_MAX_REQUESTS,
    ) -> None:
        super().__init__(max_line)
        self.mechanisms = tuple(dict.fromkeys(m.upper() for m in mechanisms))
        unknown = set(self.mechanisms) - set(MECHANISMS)
        if unknown or not self.mechanisms:
            raise ValueError(f"mechanisms must be some of {', '.join(MECHANISMS)}")
        self.max_requests = max_requests
        self._state = "version"  # then "cpid", then "requests"
        self._requests: dict[int, _Request] = {}  # in flight, oldest first
        self._too_long = f"line longer than {max_line} bytes"

    # -- what the server sends -------------------------------------------------------------

    def handshake(self, spid: int, cuid: int, cookie: str) -> bytes:
        """VERSION, one MECH per mechanism, SPID, CUID, COOKIE, DONE (6.2). PLAIN and LOGIN
        are flagged ``plaintext``, so that Postfix's ``noplaintext`` hides them."""
        lines = [_line("VERSION", *map(str, VERSION))]
        lines += [_line("MECH", name, "plaintext") for name in self.mechanisms]
        lines += [
            _line("SPID", str(spid)),
            _line("CUID", str(cuid)),
            _line("COOKIE", cookie),
            _line("DONE"),
        ]
        return b"".join(lines)

    def ok(self, request_id: int, user: str) -> bytes:
        """``OK <id> user=<name>``: the request succeeded; *user* becomes Postfix's
        sasl_username (a non-empty user= is required, 6.3)."""
        self._finish(request_id)
        return _line("OK", str(request_id), "user=" + escape(user))

    def fail(self, request_id: int, reason: str = REASON_FAILED) -> bytes:
        """``FAIL <id> reason=<text>``: wrong credentials, or refused."""
        self._finish(request_id)
        return _fail(request_id, reason)

    def forget(self, request_id: int) -> None:
        """No reply for this request: the listener closes the connection instead, which is
        the only answer Postfix reports as temporary (454 4.7.0, 6.3)."""
        self._finish(request_id)

    def _finish(self, request_id: int) -> None:
        request = self._requests.get(request_id)
        if request is None or request.waiting:
            raise ValueError(f"request {request_id} is not being verified")
        del self._requests[request_id]

    @property
    def verifying(self) -> int:
        """Requests handed out as Credentials and not answered yet."""
        return sum(1 for r in self._requests.values() if not r.waiting)

    def _in_request(self) -> bool:
        return bool(self._requests)

    # -- what the client sends -------------------------------------------------------------

    def _step(self, out: list[Event]) -> bool:
        line = self._buf.line(self.max_request, self._too_long)
        if line is None:
            return False
        command, _, rest = line.partition(b"\t")
        if self._state == "version":
            self._version(command, rest)
        elif self._state == "cpid":
            if command != b"CPID" or not _is_number(rest):
                raise DovecotAuthError("expected CPID <pid> after VERSION")
            self._state = "requests"
        elif command == b"AUTH":
            out.append(self._auth(rest))
        elif command == b"CONT":
            out.append(self._cont(rest))
        else:
            raise DovecotAuthError(f"unexpected command {_quoted(command)}")
        return True

    def _version(self, command: bytes, rest: bytes) -> None:
        fields = rest.split(b"\t")
        if command != b"VERSION" or len(fields) != 2 or not all(map(_is_number, fields)):
            raise DovecotAuthError("expected VERSION <major> <minor> first")
        if int(fields[0]) != VERSION[0]:
            raise DovecotAuthError(f"protocol major version {int(fields[0])}, not {VERSION[0]}")
        self._state = "cpid"

    def _auth(self, rest: bytes) -> Event:
        fields = rest.split(b"\t")
        if len(fields) < 2:
            raise DovecotAuthError("AUTH needs an id and a mechanism")
        request_id = _request_id(fields[0])
        if request_id in self._requests:
            raise DovecotAuthError(f"AUTH id {request_id} is already in flight")
        params: dict[bytes, bytes | None] = {}
        for param in fields[2:]:
            name, eq, value = param.partition(b"=")
            params[name] = unescape(value) if eq else None
        service = params.get(b"service")
        if not service:
            raise DovecotAuthError("AUTH without service=")
        try:
            service_name = service.decode("utf-8")
        except UnicodeDecodeError:
            raise DovecotAuthError("AUTH service= is not UTF-8") from None
        mechanism = fields[1].decode("ascii", "replace").upper()
        if mechanism not in self.mechanisms:
            # Postfix checks the mechanism against our MECH list first; anything else gets
            # a FAIL (Postfix's answer to an unknown mechanism is 535 as well).
            return Reply(_fail(request_id, "unsupported mechanism"), "unsupported mechanism")
        if len(self._requests) >= self.max_requests:
            self._make_room()
        secured = b"secured" in params  # "secured" (Postfix) or "secured=tls" (Dovecot 2.3+)
        request = _Request(mechanism, service_name, _address(params.get(b"rip")), secured, "")
        request.waiting = "plain" if mechanism == "PLAIN" else "username"
        self._requests[request_id] = request
        resp = params.get(b"resp")
        if resp is None or resp in (b"", b"="):
            # No initial response, or an empty one ("AUTH PLAIN =" gives resp==): ask.
            # The TAB after the id is required even for an empty challenge (6.3).
            challenge = "" if mechanism == "PLAIN" else USERNAME_PROMPT
            return Reply(_line("CONT", str(request_id), challenge))
        return self._step_request(request_id, request, resp)

    def _make_room(self) -> None:
        # Forget the oldest request still waiting for the client (abandoned by it); if
        # every one is being verified, the client is pipelining beyond the bound.
        for request_id, request in self._requests.items():
            if request.waiting:
                del self._requests[request_id]
                return
        raise DovecotAuthError(f"more than {self.max_requests} requests in flight")

    def _cont(self, rest: bytes) -> Event:
        id_field, tab, data = rest.partition(b"\t")
        request_id = _request_id(id_field)
        if not tab:
            raise DovecotAuthError("CONT needs an id and a response")
        request = self._requests.get(request_id)
        if request is None:
            # Forgotten (see _make_room) or never seen: Dovecot answers this way too.
            reason = "unknown or expired request"
            return Reply(_fail(request_id, reason), reason)
        if not request.waiting:
            raise DovecotAuthError(f"CONT for request {request_id}, which is being verified")
        return self._step_request(request_id, request, data)

    def _step_request(self, request_id: int, request: _Request, data: bytes) -> Event:
        """One client response (already checked to be the one expected)."""
        decoded = _b64decode(data)
        if decoded is None:
            return self._refuse(request_id, "invalid base64 data")
        if request.waiting == "plain":
            parts = _plain(decoded)
            if isinstance(parts, str):
                return self._refuse(request_id, parts)
            request.login, password = parts
        elif request.waiting == "username":
            login = _text(decoded)
            if not login:
                return self._refuse(request_id, "malformed LOGIN user name")
            request.login = login
            request.waiting = "password"
            return Reply(_line("CONT", str(request_id), PASSWORD_PROMPT))
        else:
            text = _text(decoded)
            if text is None:
                return self._refuse(request_id, "malformed LOGIN password")
            password = text
        request.waiting = ""
        return Credentials(
            request_id,
            request.mechanism,
            request.service,
            request.login,
            password,
            request.client,
            request.secured,
        )

    def _refuse(self, request_id: int, reason: str) -> Reply:
        del self._requests[request_id]
        return Reply(_fail(request_id, reason), reason)


def _fail(request_id: int, reason: str) -> bytes:
    return _line("FAIL", str(request_id), "reason=" + escape(reason))


def _is_number(text: bytes) -> bool:
    return 0 < len(text) <= _ID_DIGITS and text.isdigit()  # bytes.isdigit(): ASCII only


def _request_id(text: bytes) -> int:
    if not _is_number(text) or int(text) > _MAX_ID:
        raise DovecotAuthError(f"bad request id {_quoted(text)}")
    return int(text)


def _quoted(text: bytes) -> str:
    return repr(text[:20].decode("ascii", "backslashreplace"))


def _address(raw: bytes | None) -> Client | None:
    """rip= as an address; empty (Postfix sends "rip=" when it has none) or anything that
    is not an address gives None. An IPv4-mapped IPv6 address is the IPv4 address."""
    if not raw:
        return None
    try:
        address = ipaddress.ip_address(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _b64decode(data: bytes) -> bytes | None:
    """Strict base64 (RFC 4648, padded); "=" alone is an empty response (RFC 4954)."""
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _text(data: bytes) -> str | None:
    """UTF-8 without NUL, or None."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _plain(message: bytes) -> tuple[str, str] | str:
    """(login, password) from ``authzid NUL authcid NUL password`` (RFC 4616), or the
    reason to refuse it. An authorization identity other than the login is refused:
    vmaild has no master users who may act for others."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        return "malformed PLAIN message"
    texts = [_text(part) for part in parts]
    authzid, authcid, password = texts
    if authzid is None or authcid is None or password is None:
        return "malformed PLAIN message"
    if not authcid:
        return "empty PLAIN user name"
    if authzid and authzid != authcid:
        return "authorization identity differs from the user name"
    return authcid, password
