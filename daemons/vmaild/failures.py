"""The one "no answer right now" exception, shared by every service and listener.

A map lookup (lookup.py) and a login (auth/service.py) both end in one of their answers or in
:class:`TemporaryFailure`; each listener turns the latter into its protocol's temporary error
(tcp_table ``400``, socketmap ``TEMP``, authpipe: close without a reply). A leaf module, so
that services and listeners import it without importing each other.
"""

from __future__ import annotations


class TemporaryFailure(Exception):
    """The answer is unknown right now (database down, broken query, an unusable row): the
    client must retry later, never read it as "not found" or "wrong password"."""
