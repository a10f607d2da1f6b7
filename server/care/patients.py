"""A patient's profile as seen by their care team: the list of patients a user may see,
and one patient's profile (access-checked and audited)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from beanie.operators import In
from pydantic import BaseModel, ConfigDict, Field

from server.care.access import patients_of, require_patient
from server.care.documents import User
from server.core.errors import not_found
from server.core.identity import Client, Principal
from server.transport.http import client_of, require_principal
from server.transport.realtime import EventContext, Realtime


class PatientRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(max_length=64)


async def list_patients(principal: Principal) -> list[dict[str, Any]]:
    ids = await patients_of(principal)
    users = await User.find(In(User.id, ids)).to_list()
    return [u.public() for u in users]


async def get_patient(principal: Principal, patient_id: str, client: Client) -> dict[str, Any]:
    pid = await require_patient(principal, patient_id, "patient.read", client)
    user = await User.get(pid)
    if user is None or user.role != "patient":
        raise not_found("patient")
    return user.public()


async def rest_list(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    return web.json_response({"items": await list_patients(principal)})


async def rest_get(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    return web.json_response(await get_patient(principal, request.match_info["patient_id"], client_of(request)))


def setup(app: web.Application, rt: Realtime) -> None:
    app.router.add_get("/api/patients", rest_list)
    app.router.add_get("/api/patients/{patient_id}", rest_get)

    @rt.event("patients:list")
    async def _list(ctx: EventContext, _: None) -> list[dict[str, Any]]:
        return await list_patients(ctx.principal)

    @rt.event("patient:get", PatientRef)
    async def _get(ctx: EventContext, body: PatientRef) -> dict[str, Any]:
        return await get_patient(ctx.principal, body.patient_id, ctx.client)
