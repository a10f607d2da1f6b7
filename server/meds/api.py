"""The meds concern's transport: its Socket.IO events and REST routes, bound once to its services."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, create_model

from server.core.wire import Items, Page
from server.meds import adherence
from server.meds.documents import ConfirmIn, MedCreate, MedicationChange, MedList, MedRef, MedUpdate
from server.meds.medications import Medications
from server.meds.scheduler import Scheduler
from server.meds.wire import Adherence, DoseDue, DoseOut, MedChanged, MedicationChangeOut, MedicationOut
from server.transport.events import EventContext
from server.transport.http import PageQuery, cursor_page, page_params
from server.transport.mount import Mount


class ListQuery(BaseModel):
    include_archived: Literal["1", "true"] | None = None


class HistoryQuery(PageQuery):
    medication_id: str | None = None


DosesQuery = create_model("DosesQuery", **{"from": (str | None, None), "to": (str | None, None)})  # ISO 8601 times


class AdherenceQuery(BaseModel):
    weeks: int = Field(4, ge=1, le=52)


def mount(m: Mount, meds: Medications, scheduler: Scheduler) -> None:
    ev = m.events.event
    m.events.push("med:changed", MedChanged, "To the patient's room when a medication is created, changed, "
                  "archived or its stock used.")
    m.events.push("dose:due", DoseDue, "To the patient's room when a dose is due (the box is told too). The "
                  "patient's app confirms it with dose:received; each registered device of the patient that has "
                  "not, within HEALTHMATE_ALERT_PUSH_AFTER_S of the reminder, is pushed the reminder.")
    m.events.push("dose:confirmed", DoseOut, "To the patient's room when a dose is confirmed (app or box).")
    m.events.push("dose:missed", DoseOut, "To the patient's room when a dose is marked missed.")

    @ev("med:create", MedCreate, reply=MedicationOut)
    async def create(ctx: EventContext, body: MedCreate) -> dict[str, Any]:
        """(patient, or a linked caregiver or clinician acting for them) Add a medication. Audited with who acted.
        Pushes `med:changed` to everyone linked. Errors `forbidden` (not linked), `too_many_medications`,
        `invalid_upload` (422: `image_id` is not a `medication` upload the caller made for this patient)."""
        return await meds.create(ctx.principal, ctx.client, body)

    @ev("med:update", MedUpdate, reply=MedicationOut)
    async def update(ctx: EventContext, body: MedUpdate) -> dict[str, Any]:
        """(patient or anyone linked) Change the given fields (`null` clears an optional one). A changed schedule
        re-plans the doses not yet reminded. Errors `not_found`, `archived` (409), `invalid_upload` (a new
        `image_id` must be a `medication` upload the caller made for this patient)."""
        return await meds.update(ctx.principal, ctx.client, body)

    @ev("med:archive", MedRef, reply=MedicationOut)
    async def archive(ctx: EventContext, body: MedRef) -> dict[str, Any]:
        """(patient or anyone linked) Archive a medication; its future doses are dropped, history kept."""
        return await meds.archive(ctx.principal, ctx.client, body)

    @ev("med:list", MedList, reply=list[MedicationOut])
    async def listed(ctx: EventContext, body: MedList) -> list[dict[str, Any]]:
        """The patient's medications (anyone linked), by name."""
        return await meds.listed(ctx.principal, ctx.client, body.patient_id, body.include_archived)

    @ev("dose:confirm", ConfirmIn, reply=DoseOut)
    async def confirm(ctx: EventContext, body: ConfirmIn) -> dict[str, Any]:
        """(patient, or anyone linked for them) The dose was taken: `scheduled`/`reminded` → `confirmed` (up to an
        hour before it is due). Confirming again answers the confirmed dose. Errors `not_found`, `dose_missed`
        (409), `not_due_yet` (409). Takes one from the medication's stock."""
        return await scheduler.confirmations.from_app(ctx.principal, ctx.client, body.patient_id, body.dose_id)

    async def rest_list(request: web.Request) -> web.Response:
        """The patient's medications by name (changed over Socket.IO `med:*`); `?include_archived=true` adds archived
        ones"""
        principal = await m.rest.principal(request)
        archived = request.query.get("include_archived") in ("1", "true")
        return web.json_response({"items": await meds.listed(principal, m.rest.client(request),
                                                             request.match_info["patient_id"], archived)})

    async def rest_history(request: web.Request) -> web.Response:
        """Changes over time, newest first; ``?medication_id=`` narrows to one medication."""
        principal = await m.rest.principal(request)
        condition, keep = await meds.history(principal, m.rest.client(request), request.match_info["patient_id"],
                                             request.query.get("medication_id"))
        before, limit = page_params(request)
        return web.json_response(await cursor_page(MedicationChange, condition, before, limit,
                                                   MedicationChange.public, keep))

    async def rest_doses(request: web.Request) -> web.Response:
        """The patient's doses due in a time range, by due time (at most 31 days; default the last day and the next)

        Doses are planned 36 h ahead from each medication's schedule in the patient's time zone. States:
        `scheduled` → `reminded` (at due time: `dose:due`) → `confirmed` (drawer opened or `dose:confirm`) or
        `missed` (not confirmed within the grace window, `HEALTHMATE_DOSE_GRACE_S`)."""
        principal = await m.rest.principal(request)
        return web.json_response(await adherence.doses_between(
            principal, m.rest.client(request), request.match_info["patient_id"], request.query.get("from"),
            request.query.get("to")))

    async def rest_adherence(request: web.Request) -> web.Response:
        """Adherence per medication and per week (weeks start on Monday in the patient's time zone)

        `adherence` = confirmed / (confirmed + missed), null when nothing was decided yet; `pending` doses are due
        but still open."""
        principal = await m.rest.principal(request)
        return web.json_response(await adherence.adherence(
            principal, m.rest.client(request), request.match_info["patient_id"], request.query.get("weeks")))

    path = "/api/patients/{patient_id}"
    m.route("GET", path + "/medications", rest_list, Items[MedicationOut], query=ListQuery)
    m.route("GET", path + "/medications/history", rest_history, Page[MedicationChangeOut], query=HistoryQuery)
    m.route("GET", path + "/doses", rest_doses, Items[DoseOut], query=DosesQuery)
    m.route("GET", path + "/adherence", rest_adherence, Adherence, query=AdherenceQuery)
