"""The vitals concern's transport: Socket.IO events and REST routes of blood pressure readings, vital-event
thresholds and history, forecasts and triage, each handler bound once to its service."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from beanie import PydanticObjectId
from pydantic import BaseModel

from server.care.access import require_patient
from server.care.documents import PatientRef
from server.core.errors import ApiError
from server.core.identity import as_object_id
from server.core.wire import Page
from server.infra.ratelimit import HeavyReads
from server.transport.events import DEVICE_ROLES, USER_ROLES, EventContext
from server.transport.http import PageQuery, cursor_page, page_params
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
    Window,
)
from server.vitals.events import Vitals
from server.vitals.forecast import BPForecasts
from server.vitals.triage import Triage
from server.vitals.wire import (
    BPDeleted,
    BPReadingOut,
    BPStats,
    Forecast,
    ForecastPushed,
    PatientThresholds,
    ThresholdsChanged,
    TriageOut,
    VitalEventOut,
)


async def _history(pid: PydanticObjectId, before: PydanticObjectId | None, limit: int) -> dict[str, Any]:
    return await cursor_page(BPReading, live(pid), before, limit, BPReading.public)


class StatsQuery(BaseModel):
    window: Window = "week"


def mount(m: Mount, bp: BloodPressure, vitals: Vitals, forecasts: BPForecasts, triage: Triage,
          heavy: HeavyReads) -> None:
    m.events.push("bp:new", BPReadingOut, "To the patient's room when a reading is added.")
    m.events.push("bp:updated", BPReadingOut, "To the patient's room when a reading is corrected.")
    m.events.push("bp:deleted", BPDeleted, "To the patient's room when a reading is deleted.")
    m.events.push("bp:forecast", ForecastPushed, "To the patient's room after a new reading, when a forecast model is "
                  "active and there are enough readings.")
    m.events.push("vitals:event", VitalEventOut, "To the patient's room: a rhythm or signal event of a stream "
                  "starts or ends.")
    m.events.push("vitals:thresholds-changed", ThresholdsChanged, "To the patient's room when a clinician changes "
                  "the alert thresholds.")
    _events(m, bp, vitals, forecasts, triage)
    rest = m.rest

    async def patient(request: web.Request, action: str) -> PydanticObjectId:
        """The path's patient, if the caller may ``action`` on their data (audited)."""
        principal = await rest.principal(request)
        return await require_patient(principal, request.match_info["patient_id"], action, rest.client(request))

    async def bp_history(request: web.Request) -> web.Response:
        """A patient's blood pressure readings, newest first (deleted ones left out)"""
        pid = await patient(request, "bp.read")
        before, limit = page_params(request)
        return web.json_response(await _history(pid, before, limit))

    async def bp_stats(request: web.Request) -> web.Response:
        """Statistics over the last day, week or month: mean/min/max, time in range, morning/evening, trend per day"""
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
        """The patient's vital events from the live analysis, newest first

        Types: `tachycardia`, `bradycardia`, `irregular_rhythm` (judged on the intervals between normal beats),
        `frequent_ectopy` (ectopic beats a minute above the clinician's `frequent_ectopy_per_min`, default 6, for
        `frequent_ectopy_s`; not while the rhythm is irregular), `poor_signal`, `no_signal` (the sensor gave no
        pulse at all: flat, clipped, disconnected, off the skin), `stalled` (no frames for `stalled_s`, default 5
        s). Each is recorded once when it starts (`phase: started`) and once when it ends (`phase: ended`);
        `severity` is `warning` or `critical`. The same events are pushed live as `vitals:event` to the patient's
        room."""
        pid = await patient(request, "vital_events.read")
        before, limit = page_params(request)
        return web.json_response(await cursor_page(VitalEvent, VitalEvent.patient_id == pid, before, limit,
                                                   VitalEvent.public))

    m.route("GET", "/api/patients/{patient_id}/bp", bp_history, Page[BPReadingOut], query=PageQuery)
    m.route("GET", "/api/patients/{patient_id}/bp/stats", bp_stats, BPStats, query=StatsQuery)
    m.route("GET", "/api/patients/{patient_id}/bp/fhir", bp_fhir, media="application/fhir+json")
    m.route("GET", "/api/patients/{patient_id}/vital-events", vital_events, Page[VitalEventOut], query=PageQuery)


