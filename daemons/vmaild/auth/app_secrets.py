"""App password secrets and networks: generating, recognising, hashing, parsing. No I/O.

Shared by the daemon (``app_passwords.py``) and vmailctl (``ctl/app_passwords.py``), so
both agree on the shape and the hash. Part of ``vmaild serve`` and vmailctl only.

A secret is 20 characters of the RFC 4648 base32 alphabet (a-z, 2-7: no 0/1/8/9 to
confuse with o/l/b/g), in four groups of five joined by '-', e.g.
``kq7rt-mw2xa-b5nzc-h3pde``: 20 x 5 = 100 bits from ``secrets``. Mail clients are typed
into by hand, so the check accepts it in any letter case, with or without the dashes, or
with spaces between the groups; the hash is of the canonical form (lower case, dashes).

Stored as a plain SHA-256 hex digest, without salt or stretching. Salts and slow hashes
protect *human* passwords: they make a leaked table useless against dictionaries and
precomputed tables, and slow each guess of a low-entropy secret. A 100-bit uniformly random
secret has no dictionary, precomputing 2^100 digests is out of reach, and even at 10^12
guesses a second, finding one secret from its digest takes ~4*10^10 years. So one SHA-256
(about a microsecond) is enough, and an app password login costs no hashing-pool slot.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets

ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
GROUPS = 4
GROUP = 5
BITS = GROUPS * GROUP * 5  # 100
_SHAPE = re.compile(rf"[{ALPHABET}]{{{GROUP}}}(?:[- ]?[{ALPHABET}]{{{GROUP}}}){{{GROUPS - 1}}}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def generate() -> str:
    """A new secret in its canonical form."""
    chars = "".join(secrets.choice(ALPHABET) for _ in range(GROUPS * GROUP))
    return "-".join(chars[i : i + GROUP] for i in range(0, len(chars), GROUP))


def canonical(password: str) -> str | None:
    """The canonical form of ``password`` if it has an app password's shape, else None."""
    text = password.strip().lower()
    if len(text) > GROUPS * (GROUP + 1) or not _SHAPE.fullmatch(text):
        return None
    chars = text.replace("-", "").replace(" ", "")
    return "-".join(chars[i : i + GROUP] for i in range(0, len(chars), GROUP))


def looks_like_app_password(password: str) -> bool:
    """True if ``password`` has an app password's shape: only then is the database asked."""
    return canonical(password) is not None


def digest(password: str) -> str:
    """The stored form: SHA-256 hex of the canonical secret (of the text as given when it
    does not have the shape, which then matches nothing generated)."""
    text = canonical(password) or password
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_networks(text: str | None) -> list[Network]:
    """The ``networks`` column: comma-separated CIDRs (host bits allowed and ignored,
    a bare address is /32 or /128). Raises ValueError naming the bad entry."""
    out: list[Network] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"not a network address: {part!r}") from None
    return out


def within(client: Address, networks: list[Network]) -> bool:
    """True if ``client`` is in one of ``networks``; an IPv4-mapped IPv6 client
    (::ffff:192.0.2.1) counts as its IPv4 address."""
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
        client = client.ipv4_mapped
    return any(client.version == n.version and client in n for n in networks)
