"""Start-up validation of ``[policy]``: every action and query is checked once, by key.

Called from ``PolicyConfig.__post_init__`` so that ``vmaild check``, start-up and SIGHUP
refuse a broken section with the key named, instead of the first mail finding out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import ConfigError
from . import ratelimit, recipient, sender
from .actions import check_action, fill
from .queries import compile_named

if TYPE_CHECKING:
    from ..config import PolicyConfig


class PolicySettingError(ConfigError, ValueError):
    """A bad ``[policy]`` value; ``key`` names it, ``problem`` says what is wrong.

    A ConfigError, so that start-up and SIGHUP report it in one line like any other
    configuration mistake. Raised from inside the dataclass, it cannot know the file's
    path; config._build may re-raise it with the path (it is a ValueError for that).
    """

    def __init__(self, key: str, problem: str):
        Exception.__init__(self, f"[policy] {key}: {problem}")
        self.key = key
        self.problem = problem


ACTIONS = ("disabled_action", "quota_action", "sender_action", "ratelimit_action")
FAIL_ACTIONS = ("recipient_fail_action", "sender_fail_action", "ratelimit_fail_action")
QUERIES = {
    "recipient_query": recipient.PARAMS,
    "sender_query": sender.PARAMS,
    "ratelimit_query": frozenset({"login", "since"}),
    "ratelimit_update": frozenset({"login", "bucket", "messages", "recipients"}),
    "ratelimit_prune": frozenset({"before"}),
}


def validate(pc: PolicyConfig) -> None:
    for key in ACTIONS:
        _try(key, lambda k=key: check_action(fill(getattr(pc, k), login="x", sender="x")))
    for key in FAIL_ACTIONS:
        _try(key, lambda k=key: check_action(getattr(pc, k), fail=True))
    for key, params in QUERIES.items():
        _try(key, lambda k=key, p=params: compile_named(getattr(pc, k), p))
    if pc.ratelimit_count_state.strip().upper() not in ratelimit.COUNT_STATES:
        raise PolicySettingError("ratelimit_count_state",
                                 f"must be one of {', '.join(ratelimit.COUNT_STATES)}")
    if pc.recipient_delimiter is not None and any(c in pc.recipient_delimiter for c in "@ \t"):
        raise PolicySettingError("recipient_delimiter", "must not contain @ or spaces")


def _try(key: str, fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except ValueError as e:
        raise PolicySettingError(key, str(e)) from None
