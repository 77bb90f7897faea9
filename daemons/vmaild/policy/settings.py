"""What ``[policy]`` settings may hold, for ``sections.PolicyConfig.check`` and the checks.

Kept here, apart from the checks that use them, so that checking the section at start-up
needs none of the checks' modules: those import the database layer, and the configuration
must not (it is a leaf, read by vmailctl and vmaild-authpipe too).
"""

from __future__ import annotations

#: The named parameters each configurable query may use, by setting name.
QUERY_PARAMS: dict[str, frozenset[str]] = {
    "recipient_query": frozenset({"address", "local", "domain"}),
    "sender_query": frozenset({"login", "sender", "local", "domain", "at_domain"}),
    "ratelimit_query": frozenset({"login", "since"}),
    "ratelimit_update": frozenset({"login", "bucket", "messages", "recipients"}),
    "ratelimit_prune": frozenset({"before"}),
    "ratelimit_lock": frozenset({"login"}),
}

#: ``ratelimit_count_state``: the protocol state at which a message is counted.
COUNT_STATES = ("END-OF-MESSAGE", "RCPT")
