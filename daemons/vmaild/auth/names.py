"""Login names: which spellings log in, what the guard counts, and how names are logged.

MariaDB's collations (utf8mb4_unicode_ci, the schema's) match more than one spelling to an
account: trailing spaces (PAD SPACE), accents ("älice"), full-width letters ("ａlice"). The
rule (issue 13, item 5): a login is accepted only if it equals the address the database
returned, ignoring ASCII case; no trimming, no Unicode folding (``str.lower`` would also
fold the Kelvin sign to "k"). Any other spelling is answered like a wrong password and
counts as a failure of the account returned, so rotating spellings gains a guesser nothing.
"""

from __future__ import annotations

import string

from ..logsafe import shown
from .accounts import Account

#: Longest guard key made from a name that matched no account.
MAX_KEY = 255
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


def same_spelling(login: str, address: str) -> bool:
    """True if ``login`` is ``address`` up to ASCII case."""
    return len(login) == len(address) and ascii_lower(login) == ascii_lower(address)


def guard_key(account: Account | None, login: str) -> str:
    """What the brute-force guard counts: the account's address, lower-cased, whatever
    spelling reached it; for a name that matched no account, the name as typed,
    lower-cased and bounded."""
    if account is not None:
        return account.address.lower()
    return login.lower()[:MAX_KEY]


def shown_login(login: str) -> str:
    """A login name for a log line: bounded, printable (it comes from the client)."""
    return shown(login, 100) if login else "(none)"


def withheld(login: str) -> str:
    """A login name not (yet) matched to an account, for a line above debug: not shown,
    since it may be a password typed into the name field. Debug lines show it."""
    return "(a name matching no account)" if login else "(none)"
