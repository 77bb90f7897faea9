"""What ``[auth]`` settings may hold, for ``sections.AuthConfig.check``.

Part of reading the configuration, which vmaild-authpipe does too (``[auth] listen``), so
this module stays free of heavy imports: the scheme names are listed here rather than asked
of passlib.
"""

from __future__ import annotations

import ipaddress
import re

#: Schemes new hashes may be made in (passlib handler names; "argon2" is argon2id).
NEW_HASH_SCHEMES = ("sha512_crypt", "sha256_crypt", "bcrypt", "argon2")
_NAMED = re.compile(r"%\((\w+)\)s")
_UPDATE_PARAMS = frozenset({"address", "old", "new"})


def check_update_query(sql: str) -> None:
    """Named parameters only, all three of them: without ``%(old)s`` an update could
    overwrite a password changed meanwhile. Raises ValueError saying what is wrong."""
    names = set(_NAMED.findall(sql))
    unknown = names - _UPDATE_PARAMS
    if unknown:
        raise ValueError(
            f"unknown parameter %({sorted(unknown)[0]})s (use %(address)s, %(old)s, %(new)s)"
        )
    missing = _UPDATE_PARAMS - names
    if missing:
        raise ValueError("needs " + ", ".join(f"%({m})s" for m in sorted(missing)))
    rest = _NAMED.sub("", sql).replace("%%", "")
    if "%" in rest:
        raise ValueError("a literal '%' must be written '%%'")


def check_network(text: str) -> None:
    """An address or network (``192.0.2.0/24``, ``2001:db8::/32``, ``::1``); host bits
    set are an error, since they usually mean a typo in the prefix length."""
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"not a network: {text!r} ({e})") from None
