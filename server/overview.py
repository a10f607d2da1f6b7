"""The care team's overview, the dashboard's patient list in one request: every patient the caller may
see with their status (open streams, latest heart rate, latest blood pressure and its category, how many
alerts await an acknowledgement). Patients are looked up concurrently; audited once per request."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from aiohttp import web
from beanie import PydanticObjectId
from beanie.operators import In
from pydantic import Field

from server.alerts.documents import Alert
from server.care import audit
from server.care.access import patients_of
from server.care.documents import User
from server.care.wire import UserOut
from server.core.documents import aware, iso, utcnow
from server.core.identity import Principal
from server.core.wire import Items, Time, Wire
from server.streaming.history import AnalysisChunk, Stream
from server.transport.mount import Mount
from server.vitals.documents import BPReading, measured_between

STREAMING_WITHIN = timedelta(seconds=30)  # an open stream with a frame this recent counts as streaming
HR_WITHIN = timedelta(minutes=5)  # an older heart rate is not shown as the latest
# Where the latest reading is looked for first, newest first, each slice only when the ones before had none: a
# patient measuring four times a day has some 120 readings in 30 days, and the overview is asked for every 10 s.
BP_SLICES = (timedelta(days=1), timedelta(days=7), timedelta(days=30))


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


async def _latest_bp(patient_id: PydanticObjectId) -> dict[str, Any] | None:
    """The latest reading not deleted. The embedded store sorts every match of a query, so the recent ones are
    looked up first (on ``patient_measured``: the last day, the week before it, the rest of 30 days), and all of
    the patient's only when none is recent."""
    now, end, reading = utcnow(), None, None
    for span in BP_SLICES:
        start = now - span
        found = await BPReading.find(measured_between(patient_id, start, end)).to_list()
        reading = max((r for r in found if r.deleted_at is None), key=lambda r: r.measured_at, default=None)
        if reading is not None:
            break
        end = start
    if reading is None:
        live = BPReading.find(BPReading.patient_id == patient_id, BPReading.deleted_at == None)  # noqa: E711
        reading = await live.sort(-BPReading.measured_at).first_or_none()
    if reading is None:
        return None
    return {key: value for key, value in reading.public().items()
            if key in ("id", "systolic", "diastolic", "pulse", "category", "measured_at")}


async def patient_status(patient: User) -> dict[str, Any]:
    open_streams = await Stream.find(Stream.patient_id == patient.id, Stream.closed_at == None).to_list()  # noqa: E711
    live = [s for s in open_streams if _streaming(s)]
    return {"patient": patient.public(), "streaming": bool(live),
            "streams": [{"id": str(s.id), "kind": s.kind, "sampling_rate": s.sampling_rate} for s in live],
            "hr": await _latest_hr(patient.id), "bp": await _latest_bp(patient.id),  # type: ignore[arg-type]
            "open_alerts": await Alert.find(Alert.open_of(patient.id)).count()}


async def overview(principal: Principal) -> list[dict[str, Any]]:
    ids = await patients_of(principal)
    patients = await User.find(In(User.id, ids)).sort(+User.name).to_list()
    return list(await asyncio.gather(*(patient_status(p) for p in patients)))


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
