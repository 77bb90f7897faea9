"""The seed tutorial's database and Postfix wiring, reproduced exactly.

vmaild must keep working with databases built by the tutorial in
shared/seed/ and must be able to import its ``mysql-virtual_*.cf`` files, so
the tests need that exact schema, ``ENCRYPT()`` passwords and the four query
files, byte for byte where it matters (the mailboxes query spans two lines
with a continuation line, exactly as the tutorial prints it).

Only ``hosts`` differs from the tutorial: the private test server listens on
a free port, written as ``127.0.0.1:PORT`` (mysql_table(5): ``inet:`` is the
default and optional; a host name of ``localhost`` would mean the default
unix socket, which is why the tutorial and we use the IP literal).
"""

from __future__ import annotations

import grp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.postfix.config import cool_down

if TYPE_CHECKING:
    from harness.mariadb.server import MariaDB

#: Names used by the tutorial (its GRANT line).
SEED_DBNAME = "mail_system"
SEED_DBUSER = "mail_admin"
SEED_DBPASSWORD = "mail_admin_password"

#: The four CREATE TABLE statements, verbatim from the tutorial (section 2).
SEED_SCHEMA = """\
CREATE TABLE domains (domain varchar(50) NOT NULL, PRIMARY KEY (domain) );
CREATE TABLE users (email varchar(80) NOT NULL, password varchar(20) NOT NULL,
  PRIMARY KEY (email) );
CREATE TABLE forwardings (source varchar(80) NOT NULL, destination TEXT NOT NULL,
  PRIMARY KEY (source) );
CREATE TABLE transport (domain varchar(128) NOT NULL default '', transport varchar(128) NOT NULL default '', UNIQUE KEY domain (domain));
"""  # noqa: E501 (verbatim from the tutorial)

#: The four lookup queries, verbatim from the tutorial's .cf files. The
#: mailboxes query is one logical line there, continued on an indented line;
#: this is the value Postfix sees after joining (newline + indentation become
#: one space, see :func:`cf_logical_value`).
SEED_QUERIES: dict[str, str] = {
    "domains": "SELECT domain AS virtual FROM domains WHERE domain='%s'",
    "mailboxes": (
        "SELECT CONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/')\n"
        "        FROM users WHERE email='%s'"
    ),
    "forwardings": "SELECT destination FROM forwardings WHERE source='%s'",
    "email2email": "SELECT email FROM users WHERE email='%s'",
}

#: File names the tutorial uses, by map name.
SEED_CF_NAMES: dict[str, str] = {
    "domains": "mysql-virtual_domains.cf",
    "mailboxes": "mysql-virtual_mailboxes.cf",
    "forwardings": "mysql-virtual_forwardings.cf",
    "email2email": "mysql-virtual_email2email.cf",
}

#: Example data. ``sales@raecoo.com`` is the tutorial's own example user.
SEED_DOMAINS: tuple[str, ...] = ("raecoo.com", "example.test", "example.org")

#: email -> clear-text password (stored with ENCRYPT(); DES crypt only looks
#: at the first 8 characters, which is one of the seed's weaknesses).
SEED_USERS: dict[str, str] = {
    "sales@raecoo.com": "password",
    "alice@example.test": "alice-pw1",
    "bob@example.test": "bob-pw22",
    "postmaster@example.org": "pm-secret",
}

#: source -> destination, as the forwardings table stores them: a plain
#: alias, a multi-destination alias (comma-separated, the way Postfix joins
#: several results), and a domain-wide catch-all whose source is ``@domain``.
SEED_FORWARDINGS: dict[str, str] = {
    "info@raecoo.com": "sales@raecoo.com",
    "team@example.test": "alice@example.test,bob@example.test",
    "@example.org": "postmaster@example.org",
}


def _sql_str(value: str) -> str:
    """Quote a constant for the seed SQL (our constants, not user input)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def seed_rows() -> str:
    """INSERT statements for the example data, users with ``ENCRYPT('...')``
    exactly as the tutorial's section 8 does."""
    lines = [f"INSERT INTO domains (domain) VALUES ({_sql_str(d)});" for d in SEED_DOMAINS]
    lines += [
        f"INSERT INTO users (email, password) VALUES ({_sql_str(e)}, ENCRYPT({_sql_str(p)}));"
        for e, p in SEED_USERS.items()
    ]
    lines += [
        f"INSERT INTO forwardings (source, destination) VALUES ({_sql_str(s)}, {_sql_str(d)});"
        for s, d in SEED_FORWARDINGS.items()
    ]
    return "\n".join(lines) + "\n"


def expected_answers() -> dict[str, dict[str, str]]:
    """What each seed query returns for each seeded key (map -> key -> value)."""
    mailbox = {e: f"{e.split('@')[1]}/{e.split('@')[0]}/" for e in SEED_USERS}
    return {
        "domains": {d: d for d in SEED_DOMAINS},
        "mailboxes": mailbox,
        "forwardings": dict(SEED_FORWARDINGS),
        "email2email": {e: e for e in SEED_USERS},
    }


@dataclass(frozen=True)
class SeedDatabase:
    """Where a seeded database lives, for building configs in tests."""

    mariadb: MariaDB
    dbname: str = SEED_DBNAME
    user: str = SEED_DBUSER
    password: str = SEED_DBPASSWORD


