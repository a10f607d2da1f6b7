"""Calls through the server's media relay: a clinician of the patient joins a connected call (or the
two consent to recording), and the server then terminates everyone's media. The media of a call is
served by one process (the call's ``media_host``); offers reaching another are forwarded to it by
``media.hosting.MediaHost``. The call's end closes its room in whichever process serves it."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from media.hosting import MediaHost
from server.care.access import require_patient
from server.core.errors import ApiError, forbidden, not_found
from server.core.ports import Broadcaster
from server.infra.pubsub import ControlBus
from server.transport.events import EventContext
from signaling.call_state import Action, CallState
from signaling.documents import CallSession, call_json
from signaling.models import CallRef, MediaOfferIn
from signaling.store import CallStore, Refused, to_socket

MAX_MEMBERS = 3  # the two participants and one joiner (a clinician), through the server's media relay
SLOTS = MAX_MEMBERS - 1  # the others each member hears


class RelayedCalls:
    def __init__(self, store: CallStore, host: MediaHost, bus: ControlBus, out: Broadcaster) -> None:
        self.store = store
        self.host = host
        self.bus = bus
        self.out = out
        self.joined_sids: dict[str, str] = {}  # local joiner socket id -> call id
        store.on_ended.append(self._ended)
        bus.on("call_ended", self._close_room)

    async def to_relay(self, call: CallSession, relay: dict[str, Any]) -> None:
        """Tell the two participants to connect their media to the server (``call:relay``)."""
        for sid in (call.caller_sid, call.callee_sid):
            await to_socket(self.out, sid, "call:relay", {"call_id": str(call.id), **relay, "slots": SLOTS})

    async def join(self, ctx: EventContext, body: CallRef) -> dict[str, Any]:
        """A clinician linked to the call's patient joins a connected call: everyone's media goes
        through the server from then on."""
        doc = await self.store.get(body.call_id)
        me = ctx.principal.id
        await require_patient(ctx.principal, doc.patient_id, "call.join", ctx.client, call_id=str(doc.id))
        if ctx.principal.role != "clinician" or doc.side_of(me) is not None:
            raise forbidden("Only a clinician of the patient, not already in the call, can join it")

        def change(d: CallSession, now: datetime) -> dict[str, Any]:
            if me not in d.joined and 2 + len(d.joined) >= MAX_MEMBERS:
                raise ApiError("call_full", f"A call has at most {MAX_MEMBERS} people", 409)
            participants = d.participants if ctx.principal.user_id in d.participants else [*d.participants,
                                                                                           ctx.principal.user_id]
            # The media stays where it is already served, else it is served here.
            return self.store.move(d, Action.JOIN, now, me, joined={**d.joined, me: ctx.sid},
                                   media_host=d.media_host or self.host.process_id, participants=participants)

        _, call = await self.store.update(doc.id, change)
        call_id = str(call.id)
        if call.media_host == self.host.process_id:
            self.host.room(call_id)
        self.joined_sids[ctx.sid] = call_id
        await self.to_relay(call, {"reason": "join", "joined": {"id": me, "name": ctx.principal.name}})
        return {**call_json(call, me), "relay": True, "slots": SLOTS}

    async def media_offer(self, ctx: EventContext, body: MediaOfferIn) -> dict[str, Any]:
        """A member of a relayed call connects its media to the server: offer in, answer back."""
        doc = await self.store.get(body.call_id)
        if doc.state not in (CallState.ACTIVE, CallState.RECONNECTING) or \
                ctx.sid not in (doc.caller_sid, doc.callee_sid, doc.joined.get(ctx.principal.id)):
            raise not_found("call")
        if doc.media_host is None:
            raise ApiError("not_relayed", "This call's media goes directly between its two participants", 409)
        return {"type": "answer", "sdp": await self.host.connect(doc.media_host, str(doc.id), ctx.principal.id,
                                                                 body.sdp)}

    async def leave(self, ctx: EventContext, body: CallRef) -> dict[str, Any]:
        """(the joiner) Leave a relayed call; the two participants go on."""
        doc = await self.store.get(body.call_id)
        if ctx.principal.id not in doc.joined:
            raise not_found("call")
        try:
            call = await self.remove(str(doc.id), ctx.principal.id, None)
        except Refused:
            raise not_found("call") from None
        return call_json(call, ctx.principal.id)

    async def remove(self, call_id: str, user_id: str, sid: str | None) -> CallSession:
        """The joiner leaves (from socket ``sid`` if given: not if they have joined again from another)."""
        def change(d: CallSession, now: datetime) -> dict[str, Any]:
            if user_id not in d.joined or (sid is not None and d.joined[user_id] != sid):
                raise Refused
            return self.store.move(d, Action.LEAVE, now, user_id,
                                   joined={u: s for u, s in d.joined.items() if u != user_id})

        _, call = await self.store.update(call_id, change)
        await self.host.leave(call_id, user_id)
        return call

    async def disconnected(self, sid: str, user_id: str | None) -> None:
        call_id = self.joined_sids.pop(sid, None)
        if call_id is not None and user_id is not None:
            with contextlib.suppress(Refused, ApiError):
                await self.remove(call_id, user_id, sid)

    async def _ended(self, call: CallSession) -> None:
        if call.media_host is not None:
            await self.bus.publish("call_ended", call_id=str(call.id))  # its host ends the media

    async def _close_room(self, msg: dict[str, Any]) -> None:
        self.host.close(msg["call_id"])
        for sid, call_id in list(self.joined_sids.items()):
            if call_id == msg["call_id"]:
                del self.joined_sids[sid]
