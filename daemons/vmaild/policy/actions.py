"""Policy actions as configured in ``[policy]``: validated once, at start-up.

Postfix reads an action's first word as the verb (PROTOCOLS.md 3.2). A few spellings are
silent permits (an empty action, an all-digit one such as a bare ``550``) and an unknown
verb is a ``451 4.3.5 Server configuration error``; both are configuration mistakes that
must stop the daemon from starting, not surprise anyone at the first RCPT.
"""

from __future__ import annotations

import re

from ..codec.policy import reply_action

# Reply codes need text after them (check_table_result in smtpd_check.c): "4NN text".
_CODE = re.compile(r"^[45]\d\d\s+\S")
# Verbs that take optional text or none (access(5), SMTPD_POLICY_README). OK and RELAY are
# left out on purpose: vmaild never permits, so wherever the snippet puts it, an answer of
# ours cannot turn Postfix into an open relay (PROTOCOLS.md P-P3).
_VERBS = frozenset(
    {
        "DUNNO",
        "REJECT",
        "DEFER",
        "DEFER_IF_REJECT",
        "DEFER_IF_PERMIT",
        "HOLD",
        "DISCARD",
        "INFO",
        "WARN",
        "HANGUP",
        "FILTER",
        "REDIRECT",
        "BCC",
        "PREPEND",
    }
)
# A database error must never become a reject (DESIGN.md): what a fail action may say.
_FAIL_VERBS = frozenset({"DUNNO", "DEFER", "DEFER_IF_PERMIT", "DEFER_IF_REJECT", "INFO", "WARN"})

CLOSE = "close"
"""The fail action "no reply, close the connection": Postfix retries once and then applies
its own ``default_action`` (3.3)."""


def verb(action: str) -> str:
    """The metric label for an action: its verb (``452``, ``DUNNO``...), never its text,
    so the label set stays bounded by the configuration."""
    head = action.split(None, 1)[0] if action.strip() else ""
    return head.upper() if head else "NONE"


def check_action(action: str, *, fail: bool = False) -> str:
    """Return ``action`` if Postfix will read it as meant; raise ValueError otherwise.

    ``fail`` restricts it to what a check may answer when it cannot decide: pass
    (``DUNNO``), a temporary refusal (``DEFER_IF_PERMIT``, ``DEFER``, ``4NN``), or
    ``close``. A permanent reject there would bounce mail because a database is down.
    """
    if fail and action.lower() == CLOSE:
        return CLOSE
    reply_action(action)  # empty, all-digit, leading space, CR/LF/NUL (3.2, P-P2)
    v = verb(action)
    if _CODE.match(action):
        if fail and not v.startswith("4"):
            raise ValueError(f"{action!r}: a fail action must not reject permanently")
        return action
    if v.isdigit():
        raise ValueError(f"{action!r}: a reply code needs text after it, e.g. '450 4.7.1 text'")
    if v not in _VERBS:
        raise ValueError(f"{action!r}: unknown verb {v!r} (Postfix answers 451 4.3.5)")
    if fail and v not in _FAIL_VERBS:
        raise ValueError(
            f"{action!r}: a fail action must be DUNNO, a DEFER form, a 4NN code or 'close'"
        )
    return action


_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_FIELD = re.compile(r"\{(\w+)\}")


def fill(template: str, **values: str) -> str:
    """Put request data into an action's text: ``{login}`` -> the login.

    One pass, not ``str.format``: request data never reaches a format string and is never
    expanded again, and control characters are dropped so a value cannot break the reply.
    """

    def sub(m: re.Match[str]) -> str:
        value = values.get(m.group(1))
        return m.group(0) if value is None else _UNSAFE.sub("", value)

    return _FIELD.sub(sub, template)
