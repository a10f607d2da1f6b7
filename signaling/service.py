"""Calls between linked users, from invite to end: ringing every device of the callee, the first
answer winning, refusals, drops and resumes within a grace period, and the SDP and ICE signals relayed
between the two sockets in the call.

A user is in at most one live call: their ``CallLine`` document (id = user id) names it, and inserting
it is the atomic claim. Pushes go to ``user:<id>`` rooms and to the two sockets in the call (socket
ids are rooms too), in whichever process holds them.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any, Literal

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError

from server.care import audit
from server.care.access import require_patient
from server.care.documents import Link, User
from server.core.config import Settings
from server.core.documents import aware, utcnow
from server.core.errors import ApiError, forbidden, not_found
from server.core.i18n import Text
from server.core.identity import Principal, as_object_id
from server.core.ports import Broadcaster, Notifier, Online
from server.infra.pubsub import ControlBus
from server.transport.events import EventContext
from server.transport.realtime import user_room
from signaling.call_state import LIVE_STATES, Action, CallState, LiveCall, after_resume, resolve_invite, resolve_offer
from signaling.documents import CallLine, CallSession, call_json
from signaling.models import CallRef, InviteIn, SignalIn
from signaling.relayed import RelayedCalls
from signaling.ringing import Ringer
from signaling.store import ROUTE_FIELDS, CallStore, Refused, to_socket
from signaling.timers import SWEEP_BATCH, CallTimers

log = logging.getLogger(__name__)
Side = Literal["caller", "callee"]


class CallService:
    def __init__(self, settings: Settings, store: CallStore, timers: CallTimers, relayed: RelayedCalls,
                 bus: ControlBus, out: Broadcaster, online: Online, notifier: Notifier, ringer: Ringer) -> None:
        self.settings = settings
        self.store = store
        self.timers = timers
        self.relayed = relayed
        self.ringer = ringer  # call:incoming to each socket, VoIP rings to devices without one
        self.out = out
        self.online = online
        self.notifier = notifier
        self.bound: dict[str, str] = {}  # local socket id -> the call it is in
        store.on_ended.append(self._ended)
        timers.every_stale.append(self.drop_orphans)
        bus.on("link_changed", self._on_link_changed)

    # --- invite -------------------------------------------------------------------------------------

    async def invite(self, ctx: EventContext, body: InviteIn) -> dict[str, Any]:
        """(patient, caregiver, clinician) Call a linked user (a patient and their caregiver or clinician). Every
        connected device of the callee gets `call:incoming`; each registered device of the callee with no socket,
        or whose socket does not acknowledge `call:incoming` within `HEALTHMATE_CALL_PUSH_AFTER_S` (3 s), is rung
        by a VoIP push (APNs PushKit, FCM high-priority data), cancelled by another push once the call is
        answered or ends; a callee with no device connected also gets an `incoming_call` notification (stored,
        not pushed: the ring is its push). A device connecting while it rings gets `call:incoming` (ring time,
        default 30 s; then the call ends `missed` and the callee gets a `missed_call` notification). Errors:
        `forbidden` (not linked),
        `busy` (the callee is in another call; recorded in the history), `already_in_call`. If the callee is
        ringing the caller at this moment (glare), the invite answers that call: the reply is that call, active,
        with `glare: true`."""
        principal = ctx.principal
        callee_id = as_object_id(body.callee, "callee")
        patient_id = await _linked(principal, callee_id)
        await audit.record("call.invite", principal=principal, patient_id=patient_id, client=ctx.client,
                           outcome="ok" if patient_id else "denied", callee=str(callee_id))
        callee = await User.get(callee_id) if patient_id else None
        if callee is None or patient_id is None:
            raise forbidden("You can call only someone linked to you")
        now = utcnow()
        call = CallSession(
            caller_id=principal.user_id, callee_id=callee_id, caller_name=principal.name, callee_name=callee.name,
            participants=[principal.user_id, callee_id], patient_id=patient_id, media=body.media,
            caller_sid=ctx.sid, ring_deadline=now + timedelta(seconds=self.settings.call_ring_timeout_s),
            transitions=[{"state": "ringing", "action": "invite", "at": now, "by": principal.id}],
        )
        await call.insert()
        blocking = await _claim_lines(call)
        if blocking is None:
            self.bound[ctx.sid] = str(call.id)
            self.timers.schedule(call, "ring", self.settings.call_ring_timeout_s, Action.TIMEOUT)
            await self.ringer.start(call)
            if not await self.online.user_online(callee_id):  # stored for the list; the VoIP ring is its push
                await self._notify([callee_id], "incoming_call", Text("call.incoming.title", caller=principal.name),
                                   call, urgency="high", push=False)
            return call_json(call, principal.id)
        holder, decision = blocking
        if decision == "busy":
            _, ended = await self.store.update(call.id, lambda d, now: self.store.move(d, Action.BUSY, now, None))
            raise ApiError("busy", "They are in another call", 409, {"call_id": str(ended.id)})
        await call.delete()
        if decision == "glare":  # they are ringing us right now: answer their call instead of placing ours
            return {**await self.accept(ctx, CallRef(call_id=str(holder.id))), "glare": True}
        raise ApiError("already_in_call", "You are already in a call; end it first", 409, {"call_id": str(holder.id)})

    async def connected(self, sid: str, principal: Principal) -> None:
        """A callee connecting while it rings (woken by the push) hears it ring on this socket too."""
        if principal.is_device:
            return
        line = await CallLine.get(principal.id)
        call = await CallSession.get(line.call_id) if line is not None else None
        if call is not None and call.state == CallState.RINGING and call.callee_id == principal.user_id:
            await self.ringer.to_socket(sid, call)

    # --- answering, ending --------------------------------------------------------------------------

    async def accept(self, ctx: EventContext, body: CallRef) -> dict[str, Any]:
        """(callee) Answer on this device. The first device wins; the caller gets `call:accepted`, the callee's other
        devices `call:answered-elsewhere`; a later answer gets `invalid_transition`. The caller then sends the SDP
        offer with `call:signal`."""
        doc = await self.store.participant(body.call_id, ctx.principal, "callee")
        _, call = await self.store.update(doc.id, lambda d, now: self.store.move(
            d, Action.ACCEPT, now, ctx.principal.id, callee_sid=ctx.sid, answered_at=now, ring_deadline=None))
        self.bound[ctx.sid] = str(call.id)
        self.timers.cancel(call, "ring")
        self.ringer.stop_ringing(call, "answered_elsewhere")
        data = call_json(call)
        await to_socket(self.out, call.caller_sid, "call:accepted", data)
        await self.out.to_room(user_room(call.callee_id), "call:answered-elsewhere", {"call_id": data["id"]},
                               skip_sid=ctx.sid)
        return call_json(call, ctx.principal.id)

    async def end(self, ctx: EventContext, body: CallRef, action: Action, side: Side | None) -> dict[str, Any]:
        """Reject (the callee), cancel (the caller) or hang up (either)."""
        doc = await self.store.participant(body.call_id, ctx.principal, side)
        _, call = await self.store.update(doc.id, lambda d, now: self.store.move(d, action, now, ctx.principal.id))
        return call_json(call, ctx.principal.id)

    async def _ended(self, call: CallSession) -> None:
        await CallLine.get_pymongo_collection().delete_many({"call_id": call.id})
        if call.end_reason == "busy":
            return  # it never rang: the caller was told in the invite's answer
        if call.answered_at is None:  # ended while it rang: the devices rung stop ringing
            self.ringer.stop_ringing(call, call.end_reason or "cancelled")
        body = {"call_id": str(call.id), "reason": call.end_reason, "duration_s": call.duration_s}
        for user in (call.caller_id, call.callee_id, *call.joined):
            await self.out.to_user(user, "call:ended", body)
        if call.end_reason == "missed":
            await self._notify([call.callee_id], "missed_call", Text("call.missed.title", caller=call.caller_name),
                               call)

    async def _notify(self, users: list[PydanticObjectId], kind: str, title: Text, call: CallSession,
                      urgency: str = "normal", push: bool = True) -> None:
        try:
            data = {"call_id": str(call.id), "caller_id": str(call.caller_id), "caller_name": call.caller_name,
                    "media": call.media}
            await self.notifier.notify(users, kind, title, patient_id=call.patient_id, urgency=urgency,
                                       data=data, push=push)
        except Exception:
            log.exception("notifying %s for call %s failed", kind, call.id)

    # --- dropping out and coming back ---------------------------------------------------------------

    async def disconnected(self, sid: str, user_id: str | None) -> None:
        call_id = self.bound.pop(sid, None)
        if call_id is not None and user_id is not None:
            with contextlib.suppress(Refused, ApiError):
                await self.drop(call_id, user_id, sid)

    async def drop(self, call_id: str, user_id: str, sid: str) -> None:
        grace = self.settings.call_grace_s

        def change(d: CallSession, now: datetime) -> dict[str, Any]:
            side = d.side_of(user_id)
            if side is None or sid != (d.caller_sid if side == "caller" else d.callee_sid):
                raise Refused  # that socket is no longer the one in the call (it resumed elsewhere)
            if d.state == CallState.RINGING:
                return self.store.move(d, Action.DROP, now, user_id)
            until = now + timedelta(seconds=grace)
            dropped = {**d.dropped, user_id: until}
            return self.store.move(d, Action.DROP, now, user_id, **{f"{side}_sid": None}, dropped=dropped,
                                   offer_from=None, grace_deadline=min(aware(t) for t in dropped.values()))

        _, call = await self.store.update(call_id, change)
        if call.state == CallState.RECONNECTING:
            self.timers.schedule(call, "grace", grace, Action.GRACE_EXPIRED)
            await to_socket(self.out, call.peer_sid(call.side_of(user_id) or ""), "call:peer-dropped",
                            {"call_id": str(call.id), "user_id": user_id, "grace_s": grace})

    async def resume(self, ctx: EventContext, body: CallRef) -> dict[str, Any]:
        """A participant's new socket takes their place in the call (after a drop, or before the server
        noticed the old socket was gone)."""
        doc = await self.store.participant(body.call_id, ctx.principal)
        me = ctx.principal.id

        def change(d: CallSession, now: datetime) -> dict[str, Any]:
            if d.state not in (CallState.ACTIVE, CallState.RECONNECTING):
                self.store.move(d, Action.RESUME, now, me)  # raises: a ringing or ended call cannot be resumed
            dropped = {u: t for u, t in d.dropped.items() if u != me}
            return self.store.move(d, Action.RESUME, now, me, after_resume(CallState(d.state), len(dropped)),
                                   **{f"{d.side_of(me)}_sid": ctx.sid}, dropped=dropped, offer_from=None,
                                   grace_deadline=min((aware(t) for t in dropped.values()), default=None))

        _, call = await self.store.update(doc.id, change)
        self.bound[ctx.sid] = str(call.id)
        if call.state == CallState.ACTIVE:
            self.timers.cancel(call, "grace")
        await to_socket(self.out, call.peer_sid(call.side_of(me) or ""), "call:peer-resumed",
                        {"call_id": str(call.id), "user_id": me})
        return call_json(call, me)

    async def drop_orphans(self) -> None:
        """A process that died took its sockets without running their disconnect: treat a call's socket
        that is neither here nor in a live process as dropped (so the grace period, then the end, follow
        and nobody stays busy forever)."""
        live = CallSession.find({"state": {"$in": [str(s) for s in LIVE_STATES]}}).limit(SWEEP_BATCH)
        async for call in live:
            for user, sid in ((call.caller_id, call.caller_sid), (call.callee_id, call.callee_sid)):
                if sid is not None and not await self.online.socket_alive(user, sid):
                    with contextlib.suppress(Refused, ApiError):
                        await self.drop(str(call.id), str(user), sid)

    # --- signaling ----------------------------------------------------------------------------------

    async def signal(self, ctx: EventContext, body: SignalIn) -> dict[str, Any]:
        """Relay an offer, answer or candidate to the other socket in the call, and to nobody else.
        Candidates (most signals) are routed from the cached route (no store access)."""
        call_id = as_object_id(body.call_id, "call_id")
        route = await self.store.route(call_id)
        side = None
        if route is not None and route["state"] in (CallState.ACTIVE, CallState.RECONNECTING):
            side = "caller" if ctx.sid == route["caller_sid"] else "callee" if ctx.sid == route["callee_sid"] else None
        if route is None or side is None:
            raise not_found("call")
        me = ctx.principal.id
        if body.type == "offer":
            def offer(d: CallSession, now: datetime) -> dict[str, Any]:
                if not resolve_offer(d.offer_from, me, str(d.caller_id)):
                    raise ApiError("glare", "The other side's offer crossed yours and wins: roll back and answer it",
                                   409)
                if body.media is not None and body.media != d.media:
                    return self.store.move(d, Action.RENEGOTIATE, now, me, offer_from=me, media=body.media)
                return {"offer_from": me}
            _, doc = await self.store.update(call_id, offer)
            route = doc.model_dump(include=set(ROUTE_FIELDS))
        elif body.type == "answer" and route["offer_from"] not in (None, me):
            _, doc = await self.store.update(call_id, lambda d, now: {"offer_from": None} if d.offer_from != me else {})
            route = doc.model_dump(include=set(ROUTE_FIELDS))
        peer = route["callee_sid"] if side == "caller" else route["caller_sid"]
        if peer is None:
            raise ApiError("peer_away", "The other side is reconnecting; send this again once it is back", 409)
        out = body.model_dump(exclude_none=True)
        out.update(call_id=str(call_id), from_user=me, media=route["media"])
        if body.type == "candidate" and body.candidate is None:
            out["candidate"] = None
        await self.out.to_room(peer, "call:peer-signal", out)
        return {"relayed": body.type}

    async def _on_link_changed(self, msg: dict[str, Any]) -> None:
        """A care-team link ended: the two stop talking (every process hears this; one moves each call)."""
        if msg.get("active"):
            return
        patient, member = PydanticObjectId(msg["patient_id"]), PydanticObjectId(msg["member_id"])
        live = await CallSession.find({"state": {"$in": [str(s) for s in LIVE_STATES]},
                                       "participants": {"$all": [patient, member]}}).to_list()
        for call in live:
            with contextlib.suppress(ApiError, Refused):
                if msg["member_id"] in call.joined:
                    await self.relayed.remove(str(call.id), msg["member_id"], None)
                else:
                    await self.store.update(call.id, lambda d, now: self.store.move(d, Action.REVOKE, now, None))

    async def ongoing(self, ctx: EventContext, patient_id: str) -> list[dict[str, Any]]:
        """The patient's calls in progress (ringing, connected or reconnecting), for their care team: a
        clinician's dashboard offers to join a connected one."""
        pid = await require_patient(ctx.principal, patient_id, "calls.ongoing", ctx.client)
        live = await CallSession.find({"patient_id": pid, "state": {"$in": [str(s) for s in LIVE_STATES]}}).to_list()
        return [{**call_json(c), "joined": sorted(c.joined)} for c in live]


