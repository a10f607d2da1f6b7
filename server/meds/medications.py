"""Medications: created, updated and archived over Socket.IO by the patient or a linked caregiver
acting for them (audited with who), every change pushed live to everyone linked (``med:changed``)
and kept as history (``MedicationChange``, paged over REST). Stock falling to its low mark
notifies the patient and their care team once per crossing."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from aiohttp import web
from beanie import PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pymongo import ASCENDING, DESCENDING, IndexModel

from server.care.access import require_patient
from server.care.documents import Link
from server.core.documents import VersionedDocument, iso, utcnow
from server.core.errors import ApiError, forbidden, not_found
from server.core.identity import Principal, as_object_id
from server.core.patch import Patch
from server.meds.dose_times import WEEKDAYS
from server.transport.http import client_of, cursor_page, page_params, require_principal
from server.transport.realtime import EventContext, Realtime

if TYPE_CHECKING:
    from server.services import Services

log = logging.getLogger(__name__)
WRITERS = frozenset({"patient", "caregiver", "clinician"})  # the patient, or anyone linked acting for them
MAX_ACTIVE = 100  # medications per patient

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120)]
Short = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=60)]
HourMinute = Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Form = Literal["tablet", "capsule", "liquid", "injection", "inhaler", "drops", "patch", "cream", "powder", "other"]
UploadId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Id = Annotated[str, StringConstraints(max_length=64)]


class Schedule(BaseModel):
    """Times of day (``HH:MM``, the patient's own time zone) on the given days of the week, between
    optional first and last dates; ``as_needed`` medications have no fixed times and get no reminders."""

    model_config = ConfigDict(extra="forbid")
    times: list[HourMinute] = Field(default_factory=list, max_length=12)
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1, max_length=7)
    start_date: date | None = None
    end_date: date | None = None
    as_needed: bool = False

    @model_validator(mode="after")
    def _coherent(self) -> Schedule:
        if not self.as_needed and not self.times:
            raise ValueError("a scheduled medication needs at least one time of day (or as_needed)")
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValueError("end_date is before start_date")
        self.times = sorted(set(self.times))
        self.days = sorted(set(self.days), key=WEEKDAYS.index)
        return self


class MedFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text
    strength: Short | None = None
    form: Form = "tablet"
    dose: Short | None = None
    instructions: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] | None = None
    schedule: Schedule
    drawer: int | None = Field(None, ge=1, le=32)
    stock: int | None = Field(None, ge=0, le=100_000)
    low_stock_at: int = Field(5, ge=0, le=10_000)
    image_id: UploadId | None = None


class MedCreate(MedFields):
    patient_id: Id


class MedUpdate(Patch):
    keep = frozenset({"name", "form", "schedule", "low_stock_at"})
    patient_id: Id
    medication_id: Id
    name: Text | None = None
    strength: Short | None = None
    form: Form | None = None
    dose: Short | None = None
    instructions: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] | None = None
    schedule: Schedule | None = None
    drawer: int | None = Field(None, ge=1, le=32)
    stock: int | None = Field(None, ge=0, le=100_000)
    low_stock_at: int | None = Field(None, ge=0, le=10_000)
    image_id: UploadId | None = None


class MedRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: Id
    medication_id: Id


class MedList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: Id
    include_archived: bool = False


class Medication(VersionedDocument):
    patient_id: PydanticObjectId
    name: str
    strength: str | None = None
    form: str = "tablet"
    dose: str | None = None
    instructions: str | None = None
    schedule: dict[str, Any]  # a Schedule, dates as ISO strings
    drawer: int | None = None
    stock: int | None = None
    low_stock_at: int = 5
    image_id: str | None = None
    revision: int = 1
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    archived_at: datetime | None = None
    planned_until: datetime | None = None  # the scheduler has created doses due before this

    class Settings:
        name = "medications"
        indexes = [IndexModel([("patient_id", ASCENDING), ("archived_at", ASCENDING)], name="patient_active")]

    @property
    def low_stock(self) -> bool:
        return self.stock is not None and self.stock <= self.low_stock_at

    def plan(self) -> Schedule:
        return Schedule.model_validate(self.schedule)

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "patient_id": str(self.patient_id), "name": self.name,
                "strength": self.strength, "form": self.form, "dose": self.dose, "instructions": self.instructions,
                "schedule": self.schedule, "drawer": self.drawer, "stock": self.stock,
                "low_stock_at": self.low_stock_at, "low_stock": self.low_stock, "image_id": self.image_id,
                "revision": self.revision, "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
                "archived_at": iso(self.archived_at)}


class MedicationChange(VersionedDocument):
    """One change to a medication: who made it and each field's value before and after."""

    patient_id: PydanticObjectId
    medication_id: PydanticObjectId
    at: datetime = Field(default_factory=utcnow)
    actor_id: PydanticObjectId | None = None
    actor_role: str | None = None
    change: str  # created | updated | archived | stock
    changes: dict[str, dict[str, Any]] = Field(default_factory=dict)

    class Settings:
        name = "medication_changes"
        indexes = [
            IndexModel([("patient_id", ASCENDING), ("_id", DESCENDING)], name="patient_recent"),
            IndexModel([("medication_id", ASCENDING), ("_id", DESCENDING)], name="medication_recent"),
        ]

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "patient_id": str(self.patient_id), "medication_id": str(self.medication_id),
                "at": iso(self.at), "actor_id": str(self.actor_id) if self.actor_id else None,
                "actor_role": self.actor_role, "change": self.change, "changes": self.changes}


