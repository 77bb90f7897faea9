"""Validation and normalisation of the names an admin types: domains and addresses.

What is stored is what Postfix will be asked for: lower case, IDN domains as A-labels
(``xn--...``), no trailing dot. The database compares case-insensitively anyway, but the
Maildir path is built from the stored address, so it must be in one canonical form.

Local parts are refused when they contain characters that would break something
downstream, not merely what RFC 5322 frowns upon: whitespace and control characters
(protocol lines), ``,`` (destination lists are comma-separated), ``/`` and ``\\`` and the
names ``.`` / ``..`` (the local part is a directory name under the mailbox base), and
quotes, brackets and ``@`` (the address would not parse back the same way).
"""

from __future__ import annotations

import re

MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1 (octets)
MAX_DOMAIN = 253  # without the trailing dot
MAX_ADDRESS = 255  # the width of every address column
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_FORBIDDEN_LOCAL = set(' ,/\\"<>()[];:@') | {chr(c) for c in range(32)} | {"\x7f"}


class InvalidName(ValueError):
    """A domain or address that cannot be stored; str() is the reason for the admin."""


def domain(text: str) -> str:
    """The canonical form of a domain name, or InvalidName."""
    raw = text.strip()
    name = raw[:-1] if raw.endswith(".") else raw
    if not name:
        raise InvalidName("empty domain")
    name = name.lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise InvalidName(
                f"{raw!r} is not a valid internationalised domain "
                f"(cannot convert it to A-labels: {e})"
            ) from None
    if len(name) > MAX_DOMAIN:
        raise InvalidName(f"domain {raw!r} is longer than {MAX_DOMAIN} characters")
    labels = name.split(".")
    if len(labels) < 2:
        raise InvalidName(f"domain {raw!r} needs at least two labels (like example.com)")
    for label in labels:
        if not _LABEL.match(label):
            raise InvalidName(
                f"domain {raw!r}: bad label {label!r} (letters, digits and "
                f"inner hyphens, 1-63 characters)"
            )
        if label.startswith("xn--"):
            _check_a_label(raw, label)
    if labels[-1].isdigit():
        raise InvalidName(f"domain {raw!r}: the top-level label cannot be all digits")
    return name


def _check_a_label(raw: str, label: str) -> None:
    try:
        label.encode("ascii").decode("idna")
    except UnicodeError:
        raise InvalidName(f"domain {raw!r}: {label!r} is not a valid A-label") from None


def local_part(text: str, whole: str) -> str:
    """The canonical local part (lower case); ``whole`` is the address for messages."""
    if not text:
        raise InvalidName(f"address {whole!r} has an empty local part")
    bad = sorted({c for c in text if c in _FORBIDDEN_LOCAL})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise InvalidName(f"address {whole!r}: local part contains {shown}")
    if text in (".", ".."):
        raise InvalidName(f"address {whole!r}: local part cannot be {text!r}")
    if len(text.encode("utf-8")) > MAX_LOCAL:
        raise InvalidName(f"address {whole!r}: local part is longer than {MAX_LOCAL} bytes")
    return text.lower()


def address(text: str) -> str:
    """The canonical form of ``user@domain``, or InvalidName."""
    raw = text.strip()
    if raw.count("@") != 1:
        raise InvalidName(f"{raw!r} is not an address (exactly one '@' needed)")
    local, _, dom = raw.partition("@")
    result = f"{local_part(local, raw)}@{domain(dom)}"
    if len(result) > MAX_ADDRESS:
        raise InvalidName(f"address {raw!r} is longer than {MAX_ADDRESS} characters")
    return result


def pattern(text: str) -> str:
    """An address or a whole-domain pattern ``@domain`` (alias sources, sender grants)."""
    raw = text.strip()
    if raw.startswith("@"):
        return "@" + domain(raw[1:])
    return address(raw)


def destinations(text: str) -> list[str]:
    """A comma-separated destination list (as stored in forwardings.destination)."""
    items = [part.strip() for part in text.split(",")]
    if not any(items):
        raise InvalidName("no destination given")
    result: list[str] = []
    for item in items:
        if not item:
            raise InvalidName(f"empty destination in {text!r}")
        a = address(item)
        if a not in result:
            result.append(a)
    return result


def domain_of(value: str) -> str:
    """The domain part of a stored address or ``@domain`` pattern."""
    return value.rpartition("@")[2]


def unicode_domain(name: str) -> str:
    """The U-label form of a stored domain, for display; the input if it has no A-labels."""
    if "xn--" not in name:
        return name
    try:
        return name.encode("ascii").decode("idna")
    except UnicodeError:
        return name
