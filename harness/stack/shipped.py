"""The files vmaild ships for Postfix, Courier and systemd, read the way those programs read
them, so the harness can run the real stack from them (harness/stack/mailstack.py) instead of from
settings of its own.

* ``postfix/main.cf.*``: main.cf syntax (postconf(5)): ``name = value`` logical lines, a
  line starting with whitespace continues the previous one, ``#`` lines are comments.
* ``postfix/master.cf.vmaild``: master.cf entries, continuation lines likewise.
* ``courier/*.vmaild``: shell assignments, evaluated by /bin/sh after the packaged file
  exactly as /usr/sbin/imapd does (``set -a; . /etc/courier/imapd; ...``).
* ``scripts/vmaild.conf.example``: vmaild's INI file.

:func:`relocate` rewrites the production addresses and paths in them (127.0.0.1:10021,
/etc/vmaild/tls/mail.pem, ...) to a sandbox's.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from harness.common.procs import run

ROOT = Path(__file__).resolve().parents[2]
POSTFIX_DIR = ROOT / "postfix"
COURIER_DIR = ROOT / "courier"
SYSTEMD_DIR = ROOT / "systemd"
SCRIPTS_DIR = ROOT / "scripts"

MAIN_CF = POSTFIX_DIR / "main.cf.vmaild"
MAIN_CF_POLICY = POSTFIX_DIR / "main.cf.policy"
MASTER_CF = POSTFIX_DIR / "master.cf.vmaild"
SASL_CONF = POSTFIX_DIR / "sasl" / "smtpd.conf"
MAILDROP_WRAPPER = POSTFIX_DIR / "vmaild-maildrop"
VMAILD_CONF_EXAMPLE = SCRIPTS_DIR / "vmaild.conf.example"
INSTALL_SCRIPT = SCRIPTS_DIR / "install.sh"

#: Where install.sh puts the maildrop wrapper (master.cf.vmaild names it).
INSTALLED_WRAPPER = "/usr/local/lib/vmaild/vmaild-maildrop"
#: Where install.sh puts the certificate (main.cf.vmaild and courier/*-ssl.vmaild name it).
INSTALLED_TLS_DIR = "/etc/vmaild/tls"


def _logical_lines(text: str) -> list[str]:
    """Join continuation lines (leading whitespace) and drop comments and blank lines."""
    lines: list[str] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace() and lines:
            lines[-1] += " " + raw.strip()
        else:
            lines.append(raw.rstrip())
    return lines


def main_cf_settings(path: str | os.PathLike[str] = MAIN_CF) -> dict[str, str]:
    """A main.cf snippet as {name: value}, in file order."""
    settings: dict[str, str] = {}
    for line in _logical_lines(Path(path).read_text()):
        name, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not a 'name = value' line: {line!r}")
        settings[name.strip()] = value.strip()
    return settings


def master_cf_entries(path: str | os.PathLike[str] = MASTER_CF) -> list[str]:
    """A master.cf snippet as one logical line per service."""
    return _logical_lines(Path(path).read_text())


def master_service_key(entry: str) -> tuple[str, str]:
    """(service name, type) of a master.cf entry, e.g. ("maildrop", "unix")."""
    fields = entry.split()
    return fields[0], fields[1]


def courier_settings(name: str, packaged: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The values courier/NAME.vmaild (e.g. "imapd-ssl") gives its variables, evaluated by
    /bin/sh after sourcing the packaged /etc/courier/NAME first, as Courier's start scripts
    do (so ``"$IMAP_CAPABILITY AUTH=PLAIN"`` expands to the shipped capability)."""
    shipped = COURIER_DIR / f"{name}.vmaild"
    names = [line.split("=", 1)[0] for line in _logical_lines(shipped.read_text())]
    packaged = Path(packaged) if packaged else Path("/etc/courier") / name
    before = f". {shlex.quote(str(packaged))}; " if packaged.exists() else ""
    script = f"set -a; {before}. {shlex.quote(str(shipped))}; " + "; ".join(
        f'printf "%s\\0" "${{{n}}}"' for n in names
    )
    out = run(["/bin/sh", "-c", script], env={"PATH": "/usr/bin:/bin"}).stdout
    values = out.split("\0")[:-1]
    return dict(zip(names, values, strict=True))


def vmaild_example() -> configparser.ConfigParser:
    """scripts/vmaild.conf.example parsed with vmaild's INI rules."""
    cp = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=(";", "#"),
        strict=True,
        empty_lines_in_values=False,
    )
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(VMAILD_CONF_EXAMPLE.read_text(), source=str(VMAILD_CONF_EXAMPLE))
    return cp


def ini_text(cp: configparser.ConfigParser) -> str:
    """Write a parsed vmaild.conf back (multi-line queries stay continuation lines)."""
    parts = []
    for section in cp.sections():
        parts.append(f"[{section}]")
        for key, value in cp.items(section):
            parts.append(f"{key} = " + value.replace("\n", "\n    "))
        parts.append("")
    return "\n".join(parts)


def relocate(value: str, replacements: Mapping[str, str]) -> str:
    """Replace whole production tokens (addresses such as ``127.0.0.1:10021``, paths) in
    ``value``; an address is never matched inside a longer one (10021 vs 100210)."""
    if not replacements:
        return value
    pattern = re.compile(
        "|".join(re.escape(k) + r"(?![0-9])" for k in sorted(replacements, key=len, reverse=True))
    )
    return pattern.sub(lambda m: replacements[m.group(0)], value)
