"""The calls concern on the wire: its Socket.IO events, its connect and disconnect hooks, and its REST
routes (ICE servers, call history, recording download)."""

from __future__ import annotations

import functools
import time
from typing import Any

from aiohttp import web

from server.care.patients import PatientRef
from server.core.wire import Page
from server.transport.events import EventContext
from server.transport.http import PageQuery, cursor_page, page_params, send_grid_file
from server.transport.mount import Mount
from signaling.call_state import Action
from signaling.calls import Calls
from signaling.documents import CallSession, call_json
from signaling.models import CallRef, ConsentIn, InviteIn, MediaOfferIn, SignalIn
from signaling.turn import ice_servers
from signaling.wire import (
    Answer,
    CallEnded,
    CallIdOnly,
    CallOut,
    CallRelay,
    IceServers,
    InviteReply,
    Joined,
    Ongoing,
    PatientCall,
    PeerDropped,
    PeerResumed,
    PeerSignal,
    Relayed,
)

_PUSHED = (
    ("call:incoming", CallOut, "To every connected device of the callee (and the caller's own other devices) when "
                               "a call rings, with an ack request: acknowledge it (no data) so that the server "
                               "knows this device rings; one that has not within call_push_after_s is rung by "
                               "VoIP push."),
    ("call:accepted", CallOut, "To the caller's socket when the callee accepts."),
    ("call:answered-elsewhere", CallIdOnly, "To the callee's other devices when one of them accepted."),
    ("call:ended", CallEnded, "To everyone in the call when it ends (not for busy: the invite's answer said so)."),
    ("call:peer-signal", PeerSignal, "An offer, answer or ICE candidate from the other side."),
    ("call:peer-dropped", PeerDropped, "The other side's connection dropped; the call waits grace_s for them."),
    ("call:peer-resumed", PeerResumed, "The other side is back."),
    ("call:relay", CallRelay, "Connect your media to the server (call:media-offer): someone joined or recording "
                              "began."),
    ("patient:call", PatientCall, "To the patient's room: a call of the patient starts, drops or ends."),
)


def _ending(end: Any, action: Action, side: str | None, doc: str) -> Any:
    handler = functools.partial(end, action=action, side=side)
    handler.__doc__ = doc
    return handler


def mount(m: Mount, calls: Calls) -> None:
    service, relayed = calls.service, calls.relayed
    calls.ringer.attach(m.realtime)  # its sockets, to ring on each with an ack request
    for name, model, handler, reply in (
        ("call:invite", InviteIn, service.invite, InviteReply), ("call:accept", CallRef, service.accept, CallOut),
        ("call:reject", CallRef, _ending(service.end, Action.REJECT, "callee", "Reject a ringing call (the callee)."),
         CallOut),
        ("call:cancel", CallRef, _ending(service.end, Action.CANCEL, "caller", "Cancel a ringing call (the caller)."),
         CallOut),
        ("call:hangup", CallRef, _ending(service.end, Action.HANGUP, None, "Hang up a connected call (either side)."),
         CallOut),
        ("call:signal", SignalIn, service.signal, Relayed), ("call:resume", CallRef, service.resume, CallOut),
        ("call:join", CallRef, relayed.join, Joined), ("call:leave", CallRef, relayed.leave, CallOut),
        ("call:media-offer", MediaOfferIn, relayed.media_offer, Answer),
        ("call:consent", ConsentIn, calls.recordings.consent, CallOut),
    ):
        m.events.event(name, model, reply=reply)(handler)
    for name, payload, summary in _PUSHED:
        m.events.push(name, payload, summary)

    @m.events.event("calls:ongoing", PatientRef, reply=list[Ongoing])
    async def ongoing(ctx: EventContext, body: PatientRef) -> list[dict[str, Any]]:
        """(the patient's care team; audited as `calls.ongoing`) The patient's calls in progress (ringing, connected
        or reconnecting), each with `joined` (clinicians in it through the relay). A clinician's dashboard offers
        `call:join` on a connected one. Errors: `forbidden`."""
        return await service.ongoing(ctx, body.patient_id)

    async def on_disconnect(sid: str) -> None:
        principal = m.realtime.principals.get(sid)  # still there: disconnect hooks run first
        user_id = principal.id if principal is not None else None
        await relayed.disconnected(sid, user_id)
        await service.disconnected(sid, user_id)

    m.realtime.connect_hooks.append(service.connected)
    m.realtime.disconnect_hooks.append(on_disconnect)

    async def get_ice_servers(request: web.Request) -> web.Response:
        """ICE servers for the caller's WebRTC peer connection, with time-limited TURN credentials

        STUN URLs (`HEALTHMATE_STUN_URLS`) and TURN URLs (`HEALTHMATE_TURN_URLS`) with credentials in coturn's
        REST-API scheme (`use-auth-secret`, shared secret `HEALTHMATE_TURN_SECRET`): the username is `<expiry unix
        time>:<user id>`, the credential base64(HMAC-SHA1(secret, username)); valid for `HEALTHMATE_TURN_TTL_S`
        (default 6 h). Pass `ice_servers` as `RTCPeerConnection({iceServers})` and fetch again before `expires_at`."""
        principal = await m.rest.principal(request)
        return web.json_response(ice_servers(calls.settings, principal.id, time.time()),
                                 headers={"Cache-Control": "no-store"})

    async def get_calls(request: web.Request) -> web.Response:
        """The caller's calls (placed and received), newest first, with outcome, duration and transitions"""
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

    m.route("GET", "/api/calls/ice-servers", get_ice_servers, IceServers)
    m.route("GET", "/api/calls", get_calls, Page[CallOut], query=PageQuery)
    m.route("GET", "/api/calls/{call_id}/recording", get_recording, media="audio/x-matroska", status=(200, 206))
