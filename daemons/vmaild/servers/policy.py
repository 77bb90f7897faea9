"""The Postfix check_policy_service listener (PROTOCOLS.md section 3).

Postfix keeps one persistent connection per smtpd process and sends one request at a time
(3.3), so ``SequentialProtocol`` answers strictly in order. The one rule this module adds:
never write anything but exactly one ``action=...\\n\\n`` per request. On bad input or an
internal error the connection is closed without a reply ("In case of trouble the policy
server must not send a reply. Instead it must log a warning and disconnect."); Postfix then
retries once and applies its default_action.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..codec.policy import DEFAULT_MAX_REQUEST, PolicyDecoder, PolicyError, reply_action
from ..logsafe import shown
from .base import ListenerContext, SequentialProtocol
from .interfaces import PolicyDecider

log = logging.getLogger("vmaild.policy")


@dataclass(frozen=True, slots=True)
class _Broken:
    """Stands in the queue after the last good request of a broken stream: the requests
    before it are answered, in order, and then the connection is closed."""

    reason: str


class PolicyProtocol(SequentialProtocol):
    listener = "policy"

    def __init__(
        self,
        ctx: ListenerContext,
        service: Callable[[], PolicyDecider],
        max_request: int = DEFAULT_MAX_REQUEST,
    ):
        super().__init__(ctx)
        self.service = service  # called per request: SIGHUP swaps the service
        self.decoder = PolicyDecoder(max_request=max_request)
        self.broken = False

    def decode(self, data: bytes) -> list[Any]:
        if self.broken:
            return []  # already condemned: read nothing more
        try:
            return list(self.decoder.feed(data))
        except PolicyError as e:
            self.broken = True
            return [*e.decoded, _Broken(str(e))]

    async def answer(self, request: Any) -> bytes | None:
        if isinstance(request, _Broken):
            self.metrics.child(self.metrics.protocol_errors, self.listener).inc()
            self.problem("closing connection without reply: %s", shown(request.reason))
            return None
        action = await self.service().decide(request)
        if action is None:
            return None
        try:
            return reply_action(action)
        except ValueError as e:  # never send an action Postfix would misread (P-P2)
            log.error("policy: refusing to send action '%s': %s", shown(action), shown(str(e)))
            return None
