"""Blood pressure readings: added by the patient, a linked caregiver on the patient's behalf, or a
paired BP cuff; classified (ACC/AHA 2017), stored, pushed live to the patient's room; corrected or
soft-deleted (kept and audited, left out of statistics); statistics, REST history and FHIR export.

A hypertensive-crisis reading is handed to ``on_crisis`` listeners (the alert path) before the ack."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from aiohttp import web
from beanie import PydanticObjectId
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pymongo import ASCENDING, DESCENDING, IndexModel

from devices.registry import Device
from ml.bp_category import ImplausibleReading, bp_classify
from ml.bp_stats import Reading, bp_stats
from server.care import audit
from server.care.access import require_patient
from server.care.documents import User
from server.core.documents import VersionedDocument, iso, utcnow
from server.core.errors import ApiError, forbidden, not_found
from server.core.identity import Client, Principal, as_object_id
from server.core.patch import Patch
from server.transport.http import client_of, cursor_page, page_params, require_principal
from server.transport.realtime import DEVICE_ROLES, USER_ROLES, EventContext, Realtime
from server.vitals.fhir import bp_bundle

Position = Literal["sitting", "standing", "lying"]
Arm = Literal["left", "right"]
Window = Literal["day", "week", "month"]
WINDOWS = {"day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=30)}
FUTURE_SLACK = timedelta(minutes=5)  # device clocks drift
OLDEST = timedelta(days=3650)
STATS_LIMIT = 20_000  # readings considered in one window (a month of one reading every 2 minutes)
EXPORT_LIMIT = 50_000
CrisisListener = Callable[["BPReading", Principal], Awaitable[None]]
AddedListener = Callable[["BPReading"], Awaitable[None]]  # every new reading, after its push (e.g. a forecast)


class BPReading(VersionedDocument):
    patient_id: PydanticObjectId
    systolic: float
    diastolic: float
    pulse: float | None = None
    measured_at: datetime
    position: Position | None = None
    arm: Arm | None = None
    note: str | None = None
    category: str
    source: Literal["app", "device"] = "app"
    entered_by: PydanticObjectId  # the user, or for a device its patient (see device_id)
    entered_by_role: str
    device_id: PydanticObjectId | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime | None = None
    updated_by: PydanticObjectId | None = None
    deleted_at: datetime | None = None
    deleted_by: PydanticObjectId | None = None

    class Settings:
        name = "bp_readings"
        indexes = [
            IndexModel([("patient_id", ASCENDING), ("_id", DESCENDING)], name="patient_recent"),
            IndexModel([("patient_id", ASCENDING), ("measured_at", ASCENDING)], name="patient_measured"),
        ]

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "patient_id": str(self.patient_id), "systolic": self.systolic,
                "diastolic": self.diastolic, "pulse": self.pulse, "measured_at": iso(self.measured_at),
                "position": self.position, "arm": self.arm, "note": self.note, "category": self.category,
                "source": self.source, "entered_by": str(self.entered_by), "entered_by_role": self.entered_by_role,
                "device_id": str(self.device_id) if self.device_id else None, "created_at": iso(self.created_at),
                "updated_at": iso(self.updated_at), "deleted_at": iso(self.deleted_at)}


class BPValues(BaseModel):
    model_config = ConfigDict(extra="forbid")
    systolic: float = Field(ge=0, le=1000)
    diastolic: float = Field(ge=0, le=1000)
    pulse: float | None = Field(None, ge=0, le=1000)
    measured_at: AwareDatetime
    position: Position | None = None
    arm: Arm | None = None
    note: str | None = Field(None, max_length=500)


class BPIn(BPValues):
    """``patient_id`` may be left out by the patient and by a cuff (it is theirs)."""

    patient_id: str | None = Field(None, max_length=64)


class BPUpdate(Patch):
    keep = frozenset({"systolic", "diastolic", "measured_at"})
    reading_id: str = Field(max_length=64)
    systolic: float | None = Field(None, ge=0, le=1000)
    diastolic: float | None = Field(None, ge=0, le=1000)
    pulse: float | None = Field(None, ge=0, le=1000)
    measured_at: AwareDatetime | None = None
    position: Position | None = None
    arm: Arm | None = None
    note: str | None = Field(None, max_length=500)


class BPDelete(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reading_id: str = Field(max_length=64)
    reason: str | None = Field(None, max_length=200)


class BPList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(max_length=64)
    before: str | None = Field(None, max_length=64)
    limit: int = Field(50, ge=1, le=200)


class BPStatsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(max_length=64)
    window: Window = "week"
    end: AwareDatetime | None = None


def classify(systolic: float, diastolic: float, pulse: float | None, measured_at: datetime) -> str:
    """The category, or the uniform ``implausible_reading`` refusal."""
    now = utcnow()
    if measured_at > now + FUTURE_SLACK or measured_at < now - OLDEST:
        raise ApiError("implausible_reading", "measured_at is in the future or too far in the past", 422,
                       {"field": "measured_at"})
    try:
        return bp_classify(systolic, diastolic, pulse)
    except ImplausibleReading as exc:
        raise ApiError("implausible_reading", str(exc), 422, {"field": exc.field}) from None


class BloodPressure:
    def __init__(self, realtime: Realtime) -> None:
        self.rt = realtime
        self.on_crisis: list[CrisisListener] = []
        self.on_added: list[AddedListener] = []
        ev = realtime.event
        ev("bp:add", BPIn, roles=USER_ROLES | DEVICE_ROLES)(self._add)
        ev("bp:update", BPUpdate)(self._update)
        ev("bp:delete", BPDelete)(self._delete)
        ev("bp:list", BPList)(self._list)
        ev("bp:stats", BPStatsIn)(self._stats)

    async def add(self, principal: Principal, body: BPIn, client: Client | None = None) -> BPReading:
        device_id = None
        if principal.is_device:
            device = await Device.get(PydanticObjectId(principal.sid))
            if device is None or device.kind != "bp_cuff":
                raise forbidden("Only a blood pressure cuff sends readings")
            device_id = device.id
        pid = await require_patient(principal, body.patient_id or principal.user_id, "bp.add", client)
        category = classify(body.systolic, body.diastolic, body.pulse, body.measured_at)
        reading = BPReading(patient_id=pid, **body.model_dump(exclude={"patient_id"}), category=category,
                            source="device" if device_id else "app", entered_by=principal.user_id,
                            entered_by_role=principal.role, device_id=device_id)
        await reading.insert()
        await self.rt.to_patient(pid, "bp:new", reading.public())
        if category == "hypertensive_crisis":
            for listener in self.on_crisis:
                await listener(reading, principal)
        for added in self.on_added:
            await added(reading)
        return reading

    async def _add(self, ctx: EventContext, body: BPIn) -> dict[str, Any]:
        return (await self.add(ctx.principal, body, ctx.client)).public()

    async def _editable(self, ctx: EventContext, reading_id: str, action: str, **details: Any) -> BPReading:
        reading = await BPReading.get(as_object_id(reading_id, "reading_id"))
        if reading is None:
            raise not_found("reading")
        await require_patient(ctx.principal, reading.patient_id, action, ctx.client, reading_id=reading_id, **details)
        if reading.deleted_at is not None:
            raise not_found("reading")
        return reading

    async def _update(self, ctx: EventContext, body: BPUpdate) -> dict[str, Any]:
        changes = body.model_dump(exclude_unset=True, exclude={"reading_id"})
        if not changes:
            raise ApiError("invalid_payload", "Nothing to change", 422)
        reading = await self._editable(ctx, body.reading_id, "bp.update")
        before = reading.public()
        merged = {**reading.model_dump(include=set(BPValues.model_fields)), **changes}
        category = classify(merged["systolic"], merged["diastolic"], merged["pulse"], merged["measured_at"])
        for key, value in changes.items():
            setattr(reading, key, value)
        reading.category, reading.updated_at, reading.updated_by = category, utcnow(), ctx.principal.user_id
        await reading.save()
        after = reading.public()
        await audit.record("bp.corrected", principal=ctx.principal, patient_id=reading.patient_id, client=ctx.client,
                           reading_id=str(reading.id), before={k: before[k] for k in changes},
                           after={k: after[k] for k in changes})
        await self.rt.to_patient(reading.patient_id, "bp:updated", after)
        if category == "hypertensive_crisis" and before["category"] != category:
            for listener in self.on_crisis:
                await listener(reading, ctx.principal)
        return after

    async def _delete(self, ctx: EventContext, body: BPDelete) -> dict[str, Any]:
        reading = await self._editable(ctx, body.reading_id, "bp.delete")
        reading.deleted_at, reading.deleted_by = utcnow(), ctx.principal.user_id
        await reading.save()
        await audit.record("bp.deleted", principal=ctx.principal, patient_id=reading.patient_id, client=ctx.client,
                           reading_id=str(reading.id), reason=body.reason, reading=reading.public())
        await self.rt.to_patient(reading.patient_id, "bp:deleted", {"id": str(reading.id),
                                                                    "patient_id": str(reading.patient_id)})
        return reading.public()

    async def _list(self, ctx: EventContext, body: BPList) -> dict[str, Any]:
        pid = await require_patient(ctx.principal, body.patient_id, "bp.read", ctx.client)
        before = as_object_id(body.before, "before") if body.before else None
        return await history_page(pid, before, body.limit)

    async def _stats(self, ctx: EventContext, body: BPStatsIn) -> dict[str, Any]:
        pid = await require_patient(ctx.principal, body.patient_id, "bp.stats", ctx.client)
        return await statistics(pid, body.window, body.end)


def _live(pid: PydanticObjectId) -> dict[str, Any]:
    return {"patient_id": pid, "deleted_at": None}


async def history_page(pid: PydanticObjectId, before: PydanticObjectId | None, limit: int) -> dict[str, Any]:
    return await cursor_page(BPReading, _live(pid), before, limit, BPReading.public)


async def statistics(pid: PydanticObjectId, window: str, end: datetime | None) -> dict[str, Any]:
    end = (end or utcnow()).astimezone(UTC)
    start = end - WINDOWS[window]
    user = await User.get(pid)
    try:
        tz = ZoneInfo(user.timezone if user else "UTC")
    except (KeyError, ValueError):
        tz = ZoneInfo("UTC")
    docs = await BPReading.find(_live(pid), BPReading.measured_at >= start, BPReading.measured_at < end) \
        .sort(+BPReading.measured_at).limit(STATS_LIMIT).to_list()
    readings = [Reading(t=d.measured_at.timestamp(), local_hour=d.measured_at.astimezone(tz).hour,
                        systolic=d.systolic, diastolic=d.diastolic, pulse=d.pulse) for d in docs]
    return {"patient_id": str(pid), "window": window, "start": iso(start), "end": iso(end), "timezone": str(tz),
            **bp_stats(readings)}


async def rest_history(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    pid = await require_patient(principal, request.match_info["patient_id"], "bp.read", client_of(request))
    before, limit = page_params(request)
    return web.json_response(await history_page(pid, before, limit))


async def rest_stats(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    window = request.query.get("window", "week")
    if window not in WINDOWS:
        raise ApiError("invalid_query", "window must be day, week or month", 422, {"field": "window"})
    pid = await require_patient(principal, request.match_info["patient_id"], "bp.stats", client_of(request))
    return web.json_response(await statistics(pid, window, None))


async def rest_fhir(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    pid = await require_patient(principal, request.match_info["patient_id"], "bp.export", client_of(request))
    docs = await BPReading.find(_live(pid)).sort(+BPReading.measured_at).limit(EXPORT_LIMIT).to_list()
    base = f"{request.scheme}://{request.host}/fhir"
    bundle = bp_bundle(base, str(pid), [d.public() for d in docs], iso(utcnow()) or "")
    return web.json_response(bundle, content_type="application/fhir+json")


def setup(app: web.Application) -> None:
    app.router.add_get("/api/patients/{patient_id}/bp", rest_history)
    app.router.add_get("/api/patients/{patient_id}/bp/stats", rest_stats)
    app.router.add_get("/api/patients/{patient_id}/bp/fhir", rest_fhir)
