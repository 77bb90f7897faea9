"""Password hashes: recognising, verifying and making them, with passlib (``libpass``).

Stored forms accepted (what the seed, vmailctl and other mail stacks leave in a table):

- crypt(3) strings: des_crypt (13 characters; the seed's MariaDB ``ENCRYPT()``),
  md5_crypt ``$1$``, sha256_crypt ``$5$``, sha512_crypt ``$6$``, bcrypt ``$2a$``/``$2b$``/
  ``$2y$`` (PHP's); argon2 ``$argon2id$`` (and ``$argon2i$``/``$argon2d$``);
- any of them behind a Dovecot-style ``{SCHEME}`` prefix ({CRYPT}, {MD5-CRYPT},
  {SHA256-CRYPT}, {SHA512-CRYPT}, {BLF-CRYPT}, {ARGON2ID}, ...): the prefix is stripped and
  the hash must then be of that scheme;
- clear text only behind {PLAIN} or {CLEARTEXT}. A bare string is never compared as clear
  text: a 13-character password would otherwise pass for a DES hash.

crypt(3) forms are verified by the system's libxcrypt when it has the method (see
auth/cryptlib.py for why), everything else and the fallback by passlib's handlers. Every
comparison is constant-time: passlib's verify is, and ours use hmac.compare_digest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any

from passlib.context import CryptContext  # type: ignore[import-untyped]

from .auth import cryptlib

SCHEMES = ("sha512_crypt", "sha256_crypt", "bcrypt", "argon2", "md5_crypt", "des_crypt")
#: Always rehashed on login (when rehashing is on), whatever the default scheme.
DEPRECATED = frozenset({"md5_crypt", "des_crypt", "plaintext"})
#: Longer passwords are refused unverified: sha-crypt's cost grows with the length.
MAX_PASSWORD = 1024

#: Dovecot scheme prefix -> passlib handler ("plaintext" is clear text; None: any crypt(3)).
PREFIXES: dict[str, str | None] = {
    "CRYPT": None,
    "DES-CRYPT": "des_crypt",
    "MD5-CRYPT": "md5_crypt",
    "SHA256-CRYPT": "sha256_crypt",
    "SHA512-CRYPT": "sha512_crypt",
    "BLF-CRYPT": "bcrypt",
    "BCRYPT": "bcrypt",
    "ARGON2ID": "argon2",
    "ARGON2I": "argon2",
    "PLAIN": "plaintext",
    "CLEARTEXT": "plaintext",
}
_CRYPT_FAMILY = frozenset({"des_crypt", "md5_crypt", "sha256_crypt", "sha512_crypt", "bcrypt"})
_C64 = "./0-9A-Za-z"
_FORMATS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("des_crypt", re.compile(rf"[{_C64}]{{13}}")),
    ("md5_crypt", re.compile(rf"\$1\$[^$]{{0,8}}\$[{_C64}]{{22}}")),
    ("sha256_crypt", re.compile(rf"\$5\$(rounds=\d+\$)?[^$]{{0,16}}\$[{_C64}]{{43}}")),
    ("sha512_crypt", re.compile(rf"\$6\$(rounds=\d+\$)?[^$]{{0,16}}\$[{_C64}]{{86}}")),
    ("bcrypt", re.compile(rf"\$2[aby]\$\d\d\$[{_C64}]{{53}}")),
    ("argon2", re.compile(r"\$argon2(id|i|d)\$[^\s]+")),
)
# What libxcrypt's crypt_gensalt wants per scheme, and the 'count' passlib would use.
_GENSALT_PREFIX = {
    "sha512_crypt": b"$6$",
    "sha256_crypt": b"$5$",
    "md5_crypt": b"$1$",
    "des_crypt": b"",
}


@dataclass(frozen=True, slots=True)
class StoredHash:
    """A stored password split into its scheme and the hash proper (prefix removed)."""

    scheme: str | None  # passlib handler name, "plaintext", or None: not understood
    hash: str = field(repr=False)
    prefix: str | None = None


def identify(hash_: str) -> str | None:
    """The passlib scheme of a bare (unprefixed) hash, or None."""
    for scheme, pattern in _FORMATS:
        if pattern.fullmatch(hash_):
            return scheme
    return None


def parse(stored: str) -> StoredHash:
    """Strip a ``{SCHEME}`` prefix and tell which scheme the rest is in."""
    stored = stored.strip()
    if stored.startswith("{") and "}" in stored:
        name, _, rest = stored[1:].partition("}")
        key = name.upper()
        if key not in PREFIXES:
            return StoredHash(None, rest, name)
        declared = PREFIXES[key]
        if declared == "plaintext":
            return StoredHash("plaintext", rest, name)
        found = identify(rest)
        # The prefix promises a scheme; a hash of another one is a corrupt entry.
        ok = found is not None and (
            declared is None and found in _CRYPT_FAMILY or found == declared
        )
        return StoredHash(found if ok else None, rest, name)
    return StoredHash(identify(stored), stored)


def verify(password: str, stored: str) -> bool:
    """True if ``password`` matches the stored hash. Slow by design: call it in a worker
    thread. Empty, overlong or NUL-containing passwords never match."""
    if not password or len(password) > MAX_PASSWORD or "\0" in password:
        return False
    s = parse(stored)
    if s.scheme is None or not s.hash:
        return False
    if s.scheme == "plaintext":
        return _equal(password.encode(), s.hash.encode())
    if s.scheme in _CRYPT_FAMILY:
        out = cryptlib.crypt(password.encode(), s.hash.encode())
        if out is not None:
            return hmac.compare_digest(out, s.hash.encode())
    try:
        return bool(_handler(s.scheme).verify(password, s.hash))
    except (ValueError, TypeError):  # malformed hash, or a password bcrypt refuses
        return False


#: Schemes whose verification costs microseconds (DES is one crypt(3) call, ~10 us; clear
#: text a digest): not worth a trip to a worker thread.
CHEAP = frozenset({"des_crypt", "plaintext"})


def is_cheap(stored: str) -> bool:
    """Whether verifying against ``stored`` is cheap enough for the event loop."""
    return parse(stored).scheme in CHEAP


def clear_text(stored: str) -> str | None:
    """The password itself when it is stored as {PLAIN}/{CLEARTEXT} (CRAM needs it)."""
    s = parse(stored)
    return s.hash if s.scheme == "plaintext" else None


def _equal(a: bytes, b: bytes) -> bool:
    # Compare digests, so that not even the length of a clear-text password shows.
    return hmac.compare_digest(hashlib.sha256(a).digest(), hashlib.sha256(b).digest())


def needs_update(stored: str, default_scheme: str) -> bool:
    """Whether a login with this stored hash should store a new one: the scheme is
    deprecated or not the default. Cost (rounds) alone does not count, so hashes made
    elsewhere with other rounds are left alone; a hash we cannot read is never replaced."""
    scheme = parse(stored).scheme
    if scheme is None:
        return False
    return scheme in DEPRECATED or scheme != _canonical(default_scheme)


def _canonical(scheme: str) -> str:
    return "argon2" if scheme in ("argon2id", "argon2") else scheme


def _check_scheme(scheme: str) -> str:
    scheme = _canonical(scheme)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown password scheme {scheme!r} (one of {', '.join(SCHEMES)})")
    return scheme


def _handler(scheme: str) -> Any:
    from passlib.registry import get_crypt_handler  # type: ignore[import-untyped]

    return get_crypt_handler(scheme)


def context(default_scheme: str = "sha512_crypt") -> CryptContext:
    """A CryptContext over every scheme vmaild reads, with ``default_scheme`` for new hashes."""
    default_scheme = _check_scheme(default_scheme)
    return CryptContext(
        schemes=list(SCHEMES), default=default_scheme, deprecated=["md5_crypt", "des_crypt"]
    )


def hash_password(password: str, scheme: str = "sha512_crypt", rounds: int = 0) -> str:
    """A new hash of ``password`` in ``scheme`` (no prefix). ``rounds`` 0 takes passlib's
    default cost for the scheme. Slow by design: in the daemon, call it in a worker thread.

    The crypt(3) schemes are made by libxcrypt when it can (same format, no GIL held) and
    checked to read back as that scheme; bcrypt and argon2 by passlib, whose backends
    (the bcrypt and argon2-cffi packages) release the GIL themselves.
    """
    scheme = _check_scheme(scheme)
    if not password or "\0" in password:
        raise ValueError("a password must be non-empty and without NUL")
    handler = _handler(scheme)
    cost = rounds or getattr(handler, "default_rounds", 0) or 0
    if scheme in _GENSALT_PREFIX:
        fast = _hash_with_libcrypt(password, scheme, cost)
        if fast is not None:
            return fast
    if scheme == "bcrypt":
        # $2b$: the current ident; passlib reads $2y$ and $2a$ too.
        handler = handler.using(ident="2b", **({"rounds": cost} if cost else {}))
    elif cost and "rounds" in getattr(handler, "setting_kwds", ()):
        handler = handler.using(rounds=cost)
    return str(handler.hash(password))


def _hash_with_libcrypt(password: str, scheme: str, cost: int) -> str | None:
    prefix = _GENSALT_PREFIX[scheme]
    count = cost if scheme in ("sha512_crypt", "sha256_crypt") else 0
    setting = cryptlib.gensalt(prefix, count)
    if setting is None:
        return None
    out = cryptlib.crypt(password.encode(), setting)
    if out is None:
        return None
    text = out.decode("ascii", "replace")
    return text if identify(text) == scheme else None
