"""Password hashing with passlib (the maintained ``libpass`` distribution).

Minimal for now: hashing in the configured scheme. The auth service extends this module
with verification of every stored format and upgrade-on-login.
"""

from __future__ import annotations

from passlib.context import CryptContext

SCHEMES = ("sha512_crypt", "sha256_crypt", "bcrypt", "argon2", "md5_crypt", "des_crypt")


def context(default_scheme: str = "sha512_crypt") -> CryptContext:
    if default_scheme not in SCHEMES:
        raise ValueError(f"unknown password scheme {default_scheme!r} "
                         f"(one of {', '.join(SCHEMES)})")
    return CryptContext(schemes=list(SCHEMES), default=default_scheme,
                        deprecated=["md5_crypt", "des_crypt"])


def hash_password(password: str, scheme: str = "sha512_crypt") -> str:
    return context(scheme).hash(password)
