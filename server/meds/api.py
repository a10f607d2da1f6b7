"""The meds concern's transport: its Socket.IO events and REST routes, bound once to its services."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.meds import adherence
from server.meds.documents import ConfirmIn, MedCreate, MedicationChange, MedList, MedRef, MedUpdate
from server.meds.medications import Medications
from server.meds.scheduler import Scheduler
from server.transport.events import EventContext
from server.transport.http import cursor_page, page_params
from server.transport.mount import Mount


def mount(m: Mount, meds: Medications, scheduler: Scheduler) -> None:
    ev = m.events.event

    @ev("med:create", MedCreate)
    async def create(ctx: EventContext, body: MedCreate) -> dict[str, Any]:
        return await meds.create(ctx.principal, ctx.client, body)

    @ev("med:update", MedUpdate)
    async def update(ctx: EventContext, body: MedUpdate) -> dict[str, Any]:
        return await meds.update(ctx.principal, ctx.client, body)

    @ev("med:archive", MedRef)
    async def archive(ctx: EventContext, body: MedRef) -> dict[str, Any]:
        return await meds.archive(ctx.principal, ctx.client, body)

    @ev("med:list", MedList)
    async def listed(ctx: EventContext, body: MedList) -> list[dict[str, Any]]:
        return await meds.listed(ctx.principal, ctx.client, body.patient_id, body.include_archived)

    @ev("dose:confirm", ConfirmIn)
    async def confirm(ctx: EventContext, body: ConfirmIn) -> dict[str, Any]:
        return await scheduler.confirmations.from_app(ctx.principal, ctx.client, body.patient_id, body.dose_id)

    async def rest_list(request: web.Request) -> web.Response:
        principal = await m.rest.principal(request)
        archived = request.query.get("include_archived") in ("1", "true")
        return web.json_response({"items": await meds.listed(principal, m.rest.client(request),
                                                             request.match_info["patient_id"], archived)})

    async def rest_history(request: web.Request) -> web.Response:
        """Changes over time, newest first; ``?medication_id=`` narrows to one medication."""
        principal = await m.rest.principal(request)
        condition = await meds.history(principal, m.rest.client(request), request.match_info["patient_id"],
                                       request.query.get("medication_id"))
        before, limit = page_params(request)
        return web.json_response(await cursor_page(MedicationChange, condition, before, limit,
                                                   MedicationChange.public))

    async def rest_doses(request: web.Request) -> web.Response:
        principal = await m.rest.principal(request)
        return web.json_response(await adherence.doses_between(
            principal, m.rest.client(request), request.match_info["patient_id"], request.query.get("from"),
            request.query.get("to")))

    async def rest_adherence(request: web.Request) -> web.Response:
        principal = await m.rest.principal(request)
        return web.json_response(await adherence.adherence(
            principal, m.rest.client(request), request.match_info["patient_id"], request.query.get("weeks")))

    m.routes.add_get("/api/patients/{patient_id}/medications", rest_list)
    m.routes.add_get("/api/patients/{patient_id}/medications/history", rest_history)
    m.routes.add_get("/api/patients/{patient_id}/doses", rest_doses)
    m.routes.add_get("/api/patients/{patient_id}/adherence", rest_adherence)
