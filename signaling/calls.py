"""Calls between linked users: the persisted call state machine, the Socket.IO signaling events, ICE
servers and call history over REST.

Every call is a ``CallSession`` document; every move goes through ``signaling.call_state`` and is
written with a compare-and-swap on the document's ``rev``, so two processes (or a timer and a
user) racing to move the same call cannot both succeed: a ring timeout fires once, one device wins
the answer. A user is in at most one live call: their ``CallLine`` document (id = user id) names it,
and inserting it is the atomic claim. Ring timeouts and reconnect grace periods are timers in the
process that started them, and a sweep in every process catches those a dead process left behind.
Pushes go to ``user:<id>`` rooms and to the two sockets in the call (socket ids are rooms too),
through the Redis manager when there are several processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from beanie import PydanticObjectId
from gridfs import AsyncGridFSBucket, NoFile
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from server.care import audit
from server.care.access import require_patient
from server.care.documents import Link, User
from server.care.patients import PatientRef
from server.core.documents import aware, utcnow
from server.core.errors import ApiError, forbidden, not_found
from server.core.identity import Principal, as_object_id
from server.transport.http import cursor_page, page_params, require_principal, send_grid_file, services
from server.transport.realtime import EventContext, user_room
from signaling.call_state import (
    LIVE_STATES,
    Action,
    CallState,
    InvalidTransition,
    LiveCall,
    after_resume,
    end_reason,
    next_state,
    resolve_invite,
    resolve_offer,
)
from signaling.documents import CallLine, CallSession, call_json
from signaling.models import CallRef, ConsentIn, InviteIn, MediaOfferIn, SignalIn
from signaling.route_cache import RouteCache
from signaling.turn import ice_servers

if TYPE_CHECKING:  # aiortc loads with the first relayed call, not with every server
    from media.relay import MediaRoom
    from server.services import Services

log = logging.getLogger(__name__)
MAX_TRANSITIONS = 64  # renegotiations beyond this are applied but no longer logged
CAS_RETRIES = 8
MAX_MEMBERS = 3  # the two participants and one joiner (a clinician), through the server's media relay
SWEEP_BATCH = 100
MEDIA_CHANNEL = "healthmate:calls:media:"  # + host process id: media offers forwarded to the host
FORWARD_TIMEOUT_S = 10.0
ROUTE_FIELDS = {"state": 1, "caller_sid": 1, "callee_sid": 1, "offer_from": 1, "media": 1, "rev": 1}
RECORDINGS = "recordings"  # GridFS bucket of finished recordings
RECORDING_UPLOAD_ATTEMPTS = 8
STALE_EVERY = 10  # every this many sweeps, look for calls held by sockets of processes that died


class Refused(Exception):
    """A move that does not apply any more (a timer or a drop that lost the race): nothing to do."""


Change = Callable[[CallSession, datetime], dict[str, Any]]


class CallService:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.rt = svc.realtime
        self.pubsub = svc.pubsub
        self.settings = svc.settings
        self.bound: dict[str, str] = {}  # local socket id -> the call it is in
        self.timers: dict[str, asyncio.Task[None]] = {}
        self.rooms: dict[str, MediaRoom] = {}  # relayed calls whose media this process terminates
        self.joined_sids: dict[str, str] = {}  # local joiner socket id -> call id
        self.teardowns: set[asyncio.Task[None]] = set()
        self.routes = RouteCache()
        svc.bus.on("call_changed", self._route_changed)
        svc.bus.on("call_ended", self._close_room)
        svc.bus.on("link_changed", self._on_link_changed)
        svc.bus.on("call_record", self._start_recording)
        svc.bus.on("call_record_stop", self._stop_recording)
        self._sweeper: asyncio.Task[None] | None = None
        self._retainer: asyncio.Task[None] | None = None
        self.rt.connect_hooks.append(self._on_connect)
        self.rt.disconnect_hooks.append(self._on_disconnect)
        self._register()

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="call-sweeper")
        self._retainer = asyncio.create_task(self._retention(), name="call-retention")
        if self.pubsub.shared:
            await self.pubsub.subscribe(MEDIA_CHANNEL + self.rt.process_id, self._on_media_request)

    async def stop(self) -> None:
        for call_id in list(self.rooms):
            await self._close_room({"call_id": call_id})
        if self.teardowns:
            await asyncio.wait(self.teardowns, timeout=10)
        for task in [self._sweeper, self._retainer, *self.timers.values()]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.timers.clear()

    # --- the one way a call changes -----------------------------------------------------------------

    async def _update(self, call_id: Any, change: Change) -> tuple[CallSession, CallSession]:
        """Apply ``change(doc, now)`` (the fields to set; it raises to refuse) with a compare-and-swap
        on ``rev``, re-reading and retrying if another writer got there first."""
        coll = CallSession.get_pymongo_collection()
        for _ in range(CAS_RETRIES):
            doc = await CallSession.get(call_id)
            if doc is None:
                raise not_found("call")
            now = utcnow()
            fields = change(doc, now)
            update: dict[str, Any] = {"$set": fields, "$inc": {"rev": 1}}
            entry = fields.pop("_transition", None)
            if entry is not None and len(doc.transitions) < MAX_TRANSITIONS:
                update["$push"] = {"transitions": entry}
            raw = await coll.find_one_and_update({"_id": doc.id, "rev": doc.rev}, update,
                                                 return_document=ReturnDocument.AFTER)
            if raw is not None:
                new = CallSession.model_validate(raw)
                await self._announce_change(new)
                if new.state != doc.state:  # the patient's care team sees a call start, drop and end
                    await self.rt.to_patient(new.patient_id, "patient:call", {
                        "patient_id": str(new.patient_id), "call_id": str(new.id), "state": str(new.state),
                        "media": new.media})
                if new.state == CallState.ENDED and doc.state != CallState.ENDED:
                    try:
                        await self._ended(new)
                    except Exception:  # the call has ended all the same; the sweeps tidy what is left
                        log.exception("after ending call %s", new.id)
                return doc, new
        raise ApiError("conflict", "The call changed while we applied that; try again", 409)

    async def _announce_change(self, call: CallSession) -> None:
        """Every process drops its cached route of the call (here at once; elsewhere over the bus)."""
        self.routes.forget(str(call.id), call.rev)
        try:
            await self.svc.bus.publish("call_changed", call_id=str(call.id), rev=call.rev)
        except Exception as exc:  # Redis down: the other processes' routes expire on their own
            log.warning("could not announce the change of call %s: %s", call.id, exc)

    async def _route_changed(self, msg: dict[str, Any]) -> None:
        self.routes.forget(msg["call_id"], msg["rev"])

    async def _route(self, call_id: PydanticObjectId) -> dict[str, Any] | None:
        """The fields that route a call's signals: from this process's cache, else one store read."""
        route = self.routes.get(str(call_id))
        if route is None:
            route = await CallSession.get_pymongo_collection().find_one({"_id": call_id}, ROUTE_FIELDS)
            if route is not None:
                self.routes.put(str(call_id), route)
        return route

    @staticmethod
    def move(doc: CallSession, action: Action, now: datetime, by: str | None, target: CallState | None = None,
             **fields: Any) -> dict[str, Any]:
        """The fields for moving ``doc`` by ``action`` (validated by the state machine)."""
        state = CallState(doc.state)
        try:
            target = target or next_state(state, action)
        except InvalidTransition as exc:
            raise ApiError("invalid_transition", str(exc), 409, {"state": str(state), "action": str(action)}) from None
        entry = {"state": str(target), "action": str(action), "at": now, "by": by}
        if "media" in fields:
            entry["media"] = fields["media"]
        out = {"state": target, **fields, "_transition": entry}
        if target == CallState.ENDED:
            out.update(ended_at=now, end_reason=end_reason(state, action), ring_deadline=None, grace_deadline=None,
                       dropped={}, caller_sid=None, callee_sid=None, offer_from=None,
                       duration_s=round((now - aware(doc.answered_at)).total_seconds(), 3)
                       if doc.answered_at else 0.0)
        return out

    async def _ended(self, call: CallSession) -> None:
        await CallLine.get_pymongo_collection().delete_many({"call_id": call.id})
        for key in (f"{call.id}:ring", f"{call.id}:grace"):
            task = self.timers.pop(key, None)
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if call.end_reason == "busy":
            return  # it never rang: the caller was told in the invite's answer
        body = {"call_id": str(call.id), "reason": call.end_reason, "duration_s": call.duration_s}
        await self.rt.to_user(call.caller_id, "call:ended", body)
        await self.rt.to_user(call.callee_id, "call:ended", body)
        for user in call.joined:
            await self.rt.to_user(user, "call:ended", body)
        if call.media_host is not None:
            await self.svc.bus.publish("call_ended", call_id=str(call.id))  # its host ends the media
        if call.end_reason == "missed":
            await self._notify([call.callee_id], "missed_call", f"Missed call from {call.caller_name}", call)

    async def _notify(self, users: list[PydanticObjectId], kind: str, title: str, call: CallSession,
                      urgency: str = "normal") -> None:
        try:
            data = {"call_id": str(call.id), "caller_id": str(call.caller_id), "caller_name": call.caller_name,
                    "media": call.media}
            await self.svc.notifications.notify(users, kind, title, patient_id=call.patient_id, urgency=urgency,
                                                data=data)
        except Exception:
            log.exception("notifying %s for call %s failed", kind, call.id)

    async def to_room(self, room: str | None, event: str, data: Any, skip_sid: str | None = None) -> None:
        if room is not None:
            await self.rt.to_room(room, event, data, skip_sid)

    # --- invite -------------------------------------------------------------------------------------

    async def invite(self, ctx: EventContext, body: InviteIn) -> dict[str, Any]:
        principal = ctx.principal
        callee_id = as_object_id(body.callee, "callee")
        patient_id = await self._linked(principal, callee_id)
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
        blocking = await self._claim_lines(call)
        if blocking is None:
            self.bound[ctx.sid] = str(call.id)
            self._schedule(call, "ring", self.settings.call_ring_timeout_s, Action.TIMEOUT)
            data = call_json(call)
            await self.rt.to_user(callee_id, "call:incoming", data)
            if not await self.rt.user_online(callee_id):
                await self._notify([callee_id], "incoming_call", f"{principal.name} is calling", call, urgency="high")
            return call_json(call, principal.id)
        holder, decision = blocking
        if decision == "busy":
            _, ended = await self._update(call.id, lambda d, now: self.move(d, Action.BUSY, now, None))
            raise ApiError("busy", "They are in another call", 409, {"call_id": str(ended.id)})
        await call.delete()
        if decision == "glare":  # they are ringing us right now: answer their call instead of placing ours
            return {**await self.accept(ctx, CallRef(call_id=str(holder.id))), "glare": True}
        raise ApiError("already_in_call", "You are already in a call; end it first", 409, {"call_id": str(holder.id)})

    @staticmethod
    async def _linked(principal: Principal, other: PydanticObjectId) -> PydanticObjectId | None:
        """The patient of the pair if the two are joined by an active care-team link."""
        if principal.role == "patient":
            key = Link.key(principal.user_id, other)
        else:
            key = Link.key(other, principal.user_id)
        link = await Link.get(key)
        return link.patient_id if link is not None and link.revoked_at is None else None

    async def _claim_lines(self, call: CallSession) -> tuple[CallSession, str] | None:
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

    # --- answering, ending --------------------------------------------------------------------------

    async def _participant(self, call_id: str, principal: Principal,
                           side: Literal["caller", "callee"] | None = None) -> CallSession:
        """The call, if the principal is in it (on ``side``); the same refusal whether it exists or not."""
        doc = await CallSession.get(as_object_id(call_id, "call_id"))
        mine = doc.side_of(principal.id) if doc is not None else None
        if doc is None or mine is None or (side is not None and mine != side):
            raise not_found("call")
        return doc

    async def accept(self, ctx: EventContext, body: CallRef) -> dict[str, Any]:
        doc = await self._participant(body.call_id, ctx.principal, "callee")
        _, call = await self._update(doc.id, lambda d, now: self.move(
            d, Action.ACCEPT, now, ctx.principal.id, callee_sid=ctx.sid, answered_at=now, ring_deadline=None))
        self.bound[ctx.sid] = str(call.id)
        self._cancel_timer(call, "ring")
        data = call_json(call)
        caller, callee = call.caller_sid, user_room(call.callee_id)
        await self.to_room(caller, "call:accepted", data)
        await self.to_room(callee, "call:answered-elsewhere", {"call_id": data["id"]}, skip_sid=ctx.sid)
        return call_json(call, ctx.principal.id)

    async def _end(self, ctx: EventContext, call_id: str, action: Action,
                   side: Literal["caller", "callee"] | None) -> dict[str, Any]:
        doc = await self._participant(call_id, ctx.principal, side)
        _, call = await self._update(doc.id, lambda d, now: self.move(d, action, now, ctx.principal.id))
        return call_json(call, ctx.principal.id)

    # --- dropping out and coming back ---------------------------------------------------------------

    async def _on_disconnect(self, sid: str) -> None:
        call_id = self.bound.pop(sid, None)
        principal = self.rt.principals.get(sid)
        joined = self.joined_sids.pop(sid, None)
        if joined is not None and principal is not None:
            with contextlib.suppress(Refused, ApiError):
                await self._leave(joined, principal.id, sid)
        if call_id is not None and principal is not None:
            with contextlib.suppress(Refused, ApiError):
                await self.drop(call_id, principal.id, sid)

    async def drop(self, call_id: str, user_id: str, sid: str) -> None:
        grace = self.settings.call_grace_s

        def change(d: CallSession, now: datetime) -> dict[str, Any]:
            side = d.side_of(user_id)
            if side is None or sid != (d.caller_sid if side == "caller" else d.callee_sid):
                raise Refused  # that socket is no longer the one in the call (it resumed elsewhere)
            if d.state == CallState.RINGING:
                return self.move(d, Action.DROP, now, user_id)
            until = now + timedelta(seconds=grace)
            dropped = {**d.dropped, user_id: until}
            return self.move(d, Action.DROP, now, user_id, **{f"{side}_sid": None}, dropped=dropped, offer_from=None,
                             grace_deadline=min(aware(t) for t in dropped.values()))

        _, call = await self._update(call_id, change)
        if call.state == CallState.RECONNECTING:
            self._schedule(call, "grace", grace, Action.GRACE_EXPIRED)
            peer = call.peer_sid(call.side_of(user_id) or "")
            await self.to_room(peer, "call:peer-dropped",
                               {"call_id": str(call.id), "user_id": user_id, "grace_s": grace})

    async def resume(self, ctx: EventContext, body: CallRef) -> dict[str, Any]:
        """A participant's new socket takes their place in the call (after a drop, or before the server
        noticed the old socket was gone)."""
        doc = await self._participant(body.call_id, ctx.principal)
        me = ctx.principal.id

        def change(d: CallSession, now: datetime) -> dict[str, Any]:
            if d.state not in (CallState.ACTIVE, CallState.RECONNECTING):
                self.move(d, Action.RESUME, now, me)  # raises: a ringing or ended call cannot be resumed
            dropped = {u: t for u, t in d.dropped.items() if u != me}
            return self.move(d, Action.RESUME, now, me, after_resume(CallState(d.state), len(dropped)),
                             **{f"{d.side_of(me)}_sid": ctx.sid}, dropped=dropped, offer_from=None,
                             grace_deadline=min((aware(t) for t in dropped.values()), default=None))

        _, call = await self._update(doc.id, change)
        self.bound[ctx.sid] = str(call.id)
        if call.state == CallState.ACTIVE:
            self._cancel_timer(call, "grace")
        peer = call.peer_sid(call.side_of(me) or "")
        await self.to_room(peer, "call:peer-resumed",
                           {"call_id": str(call.id), "user_id": me})
        return call_json(call, me)

    # --- signaling ----------------------------------------------------------------------------------

    async def signal(self, ctx: EventContext, body: SignalIn) -> dict[str, Any]:
        """Relay an offer, answer or candidate to the other socket in the call, and to nobody else.
        Candidates (most signals) are routed from the cached route (no store access)."""
        call_id = as_object_id(body.call_id, "call_id")
        route = await self._route(call_id)
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
                    return self.move(d, Action.RENEGOTIATE, now, me, offer_from=me, media=body.media)
                return {"offer_from": me}
            _, doc = await self._update(call_id, offer)
            route = doc.model_dump(include=set(ROUTE_FIELDS))
        elif body.type == "answer" and route["offer_from"] not in (None, me):
            _, doc = await self._update(call_id, lambda d, now: {"offer_from": None} if d.offer_from != me else {})
            route = doc.model_dump(include=set(ROUTE_FIELDS))
        peer = route["callee_sid"] if side == "caller" else route["caller_sid"]
        if peer is None:
            raise ApiError("peer_away", "The other side is reconnecting; send this again once it is back", 409)
        out = body.model_dump(exclude_none=True)
        out.update(call_id=str(call_id), from_user=me, media=route["media"])
        if body.type == "candidate" and body.candidate is None:
            out["candidate"] = None
        await self.to_room(peer, "call:peer-signal", out)
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
                    await self._leave(str(call.id), msg["member_id"], None)
                else:
                    await self._update(call.id, lambda d, now: self.move(d, Action.REVOKE, now, None))

    # --- a third party through the server's media relay --------------------------------------------

    async def join(self, ctx: EventContext, body: CallRef) -> dict[str, Any]:
        """A clinician linked to the call's patient joins a connected call. The server then terminates
        everyone's media: the two participants are told (``call:relay``) to connect to it too. The media
        is served by one process; offers reaching another are forwarded to it."""
        doc = await CallSession.get(as_object_id(body.call_id, "call_id"))
        if doc is None:
            raise not_found("call")
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
            return self.move(d, Action.JOIN, now, me, joined={**d.joined, me: ctx.sid},
                             media_host=d.media_host or self.rt.process_id, participants=participants)

        _, call = await self._update(doc.id, change)
        call_id = str(call.id)
        if call.media_host == self.rt.process_id:
            self._room(call_id)
        self.joined_sids[ctx.sid] = call_id
        relay = {"call_id": call_id, "reason": "join", "joined": {"id": me, "name": ctx.principal.name},
                 "slots": MAX_MEMBERS - 1}
        caller, callee = call.caller_sid, call.callee_sid
        await self.to_room(caller, "call:relay", relay)
        await self.to_room(callee, "call:relay", relay)
        return {**call_json(call, me), "relay": True, "slots": MAX_MEMBERS - 1}

    async def ongoing(self, ctx: EventContext, body: PatientRef) -> list[dict[str, Any]]:
        """The patient's calls in progress (ringing, connected or reconnecting), for their care team: a
        clinician's dashboard offers to join a connected one."""
        pid = await require_patient(ctx.principal, body.patient_id, "calls.ongoing", ctx.client)
        live = await CallSession.find({"patient_id": pid, "state": {"$in": [str(s) for s in LIVE_STATES]}}).to_list()
        return [{**call_json(c), "joined": sorted(c.joined)} for c in live]

    async def media_offer(self, ctx: EventContext, body: MediaOfferIn) -> dict[str, Any]:
        """A member of a relayed call connects its media to the server: offer in, answer back."""
        doc = await CallSession.get(as_object_id(body.call_id, "call_id"))
        me = ctx.principal.id
        if doc is None or doc.state not in (CallState.ACTIVE, CallState.RECONNECTING) or \
                ctx.sid not in (doc.caller_sid, doc.callee_sid, doc.joined.get(me)):
            raise not_found("call")
        if doc.media_host is None:
            raise ApiError("not_relayed", "This call's media goes directly between its two participants", 409)
        if doc.media_host != self.rt.process_id:
            return {"type": "answer", "sdp": await self._forward_offer(doc.media_host, str(doc.id), me, body.sdp)}
        return {"type": "answer", "sdp": await self._connect_media(str(doc.id), me, body.sdp)}

    async def _connect_media(self, call_id: str, member: str, sdp: str) -> str:
        room = self.rooms.get(call_id)
        if room is None:
            raise ApiError("not_relayed", "This call's media is no longer served", 409)
        from media.relay import RoomFull

        try:
            return await room.connect(member, sdp)
        except RoomFull as exc:
            raise ApiError("call_full", str(exc), 409) from None
        except Exception as exc:
            log.info("media offer for call %s refused: %s", call_id, exc)
            raise ApiError("invalid_sdp", "The SDP offer could not be used", 422) from None

    # The media of a relayed call lives in one process; an offer arriving at another is passed to it
    # over Redis (a request on the host's channel, the answer on a one-off reply channel).

    async def _forward_offer(self, host: str, call_id: str, member: str, sdp: str) -> str:
        if not self.pubsub.shared:
            raise ApiError("media_elsewhere", "This call's media is served by another server process", 409)
        try:
            reply = await self.pubsub.request(MEDIA_CHANNEL + host, {"call_id": call_id, "member": member, "sdp": sdp},
                                              FORWARD_TIMEOUT_S)
        except TimeoutError:
            raise ApiError("media_timeout", "The server process holding this call's media did not answer",
                           504) from None
        if reply is None:
            raise ApiError("media_elsewhere", "The server process holding this call's media is gone", 409)
        if "error" in reply:
            raise ApiError(reply["error"]["code"], reply["error"]["message"], reply.get("status", 409))
        return str(reply["sdp"])

    async def _on_media_request(self, _channel: str, message: bytes) -> None:
        self._background(self._answer_forwarded(json.loads(message)))

    async def _answer_forwarded(self, request: dict[str, Any]) -> None:
        try:
            reply: dict[str, Any] = {"sdp": await self._connect_media(request["call_id"], request["member"],
                                                                      request["sdp"])}
        except ApiError as err:
            reply = {**err.body(), "status": err.status}
        except Exception:
            log.exception("forwarded media offer failed")
            reply = {"error": {"code": "internal", "message": "Something went wrong on our side"}, "status": 500}
        await self.pubsub.reply(request, reply)

    async def _leave(self, call_id: str, user_id: str, sid: str | None) -> CallSession:
        def change(d: CallSession, now: datetime) -> dict[str, Any]:
            if user_id not in d.joined or (sid is not None and d.joined[user_id] != sid):
                raise Refused
            return self.move(d, Action.LEAVE, now, user_id,
                             joined={u: s for u, s in d.joined.items() if u != user_id})

        _, call = await self._update(call_id, change)
        room = self.rooms.get(call_id)
        if room is not None:
            await room.leave(user_id)
        return call

    async def leave(self, ctx: EventContext, body: CallRef) -> dict[str, Any]:
        doc = await CallSession.get(as_object_id(body.call_id, "call_id"))
        if doc is None or ctx.principal.id not in doc.joined:
            raise not_found("call")
        try:
            call = await self._leave(str(doc.id), ctx.principal.id, None)
        except Refused:
            raise not_found("call") from None
        return call_json(call, ctx.principal.id)

    def _room(self, call_id: str) -> MediaRoom:
        from media.relay import MediaRoom

        room = self.rooms.get(call_id)
        if room is None:
            room = self.rooms[call_id] = MediaRoom(MAX_MEMBERS)
        return room

    def recording_path(self, call_id: str) -> Path:
        """Where the recording is written while the call goes on (the process serving its media)."""
        return self.settings.data_dir / "recordings" / f"{call_id}.mka"

    @staticmethod
    def recordings() -> AsyncGridFSBucket:
        """Finished recordings: GridFS bucket ``recordings``, the file's id being the call's."""
        return AsyncGridFSBucket(CallSession.get_pymongo_collection().database, bucket_name=RECORDINGS)

    async def consent(self, ctx: EventContext, body: ConsentIn) -> dict[str, Any]:
        """A participant gives (or withdraws) consent to recording. With both consents the server takes
        the call's media (``call:relay`` to both) and records it; a withdrawal stops the recording."""
        doc = await self._participant(body.call_id, ctx.principal)
        me = ctx.principal.id

        def change(d: CallSession, now: datetime) -> dict[str, Any]:
            consent = {**d.consent, me: body.record}
            both = consent.get(str(d.caller_id)) is True and consent.get(str(d.callee_id)) is True
            fields: dict[str, Any] = {"consent": consent}
            if both and d.recording is None:
                fields.update(media_host=d.media_host or self.rt.process_id,
                              recording={"file": f"{d.id}.mka", "started_at": now, "stopped_at": None, "bytes": None})
            return self.move(d, Action.CONSENT, now, me, **fields)

        await audit.record("call.consent", principal=ctx.principal, patient_id=doc.patient_id, client=ctx.client,
                           call_id=str(doc.id), record=body.record)
        old, call = await self._update(doc.id, change)
        call_id = str(call.id)
        if call.recording is not None and old.recording is None:
            # The process serving the media records it (this one, or the one a joiner's media went to).
            await self.svc.bus.publish("call_record", call_id=call_id, host=call.media_host, media=call.media)
            if old.media_host is None:  # the two were talking directly: bring them to the server
                relay = {"call_id": call_id, "reason": "recording", "slots": MAX_MEMBERS - 1}
                caller, callee = call.caller_sid, call.callee_sid
                await self.to_room(caller, "call:relay", relay)
                await self.to_room(callee, "call:relay", relay)
        elif not body.record and call.recording is not None and call.recording.get("stopped_at") is None:
            await self.svc.bus.publish("call_record_stop", call_id=call_id, host=call.media_host)
        return call_json(call, me)

    async def _start_recording(self, msg: dict[str, Any]) -> None:
        if msg["host"] == self.rt.process_id:
            from media.recording import CallRecording

            tracks = 2 if msg["media"] == "audio" else 4  # each participant's audio (and video)
            self._room(msg["call_id"]).record(CallRecording(self.recording_path(msg["call_id"]), tracks))

    async def _stop_recording(self, msg: dict[str, Any]) -> None:
        room = self.rooms.get(msg["call_id"])
        if msg["host"] == self.rt.process_id and room is not None:  # stored in the background: may be long
            self._background(self._teardown(msg["call_id"], room.stop_recording()))

    async def _finish_recording(self, call_id: str, size: int | None) -> None:
        """Move the finished file into the store (any replica serves it, and it is backed up with the
        database), then mark the recording stopped. While the store is unreachable the upload is
        retried; the local file is removed only once it is stored."""
        if size is None:
            return
        oid, path = PydanticObjectId(call_id), self.recording_path(call_id)
        for attempt in range(RECORDING_UPLOAD_ATTEMPTS):
            try:
                with contextlib.suppress(NoFile):  # a half-written copy from an earlier attempt
                    await self.recordings().delete(oid)
                with path.open("rb") as f:
                    await self.recordings().upload_from_stream_with_id(oid, path.name, f,
                                                                       metadata={"call_id": oid})
                break
            except PyMongoError as exc:
                log.warning("storing the recording of call %s (attempt %d): %s", call_id, attempt + 1, exc)
                await asyncio.sleep(min(2 ** attempt, 30))
        else:
            log.error("the recording of call %s could not be stored; it is kept at %s", call_id, path)
            return
        await CallSession.get_pymongo_collection().update_one(  # also over a "lost" a stalled heartbeat caused
            {"_id": oid, "recording.bytes": None},
            {"$set": {"recording.stopped_at": utcnow(), "recording.bytes": size, "recording.lost": False},
             "$inc": {"rev": 1}})
        path.unlink(missing_ok=True)

    async def apply_retention(self, before: datetime) -> int:
        """Delete ended calls (and their recordings) that ended before ``before``."""
        removed = 0
        async for call in CallSession.find({"state": "ended", "ended_at": {"$lt": before}}):
            if call.recording is not None:
                with contextlib.suppress(NoFile):
                    await self.recordings().delete(call.id)
                self.recording_path(str(call.id)).unlink(missing_ok=True)
            await call.delete()
            removed += 1
        return removed

    async def _retention(self) -> None:
        while True:
            try:
                removed = await self.apply_retention(utcnow() - timedelta(days=self.settings.call_retention_days))
                if removed:
                    log.info("retention: removed %d calls", removed)
            except Exception as exc:
                log.warning("call retention pass failed: %s", exc)
            await asyncio.sleep(3600)

    async def _close_room(self, msg: dict[str, Any]) -> None:
        """The call ended: tear its media down in the background (closing peer connections takes a
        while, and nobody's hang-up should wait for it)."""
        room = self.rooms.pop(msg["call_id"], None)
        if room is not None:
            self._background(self._teardown(msg["call_id"], room.close()))
        for sid, call_id in list(self.joined_sids.items()):
            if call_id == msg["call_id"]:
                del self.joined_sids[sid]

    async def _teardown(self, call_id: str, closing: Awaitable[int | None]) -> None:
        """Close the room (or just its recording) and store what was recorded."""
        try:
            await self._finish_recording(call_id, await closing)
        except Exception:
            log.exception("tearing down the media of call %s", call_id)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Media work nobody's event or the control bus should wait for; awaited (briefly) at stop."""
        task = asyncio.create_task(work)
        self.teardowns.add(task)
        task.add_done_callback(self.teardowns.discard)

    # --- timers -------------------------------------------------------------------------------------

    def _schedule(self, call: CallSession, kind: str, delay: float, action: Action) -> None:
        key = f"{call.id}:{kind}"
        old = self.timers.pop(key, None)
        if old is not None:
            old.cancel()

        async def fire() -> None:
            await asyncio.sleep(delay)
            self.timers.pop(key, None)
            await self._expire(call.id, action)

        self.timers[key] = asyncio.create_task(fire(), name=f"call-{key}")

    def _cancel_timer(self, call: CallSession, kind: str) -> None:
        task = self.timers.pop(f"{call.id}:{kind}", None)
        if task is not None:
            task.cancel()

    async def _expire(self, call_id: Any, action: Action) -> None:
        """Ring timeout or end of a grace period, if still due: whichever process gets here first moves
        the call, the compare-and-swap refuses the others."""
        field, state = (("ring_deadline", CallState.RINGING) if action == Action.TIMEOUT
                        else ("grace_deadline", CallState.RECONNECTING))

        def change(d: CallSession, now: datetime) -> dict[str, Any]:
            due = getattr(d, field)
            if d.state != state or due is None or aware(due) > now:
                raise Refused
            return self.move(d, action, now, None)

        try:
            await self._update(call_id, change)
        except (Refused, ApiError):
            pass
        except Exception:
            log.exception("expiring call %s", call_id)

    async def _sweep(self) -> None:
        passes = 0
        while True:
            await asyncio.sleep(self.settings.call_sweep_s)
            passes += 1
            try:
                now = utcnow()
                coll = CallSession.get_pymongo_collection()
                for field, state, action in (("ring_deadline", CallState.RINGING, Action.TIMEOUT),
                                             ("grace_deadline", CallState.RECONNECTING, Action.GRACE_EXPIRED)):
                    cursor = coll.find({"state": str(state), field: {"$lte": now}}, {"_id": 1}).limit(SWEEP_BATCH)
                    for raw in await cursor.to_list():
                        await self._expire(raw["_id"], action)
                if passes % STALE_EVERY == 0:
                    await self._drop_orphans()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("call sweep failed: %s", exc)

    async def _drop_orphans(self) -> None:
        """A process that died took its sockets without running their disconnect: treat a call's socket
        that is neither here nor in a live process as dropped (so the grace period, then the end, follow
        and nobody stays busy forever)."""
        live = CallSession.find({"state": {"$in": [str(s) for s in LIVE_STATES]}}).limit(SWEEP_BATCH)
        async for call in live:
            for user, sid in ((call.caller_id, call.caller_sid), (call.callee_id, call.callee_sid)):
                if sid is not None and not await self._socket_alive(user, sid):
                    with contextlib.suppress(Refused, ApiError):
                        await self.drop(str(call.id), str(user), sid)
        await self._recordings_lost()

    async def _recordings_lost(self) -> None:
        """A recording whose process died before finishing it will never finish: say so (``lost``) rather
        than leave it "in progress" for ever. What that process had written stays on its disk."""
        unfinished = CallSession.find({"recording.stopped_at": None, "recording.started_at": {"$ne": None}})
        async for call in unfinished.limit(SWEEP_BATCH):
            if call.media_host is not None and not await self._process_alive(call.media_host):
                log.warning("the recording of call %s was lost with its process %s", call.id, call.media_host)
                await CallSession.get_pymongo_collection().update_one(
                    {"_id": call.id, "recording.stopped_at": None},
                    {"$set": {"recording.stopped_at": utcnow(), "recording.lost": True}, "$inc": {"rev": 1}})

    async def _process_alive(self, process_id: str) -> bool:
        return await self.rt.presence.alive(process_id)

    async def _socket_alive(self, user_id: Any, sid: str) -> bool:
        return await self.rt.socket_alive(user_id, sid)

    # --- a callee connecting while it rings ------------------------------------------------------------

    async def _on_connect(self, sid: str, principal: Principal) -> None:
        if principal.is_device:
            return
        line = await CallLine.get(principal.id)
        call = await CallSession.get(line.call_id) if line is not None else None
        if call is not None and call.state == CallState.RINGING and call.callee_id == principal.user_id:
            await self.to_room(sid, "call:incoming", call_json(call))  # woken by the push: ring here too

    # --- events -------------------------------------------------------------------------------------

    def _register(self) -> None:
        rt = self.rt
        for name, model, handler in (
            ("call:invite", InviteIn, self.invite), ("call:accept", CallRef, self.accept),
            ("call:signal", SignalIn, self.signal), ("call:resume", CallRef, self.resume),
            ("call:join", CallRef, self.join), ("call:leave", CallRef, self.leave),
            ("call:consent", ConsentIn, self.consent), ("call:media-offer", MediaOfferIn, self.media_offer),
            ("calls:ongoing", PatientRef, self.ongoing),
        ):
            rt.event(name, model)(handler)
        for name, action, side in (("call:reject", Action.REJECT, "callee"), ("call:cancel", Action.CANCEL, "caller"),
                                   ("call:hangup", Action.HANGUP, None)):
            rt.event(name, CallRef)(functools.partial(self._end_event, action=action, side=side))

    async def _end_event(self, ctx: EventContext, body: CallRef, *, action: Action, side: str | None) -> dict[str, Any]:
        return await self._end(ctx, body.call_id, action, side)