async def care_team(patient_id: PydanticObjectId, roles: tuple[str, ...] = ("caregiver", "clinician")
                    ) -> list[PydanticObjectId]:
    links = Link.find(Link.patient_id == patient_id, Link.revoked_at == None)  # noqa: E711
    return [link.member_id async for link in links if link.member_role in roles]


async def notify(svc: Services, user_ids: list[PydanticObjectId], kind: str, title: str, body: str = "", *,
                 patient_id: PydanticObjectId, data: dict[str, Any] | None = None,
                 urgency: str = "normal") -> None:
    """Through the notifications service; a failure to notify never undoes the change that caused it."""
    try:
        await svc.notifications.notify(user_ids, kind, title, body, patient_id=patient_id, data=data or {},
                                       urgency=urgency)  # type: ignore[arg-type]
    except Exception:
        log.exception("could not notify %s (%s)", kind, title)


ChangeHook = Callable[[Medication, str, dict[str, Any]], Awaitable[None]]


class Medications:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.on_change: list[ChangeHook] = []  # the scheduler re-plans the medication's doses
        rt: Realtime = svc.realtime
        rt.event("med:create", MedCreate)(self._create)
        rt.event("med:update", MedUpdate)(self._update)
        rt.event("med:archive", MedRef)(self._archive)
        rt.event("med:list", MedList)(self._list)

    async def _writer(self, ctx: EventContext, patient_id: str, action: str, **details: Any) -> PydanticObjectId:
        pid = await require_patient(ctx.principal, patient_id, action, ctx.client, **details)
        if ctx.principal.role not in WRITERS:
            raise forbidden("Only the patient or their care team changes the patient's medications")
        return pid

    async def _create(self, ctx: EventContext, body: MedCreate) -> dict[str, Any]:
        pid = await self._writer(ctx, body.patient_id, "medication.create", name=body.name)
        active = await Medication.find(Medication.patient_id == pid, Medication.archived_at == None).count()  # noqa: E711
        if active >= MAX_ACTIVE:
            raise ApiError("too_many_medications", f"A patient has at most {MAX_ACTIVE} active medications", 409)
        values = body.model_dump(mode="json", exclude={"patient_id"})
        med = Medication(patient_id=pid, **values)
        await med.insert()
        await self._changed(ctx.principal, med, "created", {k: {"from": None, "to": v} for k, v in values.items()},
                            was_low=False)
        return med.public()

    async def _load(self, pid: PydanticObjectId, medication_id: str) -> Medication:
        med = await Medication.get(as_object_id(medication_id, "medication_id"))
        if med is None or med.patient_id != pid:
            raise not_found("medication")
        return med

    async def _update(self, ctx: EventContext, body: MedUpdate) -> dict[str, Any]:
        fields = body.model_fields_set - {"patient_id", "medication_id"}
        pid = await self._writer(ctx, body.patient_id, "medication.update", medication_id=body.medication_id,
                                 fields=sorted(fields))
        med = await self._load(pid, body.medication_id)
        if med.archived_at is not None:
            raise ApiError("archived", "This medication is archived", 409)
        new = body.model_dump(mode="json", include=fields)
        changes = {k: {"from": getattr(med, k), "to": v} for k, v in new.items() if getattr(med, k) != v}
        if not changes:
            return med.public()
        was_low = med.low_stock
        for key, change in changes.items():
            setattr(med, key, change["to"])
        med.revision += 1
        med.updated_at = utcnow()
        await med.save()
        await self._changed(ctx.principal, med, "updated", changes, was_low=was_low)
        return med.public()

    async def _archive(self, ctx: EventContext, body: MedRef) -> dict[str, Any]:
        pid = await self._writer(ctx, body.patient_id, "medication.archive", medication_id=body.medication_id)
        med = await self._load(pid, body.medication_id)
        if med.archived_at is not None:
            return med.public()
        med.archived_at = med.updated_at = utcnow()
        med.revision += 1
        await med.save()
        await self._changed(ctx.principal, med, "archived", {"archived_at": {"from": None, "to": iso(med.archived_at)}},
                            was_low=True)
        return med.public()

    async def _list(self, ctx: EventContext, body: MedList) -> list[dict[str, Any]]:
        pid = await require_patient(ctx.principal, body.patient_id, "medication.list", ctx.client)
        return [m.public() for m in await list_for(pid, body.include_archived)]

    async def _changed(self, principal: Principal | None, med: Medication, change: str,
                       changes: dict[str, dict[str, Any]], *, was_low: bool) -> None:
        """Record the change, tell everyone linked, re-plan doses, and warn once when stock runs low."""
        assert med.id is not None
        await MedicationChange(patient_id=med.patient_id, medication_id=med.id, change=change, changes=changes,
                               actor_id=principal.user_id if principal else None,
                               actor_role=principal.role if principal else "system").insert()
        by = {"id": principal.id, "role": principal.role} if principal else None
        await self.svc.realtime.to_patient(med.patient_id, "med:changed",
                                           {"change": change, "medication": med.public(), "by": by})
        for hook in self.on_change:
            await hook(med, change, changes)
        if med.low_stock and not was_low and med.archived_at is None:
            team = [med.patient_id, *await care_team(med.patient_id, ("caregiver",))]
            await notify(self.svc, team, "low_stock", f"{med.name} is running low",
                         f"{med.stock} left", patient_id=med.patient_id,
                         data={"medication_id": str(med.id), "stock": med.stock})

    async def use_stock(self, med_id: PydanticObjectId, principal: Principal | None) -> None:
        """One dose taken: one fewer in stock (never below zero), recorded and pushed like any change."""
        collection = Medication.get_pymongo_collection()
        before = await collection.find_one_and_update({"_id": med_id, "stock": {"$gt": 0}},
                                                      {"$inc": {"stock": -1, "revision": 1}})
        if before is None:
            return
        med = await Medication.get(med_id)
        if med is None:
            return
        await self._changed(principal, med, "stock", {"stock": {"from": before["stock"], "to": med.stock}},
                            was_low=before["stock"] <= med.low_stock_at)


