"""Checks of ``[auth]`` values, run when the configuration file is parsed.

Parsing a file (``vmaild serve``, ``vmaild check``, vmailctl) imports this module, and
parsing must stay light (no passlib, no pymysql), so the scheme names are listed here
rather than asked of passlib. vmaild-authpipe does not import it: it reads only ``[auth]
listen`` and ``relay_timeout``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import AuthConfig

#: Schemes new hashes may be made in (passlib handler names; "argon2" is argon2id).
NEW_HASH_SCHEMES = ("sha512_crypt", "sha256_crypt", "bcrypt", "argon2")
_NAMED = re.compile(r"%\((\w+)\)s")
_UPDATE_PARAMS = frozenset({"address", "old", "new"})


class AuthSettingError(ValueError):
    """A bad ``[auth]`` value; ``key`` names it."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"[auth] {key}: {problem}")
        self.key = key
        self.problem = problem


def validate(ac: AuthConfig) -> None:
    if ac.password_scheme not in NEW_HASH_SCHEMES:
        raise AuthSettingError("password_scheme", f"must be one of {', '.join(NEW_HASH_SCHEMES)}")
    if ac.password_scheme == "bcrypt" and ac.password_rounds and not 4 <= ac.password_rounds <= 31:
        raise AuthSettingError("password_rounds", "bcrypt takes log2 rounds, 4..31")
    if ac.password_scheme == "argon2" and ac.password_rounds > 100:
        raise AuthSettingError("password_rounds", "argon2 takes a time cost, 1..100")
    if ac.password_scheme.startswith("sha") and ac.password_rounds and not (
            1000 <= ac.password_rounds <= 999_999_999):
        raise AuthSettingError("password_rounds", "sha-crypt takes 1000..999999999 rounds")
    if not ac.enumerate_query.strip():
        raise AuthSettingError("enumerate_query", "missing")
    for key in ("passwd_query", "rehash_query"):
        check_update_query(key, getattr(ac, key))
    if ac.fail_delay_max < ac.fail_delay:
        raise AuthSettingError("fail_delay_max", "must not be less than fail_delay")


def check_update_query(key: str, sql: str) -> None:
    """Named parameters only, all three of them: without ``%(old)s`` an update could
    overwrite a password changed meanwhile."""
    names = set(_NAMED.findall(sql))
    unknown = names - _UPDATE_PARAMS
    if unknown:
        raise AuthSettingError(key, f"unknown parameter %({sorted(unknown)[0]})s "
                                    "(use %(address)s, %(old)s, %(new)s)")
    missing = _UPDATE_PARAMS - names
    if missing:
        raise AuthSettingError(key, "needs " + ", ".join(f"%({m})s" for m in sorted(missing)))
    rest = _NAMED.sub("", sql).replace("%%", "")
    if "%" in rest:
        raise AuthSettingError(key, "a literal '%' must be written '%%'")
