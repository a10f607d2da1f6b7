"""The one way a call changes, and where its signals go.

Every move goes through ``signaling.call_state`` and is written with a compare-and-swap on the
document's ``rev``, so two processes (or a timer and a user) racing to move the same call cannot both
succeed: a ring timeout fires once, one device wins the answer. Each change is announced to every
process, which drops its cached route of the call; the patient's care team hears the call start, drop
and end; the ``on_ended`` hooks run once, in the process whose write ended it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal

from beanie import PydanticObjectId
from pymongo import ReturnDocument

from server.core.documents import aware, utcnow
from server.core.errors import ApiError, not_found
from server.core.identity import Principal, as_object_id
from server.core.ports import Broadcaster
from server.infra.pubsub import ControlBus
from signaling.call_state import Action, CallState, InvalidTransition, end_reason, next_state
from signaling.documents import CallSession
from signaling.route_cache import RouteCache

log = logging.getLogger(__name__)
MAX_TRANSITIONS = 64  # renegotiations beyond this are applied but no longer logged
CAS_RETRIES = 8
ROUTE_FIELDS = {"state": 1, "caller_sid": 1, "callee_sid": 1, "offer_from": 1, "media": 1, "rev": 1}


class Refused(Exception):
    """A move that does not apply any more (a timer or a drop that lost the race): nothing to do."""


Change = Callable[[CallSession, datetime], dict[str, Any]]  # (doc, now) -> the fields to set; raises to refuse
Ended = Callable[[CallSession], Awaitable[None]]


async def to_socket(out: Broadcaster, sid: str | None, event: str, data: Any) -> None:
    """To one socket of the call, if it has one (a side that dropped has none)."""
    if sid is not None:
        await out.to_room(sid, event, data)


class CallStore:
    def __init__(self, bus: ControlBus, out: Broadcaster) -> None:
        self.bus = bus
        self.out = out
        self.routes = RouteCache()
        self.on_ended: list[Ended] = []
        bus.on("call_changed", self._route_changed)

    async def update(self, call_id: Any, change: Change) -> tuple[CallSession, CallSession]:
        """Apply ``change(doc, now)`` with a compare-and-swap on ``rev``, re-reading and retrying if
        another writer got there first; the document before and after."""
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
                    await self.out.to_patient(new.patient_id, "patient:call", {
                        "patient_id": str(new.patient_id), "call_id": str(new.id), "state": str(new.state),
                        "media": new.media})
                if new.state == CallState.ENDED and doc.state != CallState.ENDED:
                    for hook in self.on_ended:
                        try:
                            await hook(new)
                        except Exception:  # the call has ended all the same; the sweeps tidy what is left
                            log.exception("after ending call %s", new.id)
                return doc, new
        raise ApiError("conflict", "The call changed while we applied that; try again", 409)

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

    async def get(self, call_id: str) -> CallSession:
        doc = await CallSession.get(as_object_id(call_id, "call_id"))
        if doc is None:
            raise not_found("call")
        return doc

    async def participant(self, call_id: str, principal: Principal,
                          side: Literal["caller", "callee"] | None = None) -> CallSession:
        """The call, if the principal is in it (on ``side``); the same refusal whether it exists or not."""
        doc = await CallSession.get(as_object_id(call_id, "call_id"))
        mine = doc.side_of(principal.id) if doc is not None else None
        if doc is None or mine is None or (side is not None and mine != side):
            raise not_found("call")
        return doc

    # --- routes -------------------------------------------------------------------------------------

    async def route(self, call_id: PydanticObjectId) -> dict[str, Any] | None:
        """The fields that route a call's signals: from this process's cache, else one store read."""
        route = self.routes.get(str(call_id))
        if route is None:
            route = await CallSession.get_pymongo_collection().find_one({"_id": call_id}, ROUTE_FIELDS)
            if route is not None:
                self.routes.put(str(call_id), route)
        return route

    async def _announce_change(self, call: CallSession) -> None:
        """Every process drops its cached route of the call (here at once; elsewhere over the bus)."""
        self.routes.forget(str(call.id), call.rev)
        try:
            await self.bus.publish("call_changed", call_id=str(call.id), rev=call.rev)
        except Exception as exc:  # Redis down: the other processes' routes expire on their own
            log.warning("could not announce the change of call %s: %s", call.id, exc)

    async def _route_changed(self, msg: dict[str, Any]) -> None:
        self.routes.forget(msg["call_id"], msg["rev"])
