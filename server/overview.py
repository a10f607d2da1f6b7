"""The care team's overview, the dashboard's patient list in one request: every patient the caller may
see with their status (open streams, latest heart rate, latest blood pressure and its category, how many
alerts await an acknowledgement). Each kind of status is asked for many patients at once (``overview``); audited
once per request."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import timedelta
from typing import Any, TypeVar

from aiohttp import web
from beanie import Document, PydanticObjectId
from pydantic import Field

from server.alerts.documents import Alert
from server.care import audit
from server.care.access import patients_of
from server.care.documents import User
from server.care.wire import UserOut
from server.core.documents import aware, by_ids, in_chunks, iso, utcnow
from server.core.identity import Principal
from server.core.wire import Items, Time, Wire
from server.streaming.history import AnalysisChunk, Stream
from server.transport.mount import Mount
from server.vitals.documents import BPReading

STREAMING_WITHIN = timedelta(seconds=30)  # an open stream with a frame this recent counts as streaming
HR_WITHIN = timedelta(minutes=5)  # an older heart rate is not shown as the latest
BP_RECENT = timedelta(days=30)
Doc = TypeVar("Doc", bound=Document)


def _streaming(stream: Stream) -> bool:
    seen = stream.last_frame_at or stream.opened_at
    return utcnow() - aware(seen) < STREAMING_WITHIN


async def _latest_hr(patient_id: PydanticObjectId) -> dict[str, Any] | None:
    since = utcnow() - HR_WITHIN
    chunks = AnalysisChunk.find(AnalysisChunk.patient_id == patient_id, AnalysisChunk.start >= since)
    # The latest second decides: with no pulse then, no number (the reason instead), never an older rate.
    chunk = await chunks.sort(-AnalysisChunk.start).first_or_none()
    if chunk is None or not chunk.items:
        return None
    item = chunk.items[-1]
    value = None if item.get("hr") is None else round(float(item["hr"]), 1)
    return {"value": value, "reason": item.get("reason"), "at": iso(item["at"]), "quality": item.get("quality")}


def _brief(reading: BPReading) -> dict[str, Any]:
    return {key: value for key, value in reading.public().items()
            if key in ("id", "systolic", "diastolic", "pulse", "category", "measured_at")}


async def _latest_bp_ever(patient_id: PydanticObjectId) -> dict[str, Any] | None:
    """The latest reading not deleted of a patient with none in ``BP_RECENT``: all of the patient's are read."""
    live = BPReading.find(BPReading.patient_id == patient_id, BPReading.deleted_at == None)  # noqa: E711
    reading = await live.sort(-BPReading.measured_at).first_or_none()
    return None if reading is None else _brief(reading)


async def _each(doc: type[Doc], queries: list[dict[str, Any]]) -> dict[PydanticObjectId, list[Doc]]:
    """The matches of every query (sent at once), by patient."""
    found: dict[PydanticObjectId, list[Doc]] = defaultdict(list)
    for docs in await asyncio.gather(*(doc.find(q).to_list() for q in queries)):
        for d in docs:
            found[d.patient_id].append(d)  # type: ignore[attr-defined]
    return found


async def overview(principal: Principal) -> list[dict[str, Any]]:
    """Each kind of status asked for ``IN_CHUNK`` patients at a time (their open streams, those closed within
    ``HR_WITHIN``, their readings of ``BP_RECENT``, their open alerts), the latest heart rate of those who streamed
    in the last ``HR_WITHIN`` alone, and all of a patient's readings only for one with none recent. A dashboard
    asks every 10 s: with each patient's status asked alone, 200 patients were some 1,000 store commands a time."""
    ids = await patients_of(principal)
    chunks, now = list(in_chunks(ids)), utcnow()
    users, open_streams, closed, readings, alerts = await asyncio.gather(
        asyncio.gather(*(User.find(q).to_list() for q in by_ids(ids))),
        _each(Stream, [{"patient_id": {"$in": c}, "closed_at": None} for c in chunks]),
        _each(Stream, [{"patient_id": {"$in": c}, "closed_at": {"$gte": now - HR_WITHIN}} for c in chunks]),
        _each(BPReading, [{"patient_id": {"$in": c}, "measured_at": {"$gte": now - BP_RECENT}} for c in chunks]),
        _each(Alert, [{"patient_id": {"$in": c}, "status": "open"} for c in chunks]))
    patients = sorted((u for found in users for u in found), key=lambda u: u.name)

    async def status(patient: User) -> dict[str, Any]:
        pid = PydanticObjectId(patient.id)
        live = [s for s in open_streams[pid] if _streaming(s)]
        recent = max((r for r in readings[pid] if r.deleted_at is None), key=lambda r: r.measured_at, default=None)
        return {"patient": patient.public(), "streaming": bool(live),
                "streams": [{"id": str(s.id), "kind": s.kind, "sampling_rate": s.sampling_rate} for s in live],
                "hr": await _latest_hr(pid) if open_streams[pid] or closed[pid] else None,
                "bp": _brief(recent) if recent is not None else await _latest_bp_ever(pid),
                "open_alerts": len(alerts[pid])}

    return list(await asyncio.gather(*(status(p) for p in patients)))


class LatestHr(Wire):
    value: float | None = Field(description="Beats per minute; null when the latest second had no pulse")
    reason: str | None
    at: Time
    quality: float | None


class LatestBp(Wire):
    id: str
    systolic: float
    diastolic: float
    pulse: float | None
    category: str
    measured_at: Time


class StreamBrief(Wire):
    id: str
    kind: str
    sampling_rate: float


class PatientStatus(Wire):
    patient: UserOut
    streaming: bool = Field(description="An open stream sent a frame in the last 30 s")
    streams: list[StreamBrief]
    hr: LatestHr | None = Field(description="The latest analysed heart rate of the last 5 minutes")
    bp: LatestBp | None = Field(description="The latest blood pressure reading")
    open_alerts: int = Field(description="Alerts awaiting an acknowledgement")


class Overview(Items[PatientStatus]):
    at: Time


def mount(m: Mount) -> None:
    async def rest_overview(request: web.Request) -> web.Response:
        """Every patient the caller may see with their live status, in one request (the dashboard's list).

        Patients by name. Audited as one `patients.overview` entry."""
        principal = await m.rest.principal(request)
        items = await overview(principal)
        await audit.record("patients.overview", principal=principal, client=m.rest.client(request),
                           patients=[i["patient"]["id"] for i in items])
        return web.json_response({"items": items, "at": iso(utcnow())})

    m.route("GET", "/api/overview", rest_overview, Overview)
