"""Postfix SMTPD access-policy delegation codec (PROTOCOLS.md section 3). Pure: no I/O.

A request is ``name=value LF`` lines ended by an empty line; the reply is ``action=<action>
LF LF``. There is no escaping and no error reply: "In case of trouble the policy server must
not send a reply. Instead it must log a warning and disconnect." (SMTPD_POLICY_README). So
:class:`PolicyDecoder` raises :class:`PolicyError` and the server closes without answering.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .buffer import DecodeError, StreamDecoder

# Postfix 3.x sends about 35 attributes of a few hundred bytes in all (3.1).
DEFAULT_MAX_REQUEST = 16384
MAX_ATTRIBUTES = 100


class PolicyError(DecodeError["PolicyRequest"]):
    """A request that must not be answered: log it and close the connection."""


def _text(name: str) -> property:
    """A read-only property returning attribute *name*, or "" when Postfix did not send it."""
    return property(lambda self: self.attrs.get(name, ""), doc=f"The {name!r} attribute.")


def _number(name: str) -> property:
    """A read-only property returning attribute *name* as an int, 0 when absent or not decimal."""

    def get(self: PolicyRequest) -> int:
        value = self.attrs.get(name, "")
        # isdecimal() alone would also accept non-ASCII digits such as Arabic-Indic ones.
        return int(value) if value.isascii() and value.isdecimal() else 0

    return property(get, doc=f"The {name!r} attribute as an int (0 if absent or bad).")


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One policy request. *attrs* is read-only and keeps unknown attributes.

    When a name repeats, the FIRST value wins (Postfix never repeats one; the README lets the
    server pick the first or the last, 3.1).
    """

    attrs: Mapping[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.attrs.get(name, default)

    # Postfix sends every attribute every time, empty or 0 when not applicable (3.1).
    request = _text("request")
    protocol_state = _text("protocol_state")
    protocol_name = _text("protocol_name")
    client_address = _text("client_address")
    client_name = _text("client_name")
    helo_name = _text("helo_name")
    sender = _text("sender")
    recipient = _text("recipient")
    queue_id = _text("queue_id")
    instance = _text("instance")
    sasl_method = _text("sasl_method")
    sasl_username = _text("sasl_username")
    sasl_sender = _text("sasl_sender")
    policy_context = _text("policy_context")
    recipient_count = _number("recipient_count")
    size = _number("size")


class PolicyDecoder(StreamDecoder[PolicyRequest]):
    """Incremental request decoder; gives the same results however the input is split.

    *max_request* bounds a whole request (all its lines and LFs, the final empty line
    included), so the buffer never holds more than that plus one chunk. After a
    :class:`PolicyError` every further ``feed()`` raises again.
    """

    error = PolicyError

    def __init__(
        self, max_request: int = DEFAULT_MAX_REQUEST, *, max_attributes: int = MAX_ATTRIBUTES
    ) -> None:
        super().__init__(max_request)
        self._max_attributes = max_attributes
        self._attrs: dict[str, str] = {}
        self._lines = 0  # attribute lines of the current request, duplicates included
        self._size = 0  # bytes of the current request consumed from the buffer
        self._too_long = f"request longer than {max_request} bytes"

    def _in_request(self) -> bool:
        return self._size > 0

    def _step(self, out: list[PolicyRequest]) -> bool:
        """Consume one line; False when more input is needed."""
        # What is left of the request's budget bounds the line, complete or not ...
        line = self._buf.line(self.max_request - self._size, self._too_long)
        if line is None:
            return False
        # ... and a complete line also spends its LF.
        self._size += len(line) + 1
        if self._size > self.max_request:
            raise PolicyError(self._too_long)
        if line:
            self._add(line)
        else:
            out.append(self._finish())
        return True

    def _add(self, line: bytes) -> None:
        self._lines += 1
        if self._lines > self._max_attributes:
            raise PolicyError(f"more than {self._max_attributes} attributes")
        # Names never contain '=', NUL or LF and values never contain NUL or LF (3.1).
        if b"\0" in line:
            raise PolicyError("NUL byte in request")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError("request is not valid UTF-8") from None
        # Everything after the FIRST '=' is the value; values may contain '='. A trailing
        # CR is kept: Postfix never sends one (attr_scan_plain.c does not strip it either).
        name, eq, value = text.partition("=")
        if not eq:
            raise PolicyError("attribute line without '='")
        if not name:
            raise PolicyError("attribute with an empty name")
        self._attrs.setdefault(name, value)  # the first value wins

    def _finish(self) -> PolicyRequest:
        if not self._attrs:
            # Postfix never sends an empty request; a lone LF means a confused client.
            raise PolicyError("empty request")
        request = PolicyRequest(MappingProxyType(self._attrs))
        self._attrs = {}
        self._lines = 0
        self._size = 0
        return request


def reply_action(action: str) -> bytes:
    """``action=<action> LF LF``: the one and only reply to a request (3.2).

    Raises ValueError for actions Postfix would misread:
    * empty: "has empty value", treated as OK, i.e. a silent permit;
    * all digits (e.g. ``550``): the legacy pop-before-smtp form, also a permit;
    * leading whitespace: the verb would be empty, an unknown restriction (451 4.3.5);
    * CR, LF or NUL: a CR stays in the value and the line ``\\r`` is not the empty line Postfix
      waits for (a 100 s hang); a LF would end the reply early (3.3, P-P2).
    """
    if not action:
        raise ValueError("empty action reads as OK in Postfix")
    if action.isascii() and action.isdigit():
        raise ValueError("an all-digit action reads as OK in Postfix")
    if action[0].isspace():
        raise ValueError("action starts with whitespace")
    if any(ch in action for ch in "\r\n\0"):
        raise ValueError("action contains CR, LF or NUL")
    return b"action=" + action.encode("utf-8") + b"\n\n"


DUNNO = reply_action("DUNNO")
"""No decision: Postfix goes on with the next restriction. The safe neutral reply."""
