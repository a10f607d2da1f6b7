"""Blood pressure readings: added by the patient, a linked caregiver on the patient's behalf, or a
paired BP cuff; classified (ACC/AHA 2017), stored, pushed live to the patient's room; corrected or
soft-deleted (kept and audited, left out of statistics); statistics and FHIR export.

A hypertensive-crisis reading is handed to ``on_crisis`` listeners (the alert path) before the ack, with the
write that stores it: the alert's lookups go alongside it, the alert is stored and sent once the reading is
durable (two store round trips on the way to the care team, not four), and the reading's access record is written
once the alert is out, before the ack."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from beanie import PydanticObjectId

from ml.bp_category import ImplausibleReading, bp_classify
from ml.bp_stats import Reading, bp_stats
from server.care import audit
from server.care.access import admit_patient, require_patient
from server.care.documents import User
from server.core.documents import iso, utcnow
from server.core.errors import ApiError, forbidden, not_found
from server.core.identity import Client, Principal, as_object_id
from server.core.ports import Broadcaster
from server.core.urgency import URGENCY
from server.infra.group_commit import COMMITS
from server.vitals.documents import BPDelete, BPIn, BPReading, BPUpdate, BPValues, live_between
from server.vitals.fhir import bp_bundle

WINDOWS = {"day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=30)}
FUTURE_SLACK = timedelta(minutes=5)  # device clocks drift
OLDEST = timedelta(days=3650)
STATS_LIMIT = 20_000  # readings considered in one window (a month of one reading every 2 minutes)
EXPORT_LIMIT = 50_000
DEVICES = "devices"  # the device registry's collection, read by name (a cuff's kind), not through its code
CrisisListener = Callable[[BPReading, Principal, Awaitable[Any] | None], Awaitable[None]]
AddedListener = Callable[[BPReading], Awaitable[None]]  # every new reading, after its push (e.g. a forecast)


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


async def _cuff_id(principal: Principal) -> PydanticObjectId:
    """The sending device's id, if it is a blood pressure cuff."""
    devices = BPReading.get_pymongo_collection().database[DEVICES]
    device = await devices.find_one({"_id": PydanticObjectId(principal.sid)}, {"kind": 1})
    if device is None or device.get("kind") != "bp_cuff":
        raise forbidden("Only a blood pressure cuff sends readings")
    return PydanticObjectId(device["_id"])


def in_crisis(values: BPValues) -> bool:
    """Whether the values are a hypertensive crisis (implausible ones are not: they are refused later)."""
    try:
        return bp_classify(values.systolic, values.diastolic, values.pulse) == "hypertensive_crisis"
    except ImplausibleReading:
        return False


def live(pid: PydanticObjectId) -> dict[str, Any]:
    """The patient's readings that are not deleted."""
    return {"patient_id": pid, "deleted_at": None}


