"""The calls concern on the wire: its Socket.IO events, its connect and disconnect hooks, and its REST
routes (ICE servers, call history, recording download)."""

from __future__ import annotations

import functools
import time
from typing import Any

from aiohttp import web

from server.care.patients import PatientRef
from server.transport.events import EventContext
from server.transport.http import cursor_page, page_params, send_grid_file
from server.transport.mount import Mount
from signaling.call_state import Action
from signaling.calls import Calls
from signaling.documents import CallSession, call_json
from signaling.models import CallRef, ConsentIn, InviteIn, MediaOfferIn, SignalIn
from signaling.turn import ice_servers


def mount(m: Mount, calls: Calls) -> None:
    service, relayed = calls.service, calls.relayed
    calls.ringer.attach(m.realtime)  # its sockets, to ring on each with an ack request
    for name, model, handler in (
        ("call:invite", InviteIn, service.invite), ("call:accept", CallRef, service.accept),
        ("call:reject", CallRef, functools.partial(service.end, action=Action.REJECT, side="callee")),
        ("call:cancel", CallRef, functools.partial(service.end, action=Action.CANCEL, side="caller")),
        ("call:hangup", CallRef, functools.partial(service.end, action=Action.HANGUP, side=None)),
        ("call:signal", SignalIn, service.signal), ("call:resume", CallRef, service.resume),
        ("call:join", CallRef, relayed.join), ("call:leave", CallRef, relayed.leave),
        ("call:media-offer", MediaOfferIn, relayed.media_offer), ("call:consent", ConsentIn, calls.recordings.consent),
    ):
        m.events.event(name, model)(handler)

    @m.events.event("calls:ongoing", PatientRef)
    async def ongoing(ctx: EventContext, body: PatientRef) -> list[dict[str, Any]]:
        return await service.ongoing(ctx, body.patient_id)

    async def on_disconnect(sid: str) -> None:
        principal = m.realtime.principals.get(sid)  # still there: disconnect hooks run first
        user_id = principal.id if principal is not None else None
        await relayed.disconnected(sid, user_id)
        await service.disconnected(sid, user_id)

    m.realtime.connect_hooks.append(service.connected)
    m.realtime.disconnect_hooks.append(on_disconnect)

    async def get_ice_servers(request: web.Request) -> web.Response:
        principal = await m.rest.principal(request)
        return web.json_response(ice_servers(calls.settings, principal.id, time.time()),
                                 headers={"Cache-Control": "no-store"})

    async def get_calls(request: web.Request) -> web.Response:
        principal = await m.rest.principal(request)
        before, limit = page_params(request)
        page = await cursor_page(CallSession, CallSession.participants == principal.user_id, before, limit,
                                 lambda c: call_json(c, principal.id))
        return web.json_response(page)

    async def get_recording(request: web.Request) -> web.StreamResponse:
        """A finished recording, to the people who were in the call (the same 404 for anyone else)."""
        principal = await m.rest.principal(request)
        call, grid_out = await calls.recordings.download(principal, request.match_info["call_id"])
        kind = "audio" if call.media == "audio" else "video"
        return await send_grid_file(request, grid_out, {
            "Content-Type": f"{kind}/x-matroska", "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="call-{call.id}.mka"'})

    m.routes.add_get("/api/calls/ice-servers", get_ice_servers)
    m.routes.add_get("/api/calls", get_calls)
    m.routes.add_get("/api/calls/{call_id}/recording", get_recording)