async def _linked(principal: Principal, other: PydanticObjectId) -> PydanticObjectId | None:
    """The patient of the pair if the two are joined by an active care-team link."""
    if principal.role == "patient":
        key = Link.key(principal.user_id, other)
    else:
        key = Link.key(other, principal.user_id)
    link = await Link.get(key)
    return link.patient_id if link is not None and link.revoked_at is None else None


async def _claim_lines(call: CallSession) -> tuple[CallSession, str] | None:
    """Claim both users' lines (in id order, so crossing invites collide on the same line first).
    None when claimed; otherwise the live call in the way and what that means for this invite."""
    claimed: list[str] = []
    lines = CallLine.get_pymongo_collection()
    for user in sorted([str(call.caller_id), str(call.callee_id)]):
        for _ in range(3):
            try:
                await CallLine(id=user, call_id=call.id).insert()  # type: ignore[arg-type]
                claimed.append(user)
                break
            except DuplicateKeyError:
                line = await CallLine.get(user)
                holder = await CallSession.get(line.call_id) if line is not None else None
                if holder is not None and holder.state in LIVE_STATES:
                    await lines.delete_many({"_id": {"$in": claimed}, "call_id": call.id})
                    seen = LiveCall(str(holder.caller_id), str(holder.callee_id), CallState(holder.state))
                    return holder, resolve_invite(str(call.caller_id), str(call.callee_id), seen)
                if line is not None:  # left behind by a call that has ended: clear it and try again
                    await lines.delete_one({"_id": user, "call_id": line.call_id})
        else:
            raise ApiError("conflict", "Could not place the call; try again", 409)
    return None
