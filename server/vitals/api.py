"""The vitals concern's transport: Socket.IO events and REST routes of blood pressure readings, vital-event
thresholds and history, forecasts and triage, each handler bound once to its service."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from beanie import PydanticObjectId

from server.care.access import require_patient
from server.care.documents import PatientRef
from server.core.errors import ApiError
from server.core.identity import as_object_id
from server.infra.ratelimit import HeavyReads
from server.transport.events import DEVICE_ROLES, USER_ROLES, EventContext
from server.transport.http import cursor_page, page_params
from server.transport.mount import Mount
from server.vitals.blood_pressure import WINDOWS, BloodPressure, fhir_export, live, statistics
from server.vitals.documents import (
    BPDelete,
    BPIn,
    BPList,
    BPReading,
    BPStatsIn,
    BPUpdate,
    ForecastIn,
    ThresholdsIn,
    TriageIn,
    VitalEvent,
)
from server.vitals.events import Vitals
from server.vitals.forecast import BPForecasts
from server.vitals.triage import Triage


async def _history(pid: PydanticObjectId, before: PydanticObjectId | None, limit: int) -> dict[str, Any]:
    return await cursor_page(BPReading, live(pid), before, limit, BPReading.public)


def mount(m: Mount, bp: BloodPressure, vitals: Vitals, forecasts: BPForecasts, triage: Triage,
          heavy: HeavyReads) -> None:
    _events(m, bp, vitals, forecasts, triage)
    rest = m.rest

    async def patient(request: web.Request, action: str) -> PydanticObjectId:
        """The path's patient, if the caller may ``action`` on their data (audited)."""
        principal = await rest.principal(request)
        return await require_patient(principal, request.match_info["patient_id"], action, rest.client(request))

    async def bp_history(request: web.Request) -> web.Response:
        pid = await patient(request, "bp.read")
        before, limit = page_params(request)
        return web.json_response(await _history(pid, before, limit))

    async def bp_stats(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        window = request.query.get("window", "week")
        if window not in WINDOWS:
            raise ApiError("invalid_query", "window must be day, week or month", 422, {"field": "window"})
        pid = await require_patient(principal, request.match_info["patient_id"], "bp.stats", rest.client(request))
        return web.json_response(await statistics(pid, window, None))

    async def bp_fhir(request: web.Request) -> web.StreamResponse:
        """Streamed as it is read (up to 50,000 readings); a heavy read: one at a time per user, a few a minute."""
        pid = await patient(request, "bp.export")
        async with heavy.run((await rest.principal(request)).user_id):
            response = web.StreamResponse(headers={"Content-Type": "application/fhir+json"})
            await response.prepare(request)
            async for piece in fhir_export(pid, f"{request.scheme}://{request.host}/fhir"):
                await response.write(piece)
            await response.write_eof()
            return response

    async def vital_events(request: web.Request) -> web.Response:
        pid = await patient(request, "vital_events.read")
        before, limit = page_params(request)
        return web.json_response(await cursor_page(VitalEvent, VitalEvent.patient_id == pid, before, limit,
                                                   VitalEvent.public))

    r = m.routes
    r.add_get("/api/patients/{patient_id}/bp", bp_history)
    r.add_get("/api/patients/{patient_id}/bp/stats", bp_stats)
    r.add_get("/api/patients/{patient_id}/bp/fhir", bp_fhir)
    r.add_get("/api/patients/{patient_id}/vital-events", vital_events)


def _events(m: Mount, bp: BloodPressure, vitals: Vitals, forecasts: BPForecasts, triage: Triage) -> None:
    event = m.events.event

    @event("bp:add", BPIn, roles=USER_ROLES | DEVICE_ROLES)
    async def _add(ctx: EventContext, body: BPIn) -> dict[str, Any]:
        return (await bp.add(ctx.principal, body, ctx.client)).public()

    @event("bp:update", BPUpdate)
    async def _update(ctx: EventContext, body: BPUpdate) -> dict[str, Any]:
        return await bp.update(ctx.principal, body, ctx.client)

    @event("bp:delete", BPDelete)
    async def _delete(ctx: EventContext, body: BPDelete) -> dict[str, Any]:
        return await bp.delete(ctx.principal, body, ctx.client)

    @event("bp:list", BPList)
    async def _list(ctx: EventContext, body: BPList) -> dict[str, Any]:
        pid = await require_patient(ctx.principal, body.patient_id, "bp.read", ctx.client)
        return await _history(pid, as_object_id(body.before, "before") if body.before else None, body.limit)

    @event("bp:stats", BPStatsIn)
    async def _stats(ctx: EventContext, body: BPStatsIn) -> dict[str, Any]:
        pid = await require_patient(ctx.principal, body.patient_id, "bp.stats", ctx.client)
        return await statistics(pid, body.window, body.end)

    @event("vitals:get-thresholds", PatientRef)
    async def _get_thresholds(ctx: EventContext, body: PatientRef) -> dict[str, Any]:
        return await vitals.get_thresholds(ctx.principal, body.patient_id, ctx.client)

    @event("vitals:set-thresholds", ThresholdsIn)
    async def _set_thresholds(ctx: EventContext, body: ThresholdsIn) -> dict[str, Any]:
        return await vitals.set_thresholds(ctx.principal, body, ctx.client)

    @event("ml:bp-forecast", ForecastIn)
    async def _forecast(ctx: EventContext, body: ForecastIn) -> dict[str, Any]:
        return await forecasts.request(ctx.principal, body.patient_id, ctx.client)

    @event("ml:triage", TriageIn)
    async def _triage(ctx: EventContext, body: TriageIn) -> dict[str, Any]:
        return await triage.assess(ctx.principal, body, ctx.client)
