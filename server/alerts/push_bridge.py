"""``DevicePush`` over the in-memory ``PushDispatcher``, until the durable outbox (issue 15) takes its place: the
notifications go to the registrations of the devices asked for; there is no VoIP provider here, so a call's ring
and its cancellation are only logged. (Transitional: server/app.py wires the outbox instead once it is merged.)"""

from __future__ import annotations

import logging
from typing import Any

from beanie import PydanticObjectId
from beanie.operators import In

from server.alerts.documents import Notification, PushToken
from server.alerts.push import Job, PushDispatcher, message_of

log = logging.getLogger(__name__)


class DispatcherPush:
    def __init__(self, dispatcher: PushDispatcher) -> None:
        self.dispatcher = dispatcher

    async def push_notes(self, notes: list[Notification], devices: dict[Any, list[str]] | None = None) -> None:
        if not self.dispatcher.providers or not notes:
            return
        tokens = await PushToken.find(In(PushToken.user_id, list({n.user_id for n in notes}))).to_list()
        for token in tokens:
            wanted = devices.get(token.user_id, []) if devices is not None else [token.device_id]
            if token.provider not in self.dispatcher.providers or token.device_id not in wanted:
                continue
            for note in (n for n in notes if n.user_id == token.user_id):
                self.dispatcher._enqueue(Job(token.id, token.provider, token.target, message_of(note)))

    async def ring(self, user_id: PydanticObjectId, call: dict[str, Any], devices: list[str] | None = None) -> None:
        log.debug("no VoIP provider: call %s not rung to %s's devices %s", call.get("id"), user_id, devices)

    async def cancel_ring(self, user_id: PydanticObjectId, call_id: str, reason: str) -> None:
        log.debug("no VoIP provider: ring of call %s to %s not cancelled (%s)", call_id, user_id, reason)