def load_seed(
    mariadb: MariaDB,
    dbname: str = SEED_DBNAME,
    user: str = SEED_DBUSER,
    password: str = SEED_DBPASSWORD,
    *,
    rows: bool = True,
) -> SeedDatabase:
    """Create the database and user, then the tutorial's tables (and rows).

    Drops an existing database of that name first, so it always yields the
    pristine seed state.
    """
    mariadb.drop_database(dbname)
    mariadb.create_database(dbname, user, password)
    mariadb.execute_script(SEED_SCHEMA + (seed_rows() if rows else ""), dbname)
    return SeedDatabase(mariadb, dbname, user, password)


def cf_text(query: str, hosts: str, dbname: str, user: str, password: str) -> str:
    """One mysql-virtual_*.cf file in the tutorial's key order and layout."""
    return (
        f"user = {user}\npassword = {password}\ndbname = {dbname}\n"
        f"query = {query}\nhosts = {hosts}\n"
    )


def cf_logical_value(query: str) -> str:
    """The query as Postfix reads it: a line starting with whitespace
    continues the previous logical line (postconf(5)); the line break and the
    leading whitespace are replaced by a single space."""
    first, *rest = query.split("\n")
    return " ".join([first.rstrip(), *(line.strip() for line in rest)])


def write_mysql_cf(
    directory: str | os.PathLike[str],
    mariadb: MariaDB,
    dbname: str = SEED_DBNAME,
    user: str = SEED_DBUSER,
    password: str = SEED_DBPASSWORD,
) -> dict[str, Path]:
    """Write the four tutorial .cf files pointing at ``mariadb``; return paths.

    Permissions follow the tutorial (``chmod o=``, ``chgrp postfix``): Postfix
    daemons that open tables after dropping privileges (proxymap) read them as
    ``postfix``; nobody else can read the password.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hosts = f"{mariadb.host}:{mariadb.port}"
    try:
        postfix_gid = grp.getgrnam("postfix").gr_gid
    except KeyError:
        postfix_gid = -1
    paths: dict[str, Path] = {}
    for name, filename in SEED_CF_NAMES.items():
        path = directory / filename
        path.write_text(cf_text(SEED_QUERIES[name], hosts, dbname, user, password))
        os.chown(path, -1, postfix_gid)
        os.chmod(path, 0o640)
        cool_down(path)  # a just-written .cf stalls every reader ~2 s
        paths[name] = path
    return paths


def authmysqlrc_text(
    mariadb: MariaDB,
    dbname: str = SEED_DBNAME,
    user: str = SEED_DBUSER,
    password: str = SEED_DBPASSWORD,
    *,
    home: str | os.PathLike[str] = "/home/vmail",
    via_socket: bool = False,
) -> str:
    """The tutorial's /etc/courier/authmysqlrc (section 5), for Courier's C
    authmysql as a benchmark baseline.

    Differences from the tutorial, all needed to reach the private server:
    MYSQL_DATABASE is the real database (the tutorial says ``mail`` but
    created ``mail_system``), and either 127.0.0.1 plus the port, or
    ``localhost`` plus MYSQL_SOCKET (the tutorial's localhost meant the
    system server's default socket). ``home`` replaces /home/vmail so tests
    can use a temp dir. The value is an SQL expression, hence the quotes.
    """
    if via_socket:
        server = f"MYSQL_SERVER\t\tlocalhost\nMYSQL_SOCKET\t\t{mariadb.socket}\nMYSQL_PORT\t\t0\n"
    else:
        server = f"MYSQL_SERVER\t\t{mariadb.host}\nMYSQL_PORT\t\t{mariadb.port}\n"
    return (
        server + f"MYSQL_USERNAME\t\t{user}\n"
        f"MYSQL_PASSWORD\t\t{password}\n"
        "MYSQL_OPT\t\t0\n"
        f"MYSQL_DATABASE\t\t{dbname}\n"
        "MYSQL_USER_TABLE\tusers\n"
        "MYSQL_CRYPT_PWFIELD\tpassword\n"
        "MYSQL_UID_FIELD\t\t5000\n"
        "MYSQL_GID_FIELD\t\t5000\n"
        "MYSQL_LOGIN_FIELD\temail\n"
        f'MYSQL_HOME_FIELD\t"{os.fspath(home)}"\n'
        "MYSQL_MAILDIR_FIELD\tCONCAT(SUBSTRING_INDEX(email,'@',-1),'/',SUBSTRING_INDEX(email,'@',1),'/')\n"
    )


def seed_main_cf(
    cf: dict[str, Path], virtual_mailbox_base: str | os.PathLike[str]
) -> dict[str, str]:
    """The tutorial's virtual-domain main.cf settings, pointing at ``cf``.

    Only the lookup wiring (no TLS, no SASL, no hostnames): enough to run the
    seed's Postfix behaviour inside a private :class:`~harness.postfix.server.Postfix`.
    """
    return {
        "virtual_alias_domains": "",
        "virtual_alias_maps": f"proxy:mysql:{cf['forwardings']}, mysql:{cf['email2email']}",
        "virtual_mailbox_domains": f"proxy:mysql:{cf['domains']}",
        "virtual_mailbox_maps": f"proxy:mysql:{cf['mailboxes']}",
        "virtual_mailbox_base": os.fspath(virtual_mailbox_base),
        "virtual_uid_maps": "static:5000",
        "virtual_gid_maps": "static:5000",
        "proxy_read_maps": (
            "$local_recipient_maps $mydestination $virtual_alias_maps $virtual_alias_domains "
            "$virtual_mailbox_maps $virtual_mailbox_domains $relay_recipient_maps $relay_domains "
            "$canonical_maps $sender_canonical_maps $recipient_canonical_maps $relocated_maps "
            "$transport_maps $mynetworks $virtual_mailbox_limit_maps"
        ),
    }