# --- REST ---------------------------------------------------------------------------------------------


async def get_ice_servers(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    return web.json_response(ice_servers(services(request).settings, principal.id, time.time()),
                             headers={"Cache-Control": "no-store"})


async def get_calls(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    before, limit = page_params(request)
    page = await cursor_page(CallSession, CallSession.participants == principal.user_id, before, limit,
                             lambda c: call_json(c, principal.id))
    return web.json_response(page)


async def get_recording(request: web.Request) -> web.StreamResponse:
    """A finished recording, to the people who were in the call (the same 404 for anyone else)."""
    principal = await require_principal(request)
    call = await CallSession.get(as_object_id(request.match_info["call_id"], "call_id"))
    if call is None or principal.user_id not in call.participants or call.recording is None:
        raise not_found("recording")
    if call.recording.get("stopped_at") is None:
        raise ApiError("recording_in_progress", "The recording is still going on", 409)
    if call.recording.get("lost"):
        raise ApiError("recording_lost", "The recording was lost: the server process making it stopped first", 410)
    try:
        grid_out = await CallService.recordings().open_download_stream(call.id)
    except NoFile:
        raise not_found("recording") from None
    await audit.record("call.recording_download", principal=principal, patient_id=call.patient_id,
                       call_id=str(call.id))
    kind = "audio" if call.media == "audio" else "video"
    return await send_grid_file(request, grid_out, {
        "Content-Type": f"{kind}/x-matroska", "Cache-Control": "no-store",
        "Content-Disposition": f'attachment; filename="call-{call.id}.mka"'})


def setup(app: web.Application, svc: Services) -> CallService:
    app.router.add_get("/api/calls/ice-servers", get_ice_servers)
    app.router.add_get("/api/calls", get_calls)
    app.router.add_get("/api/calls/{call_id}/recording", get_recording)
    return CallService(svc)
