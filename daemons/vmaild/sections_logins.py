"""The login sections of vmaild.conf: ``[auth]`` (one login service, its brute-force guard,
app passwords and history) and ``[sasl]`` (Postfix's Dovecot SASL front door).

Part of reading the configuration, like ``sections.py`` (whose ``Section`` base, ``_num``
bounds and ``_checked`` helper these use): a leaf that imports only the light modules that
know what a value may be, so vmaild-authpipe can read the file without loading the rest.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import expansions
from .auth.settings import NEW_HASH_SCHEMES, check_network, check_update_query
from .sections import ListenerSection, _checked, _num
from .values import ConfigError, Listen


@dataclass(frozen=True)
class AuthConfig(ListenerSection):
    """``[auth]``: logins for Courier's authdaemond (through vmaild-authpipe) and, through it,
    Cyrus SASL (vmaild/auth/, PROTOCOLS.md sections 4 and 5, courier/README.md).

    ``query`` takes Postfix expansions (%s %u %d) of the login name; its columns are read
    by name: address, password, maildir, name, active, quota (maildir++ text) or
    quota_bytes/quota_messages, options, imap_access/pop3_access/smtp_access (on, off,
    app; absent: on), and home/uid/gid, which default to ``[mailbox]``.
    The defaults fit ``vmailctl db migrate``'s schema; for an unmigrated seed database use
    ``query = SELECT email AS address, password FROM users WHERE email='%s'``,
    ``enumerate_query = SELECT email AS address FROM users``, ``rehash = no`` (the seed's
    varchar(20) column holds no modern hash) and the seed forms of the two updates below
    (without ``password_changed_at``). The updates take named parameters %(address)s,
    %(old)s (the hash that was verified: a concurrent change is never overwritten) and
    %(new)s; a literal '%' in them is written '%%'.
    """

    listen: Listen | None = None
    query: str = (
        "SELECT u.email AS address, u.password, u.maildir, u.name, u.quota_bytes, "
        "u.quota_messages, u.active AND COALESCE(d.active, 1) AS active, "
        "u.imap_access, u.pop3_access, u.smtp_access FROM users u "
        "LEFT JOIN domains d ON d.domain = SUBSTRING_INDEX(u.email, '@', -1) "
        "WHERE u.email = '%s'"
    )
    enumerate_query: str = (
        "SELECT u.email AS address, u.maildir FROM users u "
        "LEFT JOIN domains d ON d.domain = SUBSTRING_INDEX(u.email, '@', -1) "
        "WHERE u.active = 1 AND COALESCE(d.active, 1) = 1 ORDER BY u.email"
    )
    # PASSWD requests (authpasswd, webmail).
    passwd_query: str = (
        "UPDATE users SET password = %(new)s, password_changed_at = NOW() "
        "WHERE email = %(address)s AND password = %(old)s"
    )
    # Upgrades on login keep password_changed_at: the password itself did not change.
    rehash_query: str = (
        "UPDATE users SET password = %(new)s WHERE email = %(address)s AND password = %(old)s"
    )
    # New hashes (PASSWD, rehash): sha512_crypt, sha256_crypt, bcrypt or argon2.
    password_scheme: str = "sha512_crypt"
    # 0: passlib's default cost for the scheme (rounds, or log2 rounds for bcrypt).
    password_rounds: int = _num(0, 0, 999_999_999)
    # Store a new hash on a successful login when the stored one is in a deprecated scheme
    # (des_crypt, md5_crypt, clear text) or not in password_scheme.
    rehash: bool = True
    # Threads that verify and hash passwords (0: one per CPU); never the event loop.
    hash_workers: int = _num(0, 0, 64)
    # A bounded share of the hashing threads: at most this many verifications at once for
    # one account, and for one client address (where the front door knows it); an attempt
    # over its share gets FAIL at once, without hashing. Never more than hash_workers - 1
    # (at least 1), so no account or address can take the whole pool; 0: no share.
    hash_share_account: int = _num(2, 0, 64)
    hash_share_client: int = _num(4, 0, 64)
    # Verified logins are remembered under (address, stored hash, keyed password digest),
    # so a changed hash never matches. While the database is down only they log in.
    login_cache_ttl: float = _num(3600.0, 0)
    login_cache_size: int = _num(100_000, 0)
    # Repeated failures for one account: after the second in a row it may not be tried for
    # fail_delay seconds, doubling, at most fail_delay_max (clients give up after 10 s);
    # attempts meanwhile are refused without hashing (authpipe never waits; a door that
    # can wait delays its FAIL instead). Forgotten fail_window seconds after the last
    # failure. At most fail_tracked accounts (or unknown names) are remembered.
    fail_delay: float = _num(0.5, 0, 5)
    fail_delay_max: float = _num(3.0, 0, 8)
    fail_window: float = _num(900.0, 0)
    fail_tracked: int = _num(100_000, 1)
    # -- Brute-force defence (auth/guard.py; README "Brute-force defence") ----------------
    # Failures are counted per client address prefix (where the front door knows the
    # address: SASL), per login, and per (login, address prefix) pair, in the database's
    # login_failures table shared by every vmaild host (in this process while it does not
    # answer). The fail_* keys above give the delay: from the fail_delay_after-th failure
    # within fail_window, fail_delay doubling up to fail_delay_max. From the n-th failure
    # of a kind, that kind blocks for block_time seconds: 0 switches a kind's block off.
    fail_delay_after: int = _num(2, 1, 1000)
    block_pair_after: int = _num(5, 0, 1_000_000)
    block_address_after: int = _num(20, 0, 1_000_000)
    block_login_after: int = _num(50, 0, 1_000_000)
    block_time: float = _num(900.0, 1, 7 * 86400)
    # Address prefixes counted as one client.
    ipv4_prefix: int = _num(32, 8, 32)
    ipv6_prefix: int = _num(64, 16, 128)
    # Never counted nor refused by address (still counted by login): webmail on localhost.
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # vmaild-authpipe gives up on an answer after this long (authdaemond waits 30 s).
    relay_timeout: float = _num(25.0, 1, 29)
    # The login history (auth/history.py): the last login per account and service is
    # written in one batch every history_interval seconds (so at most one write per
    # account and service per interval); at most history_pending logins wait for it.
    history_interval: float = _num(60.0, 1, 86400)
    history_pending: int = _num(100_000, 1)

    def check(self) -> None:
        # Without a listener the section is unused: only its login query is judged (and
        # the login settings, when [sasl] logs in with them: config.py asks then).
        if self.listen is not None:
            self.check_login_settings()
            if not self.enumerate_query.strip():
                raise ConfigError("missing", key="enumerate_query")
            for key in ("passwd_query", "rehash_query"):
                _checked(key, check_update_query, getattr(self, key))
        if self.query:
            _checked("query", expansions.compile_query, self.query)
        for net in self.trusted_networks:
            _checked("trusted_networks", check_network, net)

    def check_login_settings(self) -> None:
        """What every login needs, whichever front door it came through."""
        self._check_hashing()
        if self.fail_delay_max < self.fail_delay:
            raise ConfigError("must not be less than fail_delay", key="fail_delay_max")

    def _check_hashing(self) -> None:
        scheme, rounds = self.password_scheme, self.password_rounds
        if scheme not in NEW_HASH_SCHEMES:
            raise ConfigError(
                f"must be one of {', '.join(NEW_HASH_SCHEMES)}", key="password_scheme"
            )
        if scheme == "bcrypt" and rounds and not 4 <= rounds <= 31:
            raise ConfigError("bcrypt takes log2 rounds, 4..31", key="password_rounds")
        if scheme == "argon2" and rounds > 100:
            raise ConfigError("argon2 takes a time cost, 1..100", key="password_rounds")
        if scheme.startswith("sha") and rounds and not 1000 <= rounds <= 999_999_999:
            raise ConfigError("sha-crypt takes 1000..999999999 rounds", key="password_rounds")


#: The SASL mechanisms vmaild can serve: both send the password itself, which is all a
#: stored hash can be checked against (PROTOCOLS.md 6.4).
SASL_MECHANISMS = ("PLAIN", "LOGIN")


@dataclass(frozen=True)
class SaslConfig(ListenerSection):
    """``[sasl]``: Postfix's ``smtpd_sasl_type = dovecot`` (servers/sasl.py, PROTOCOLS.md
    section 6), logging in with ``[auth]``'s query, hashes, cache and failure limits.

    ``listen`` is a unix socket (shipped: /var/spool/postfix/vmaild/auth, which smtpd
    reaches as ``smtpd_sasl_path = vmaild/auth``, chrooted or not) or a loopback address:
    the protocol has no client authentication, so whoever connects may try passwords.
    """

    listen: Listen | None = None
    mechanisms: tuple[str, ...] = SASL_MECHANISMS

    def check(self) -> None:
        if self.listen is not None and not self.listen.is_unix:
            host = self.listen.host or ""
            if not _is_loopback(host):
                raise ConfigError(
                    f"{host} is not a loopback address: use a unix socket, or 127.0.0.1 "
                    "(anyone who reaches the port could try passwords)",
                    key="listen",
                )
        names = [m.upper() for m in self.mechanisms]
        if not names or any(m not in SASL_MECHANISMS for m in names):
            raise ConfigError(f"must be some of {' '.join(SASL_MECHANISMS)}", key="mechanisms")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