class BloodPressure:
    def __init__(self, broadcaster: Broadcaster) -> None:
        self.broadcaster = broadcaster
        self.on_crisis: list[CrisisListener] = []
        self.on_added: list[AddedListener] = []

    async def add(self, principal: Principal, body: BPIn, client: Client | None = None) -> BPReading:
        # A reading in crisis is urgent from its first step (its access record, its storage, the alert): bulk
        # work (reminders, box commands) holds back meanwhile.
        crisis = in_crisis(body)
        async with URGENCY.urgent() if crisis else contextlib.nullcontext():
            return await self._add(principal, body, client, crisis)

    async def _add(self, principal: Principal, body: BPIn, client: Client | None, urgent: bool) -> BPReading:
        device_id = await _cuff_id(principal) if principal.is_device else None
        pid, audited = await admit_patient(principal, body.patient_id or principal.user_id, "bp.add", client,
                                           urgent=urgent)
        try:
            category = classify(body.systolic, body.diastolic, body.pulse, body.measured_at)
        except ApiError:
            await audited
            raise
        reading = BPReading(id=PydanticObjectId(), patient_id=pid, **body.model_dump(exclude={"patient_id"}),
                            category=category, source="device" if device_id else "app", entered_by=principal.user_id,
                            entered_by_role=principal.role, device_id=device_id)
        if not urgent:
            await audited  # the access record first, as everywhere
            await COMMITS.insert_documents([reading])
        else:  # in a crisis the reading and the alert's lookups go at once, the alert once the reading is stored,
            # and the access record once the alert is out (the ack still waits for it; the reading names who
            # entered it, so a crash before the record is written loses no one's trace): one disk sync fewer
            # ahead of the care team
            stored = asyncio.ensure_future(COMMITS.insert_documents([reading], urgent=True))
            try:
                for listener in self.on_crisis:
                    await listener(reading, principal, stored)  # (the alert waits for the reading alone)
            finally:
                await asyncio.gather(audited, stored)
        await self.broadcaster.to_patient(pid, "bp:new", reading.public())
        for added in self.on_added:
            await added(reading)
        return reading

    async def _editable(self, principal: Principal, client: Client | None, reading_id: str,
                        action: str) -> BPReading:
        reading = await BPReading.get(as_object_id(reading_id, "reading_id"))
        if reading is None:
            raise not_found("reading")
        await require_patient(principal, reading.patient_id, action, client, reading_id=reading_id)
        if reading.deleted_at is not None:
            raise not_found("reading")
        return reading

    async def update(self, principal: Principal, body: BPUpdate, client: Client | None) -> dict[str, Any]:
        changes = body.model_dump(exclude_unset=True, exclude={"reading_id"})
        if not changes:
            raise ApiError("invalid_payload", "Nothing to change", 422)
        reading = await self._editable(principal, client, body.reading_id, "bp.update")
        before = reading.public()
        merged = {**reading.model_dump(include=set(BPValues.model_fields)), **changes}
        category = classify(merged["systolic"], merged["diastolic"], merged["pulse"], merged["measured_at"])
        for key, value in changes.items():
            setattr(reading, key, value)
        reading.category, reading.updated_at, reading.updated_by = category, utcnow(), principal.user_id
        await reading.save()
        after = reading.public()
        await audit.record("bp.corrected", principal=principal, patient_id=reading.patient_id, client=client,
                           reading_id=str(reading.id), before={k: before[k] for k in changes},
                           after={k: after[k] for k in changes})
        await self.broadcaster.to_patient(reading.patient_id, "bp:updated", after)
        if category == "hypertensive_crisis" and before["category"] != category:
            for listener in self.on_crisis:
                await listener(reading, principal, None)
        return after

    async def delete(self, principal: Principal, body: BPDelete, client: Client | None) -> dict[str, Any]:
        reading = await self._editable(principal, client, body.reading_id, "bp.delete")
        reading.deleted_at, reading.deleted_by = utcnow(), principal.user_id
        await reading.save()
        await audit.record("bp.deleted", principal=principal, patient_id=reading.patient_id, client=client,
                           reading_id=str(reading.id), reason=body.reason, reading=reading.public())
        await self.broadcaster.to_patient(reading.patient_id, "bp:deleted", {"id": str(reading.id),
                                                                             "patient_id": str(reading.patient_id)})
        return reading.public()


async def statistics(pid: PydanticObjectId, window: str, end: datetime | None) -> dict[str, Any]:
    end = (end or utcnow()).astimezone(UTC)
    start = end - WINDOWS[window]
    user = await User.get(pid)
    try:
        tz = ZoneInfo(user.timezone if user else "UTC")
    except (KeyError, ValueError):
        tz = ZoneInfo("UTC")
    docs = await (await BPReading.get_pymongo_collection().aggregate(
        live_between(pid, start, end, 1, STATS_LIMIT))).to_list()
    readings = [Reading(t=d["measured_at"].timestamp(), local_hour=d["measured_at"].astimezone(tz).hour,
                        systolic=d["systolic"], diastolic=d["diastolic"], pulse=d.get("pulse")) for d in docs]
    return {"patient_id": str(pid), "window": window, "start": iso(start), "end": iso(end), "timezone": str(tz),
            **bp_stats(readings)}


def fhir_export(pid: PydanticObjectId, base_url: str) -> AsyncIterator[bytes]:
    """The patient's readings (the oldest EXPORT_LIMIT) as a FHIR R4 Bundle, in pieces as they are read from
    the store; ``base_url`` is the server's FHIR base."""

    async def readings() -> AsyncIterator[dict[str, Any]]:
        async for doc in BPReading.find(live(pid)).sort(+BPReading.measured_at).limit(EXPORT_LIMIT):
            yield doc.public()

    return bp_bundle(base_url, str(pid), readings(), iso(utcnow()) or "")
