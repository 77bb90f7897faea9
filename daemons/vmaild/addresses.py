"""Address rules for tcp: and socketmap: maps.

Postfix sends tcp: and socketmap: tables only the full address, in whatever case it arrived
(PROTOCOLS.md §1.5: the tables are PATTERN, not FIXED). What Postfix does for mysql: tables
on the client side, vmaild does on the server side, in Postfix's order (virtual(5)):
``user+ext@domain``, then ``user@domain``, then, with ``catchall = yes``, ``@domain``.
"""

from __future__ import annotations


def normalise(key: str, fold_case: bool = True) -> str:
    """The cache and query form of a key: lower-cased unless the map says otherwise."""
    return key.lower() if fold_case else key


def strip_extension(address: str, delimiters: str) -> str | None:
    """``user+ext@domain`` -> ``user@domain``; None when there is no extension to strip.

    Like Postfix, any character of ``recipient_delimiter`` starts the extension, and an
    address whose local part would become empty keeps its extension.
    """
    if not delimiters:
        return None
    at = address.rfind("@")
    local, domain = (address[:at], address[at:]) if at >= 0 else (address, "")
    cut = min((i for i in (local.find(d) for d in delimiters) if i > 0), default=-1)
    if cut <= 0:
        return None
    return local[:cut] + domain


def candidates(key: str, delimiters: str, catchall: bool) -> list[str]:
    """The keys to try, in order, until one is found."""
    keys = [key]
    at = key.rfind("@")
    if at <= 0 or at == len(key) - 1:
        return keys  # a domain, a bare name or '@domain' itself: no address rules
    stripped = strip_extension(key, delimiters)
    if stripped is not None:
        keys.append(stripped)
    if catchall:
        keys.append(key[at:])
    return keys