async def list_for(patient_id: PydanticObjectId, include_archived: bool = False) -> list[Medication]:
    query = Medication.find(Medication.patient_id == patient_id)
    if not include_archived:
        query = query.find(Medication.archived_at == None)  # noqa: E711
    return await query.sort(Medication.name).to_list()


async def rest_list(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    pid = await require_patient(principal, request.match_info["patient_id"], "medication.list", client_of(request))
    archived = request.query.get("include_archived") in ("1", "true")
    return web.json_response({"items": [m.public() for m in await list_for(pid, archived)]})


async def rest_history(request: web.Request) -> web.Response:
    """Changes over time, newest first; ``?medication_id=`` narrows to one medication."""
    principal = await require_principal(request)
    pid = await require_patient(principal, request.match_info["patient_id"], "medication.history",
                                client_of(request))
    before, limit = page_params(request)
    condition: Any = MedicationChange.patient_id == pid
    if request.query.get("medication_id"):
        mid = as_object_id(request.query["medication_id"], "medication_id")
        condition = {"patient_id": pid, "medication_id": mid}
    page = await cursor_page(MedicationChange, condition, before, limit, MedicationChange.public)
    return web.json_response(page)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/patients/{patient_id}/medications", rest_list)
    app.router.add_get("/api/patients/{patient_id}/medications/history", rest_history)