def _events(m: Mount, bp: BloodPressure, vitals: Vitals, forecasts: BPForecasts, triage: Triage) -> None:
    event = m.events.event

    @event("bp:add", BPIn, roles=USER_ROLES | DEVICE_ROLES, reply=BPReadingOut)
    async def _add(ctx: EventContext, body: BPIn) -> dict[str, Any]:
        """Add a blood pressure reading (patient; linked caregiver or clinician with `patient_id`, recorded as
        `entered_by`; a paired `bp_cuff` device). Classified by ACC/AHA 2017; implausible values get
        `implausible_reading` (422, `details.field`). A hypertensive-crisis reading raises an emergency alert
        before the ack."""
        return (await bp.add(ctx.principal, body, ctx.client)).public()

    @event("bp:update", BPUpdate, reply=BPReadingOut)
    async def _update(ctx: EventContext, body: BPUpdate) -> dict[str, Any]:
        """Correct a reading (re-classified; before/after audited as `bp.corrected`)."""
        return await bp.update(ctx.principal, body, ctx.client)

    @event("bp:delete", BPDelete, reply=BPReadingOut)
    async def _delete(ctx: EventContext, body: BPDelete) -> dict[str, Any]:
        """Soft-delete a mistaken reading (kept in the audit as `bp.deleted`, left out of history and statistics)."""
        return await bp.delete(ctx.principal, body, ctx.client)

    @event("bp:list", BPList, reply=Page[BPReadingOut])
    async def _list(ctx: EventContext, body: BPList) -> dict[str, Any]:
        """A page of a patient's readings, newest first (`before` is the previous page's `next_cursor`)."""
        pid = await require_patient(ctx.principal, body.patient_id, "bp.read", ctx.client)
        return await _history(pid, as_object_id(body.before, "before") if body.before else None, body.limit)

    @event("bp:stats", BPStatsIn, reply=BPStats)
    async def _stats(ctx: EventContext, body: BPStatsIn) -> dict[str, Any]:
        """Statistics over the day/week/month ending at `end` (default now)."""
        pid = await require_patient(ctx.principal, body.patient_id, "bp.stats", ctx.client)
        return await statistics(pid, body.window, body.end)

    @event("vitals:get-thresholds", PatientRef, reply=PatientThresholds)
    async def _get_thresholds(ctx: EventContext, body: PatientRef) -> dict[str, Any]:
        """The patient's alert thresholds (defaults where a clinician set nothing)."""
        return await vitals.get_thresholds(ctx.principal, body.patient_id, ctx.client)

    @event("vitals:set-thresholds", ThresholdsIn, reply=PatientThresholds)
    async def _set_thresholds(ctx: EventContext, body: ThresholdsIn) -> dict[str, Any]:
        """(verified, linked clinician only) Change some of the patient's alert thresholds; they apply to running
        streams at once.

        Fields left out keep their value. `forbidden` for anyone but a verified clinician linked to the patient (an
        unverified clinician acts as a caregiver); `invalid_payload` for a value outside its clinical limits (the
        minimum and maximum below, e.g. critical tachycardia at most 220/min, critical bradycardia at least
        30/min); `invalid_thresholds` if a critical rate does not lie beyond its warning rate or the bradycardia
        rate is not below the tachycardia rate. A change is audited with the old and new values
        (`thresholds.changed`), announced to the patient's room (`vitals:thresholds-changed`) and notified to the
        patient and the rest of the care team (`notification:new`, kind `thresholds_changed`)."""
        return await vitals.set_thresholds(ctx.principal, body, ctx.client)

    @event("ml:bp-forecast", ForecastIn, reply=Forecast)
    async def _forecast(ctx: EventContext, body: ForecastIn) -> dict[str, Any]:
        """Forecast of a patient's next-7-day mean blood pressure and the probability that week is ACC/AHA stage 2 or
        worse, by the active `bp` model of the registry (access-checked and audited as `ml.bp_forecast`). Every
        prediction is stored with the model version that made it; a model trained on synthetic data says so
        (`synthetic: true`, `label`). Without an active model or with fewer than 3 readings in the last 28 days the
        answer is `available: false` with the reason."""
        return await forecasts.request(ctx.principal, body.patient_id, ctx.client)

    @event("ml:triage", TriageIn, reply=TriageOut)
    async def _triage(ctx: EventContext, body: TriageIn) -> dict[str, Any]:
        """Symptom triage by a transparent rule table (red flags: chest pain, stroke signs FAST, severe shortness of
        breath, fainting, sudden confusion, blood pressure above 180/120 with symptoms...): `emergency`, `urgent`
        or `routine` with the rules that fired, advice and a disclaimer that it is not a diagnosis. The pressure
        looked at is the one given, or the patient's latest reading of the last 2 hours. `patient_id` may be left
        out by the patient. An emergency raises the emergency alert `symptom_emergency` to the care team
        (`alert:new`), like a crisis reading; the outcome is audited as `ml.triage.outcome`. Such alerts are raised
        on demand and capped per patient per UTC day (`HEALTHMATE_ALERTS_ON_DEMAND_PER_DAY`, while none is open):
        past the cap the answer is `too_many_alerts` (`details.retry_after_s`, `details.limit`) and no alert is
        raised."""
        return await triage.assess(ctx.principal, body, ctx.client)
