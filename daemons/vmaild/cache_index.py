"""Which cached keys a changed address or domain affects, without scanning the cache.

The cache stores answers under the key Postfix asked for, so one row of the database
answers many keys: ``user@d`` also answers ``user+ext@d`` (the extension is stripped when
the full address is not found), and a catch-all ``@d`` answers every address of ``d``.
A targeted drop (changes.py) therefore needs, per map, the keys of a domain and the keys
whose extension-stripped form is an address. This index keeps both:

- ``domain -> keys`` for every key (an address's domain, or a bare domain itself);
- ``address -> keys`` only for keys that carry an extension (few in practice).

Memory: one set slot per entry plus one set per domain, about a third of what the entry
itself costs; it shrinks with the cache (every removal is mirrored here).
"""

from __future__ import annotations

from .addresses import strip_extension


def domain_of(key: str) -> str:
    """The domain a key belongs to: after the last '@', or the key itself (a domain)."""
    at = key.rfind("@")
    return (key[at + 1 :] if at >= 0 else key).lower()


class KeyIndex:
    __slots__ = ("delimiters", "_domains", "_extended")

    def __init__(self, delimiters: str = ""):
        self.delimiters = delimiters
        self._domains: dict[str, set[str]] = {}
        self._extended: dict[str, set[str]] = {}

    def add(self, key: str) -> None:
        domain = domain_of(key)
        keys = self._domains.get(domain)
        if keys is None:
            keys = self._domains[domain] = set()
        keys.add(key)
        base = strip_extension(key, self.delimiters) if "@" in key else None
        if base is not None:
            self._extended.setdefault(base.lower(), set()).add(key)

    def discard(self, key: str) -> None:
        domain = domain_of(key)
        keys = self._domains.get(domain)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._domains[domain]
        base = strip_extension(key, self.delimiters) if "@" in key else None
        if base is not None:
            variants = self._extended.get(base.lower())
            if variants is not None:
                variants.discard(key)
                if not variants:
                    del self._extended[base.lower()]

    def clear(self) -> None:
        self._domains.clear()
        self._extended.clear()

    def of_domain(self, domain: str) -> list[str]:
        """Every key of ``domain`` (its addresses, '@domain' and the domain itself)."""
        return list(self._domains.get(domain.lower(), ()))

    def variants(self, address: str) -> list[str]:
        """The keys with an extension whose stripped form is ``address``."""
        return list(self._extended.get(address.lower(), ()))
