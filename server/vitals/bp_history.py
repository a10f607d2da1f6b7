"""What the models read from the store, in one place: a patient's blood-pressure readings (soft-deleted
ones left out), daily heart-rate / RMSSD summaries of their streamed analyses, and daily medication
adherence, as the plain arrays of ``ml.bp_cohort.PatientSeries``.

Heart rate comes from the streaming concern's per-second analyses, whose collection app.py hands over
(``BPHistory(analyses)``). Adherence comes from the medication scheduler's ``dose_events`` collection
(confirmed vs missed doses), read by name so this module does not depend on the scheduler's code; without
either the series has none of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from beanie import PydanticObjectId

from ml.bp_cohort import PatientSeries
from server.care.documents import User
from server.core.documents import aware
from server.vitals.documents import BPReading, live_between

FEATURE_DAYS = 28  # how far back a forecast looks
MAX_READINGS = 5_000  # per forecast window: a reading every 8 minutes for 28 days
DOSES = "dose_events"


def _ts(values: list[datetime]) -> np.ndarray:
    return np.asarray([aware(v).timestamp() for v in values], dtype=float)


async def utc_offset_s(patient_id: PydanticObjectId, at: datetime) -> float:
    """The patient's UTC offset at ``at`` (their profile's time zone), for morning/evening features."""
    user = await User.get(patient_id)
    try:
        offset = at.astimezone(ZoneInfo(user.timezone if user else "UTC")).utcoffset()
    except (KeyError, ValueError):
        offset = None
    return offset.total_seconds() if offset else 0.0


async def readings(patient_id: PydanticObjectId, start: datetime, end: datetime,
                   limit: int = MAX_READINGS) -> dict[str, np.ndarray]:
    """The patient's readings measured in ``[start, end)``, oldest first (at most the last ``limit``)."""
    rows = (await (await BPReading.get_pymongo_collection().aggregate(
        live_between(patient_id, start, end, -1, limit))).to_list())[::-1]
    return {"times": _ts([r["measured_at"] for r in rows]),
            "systolic": np.asarray([r["systolic"] for r in rows], float),
            "diastolic": np.asarray([r["diastolic"] for r in rows], float),
            "pulse": np.asarray([np.nan if r.get("pulse") is None else r["pulse"] for r in rows], float)}


async def daily_adherence(patient_id: PydanticObjectId, start: datetime,
                          end: datetime) -> tuple[np.ndarray, np.ndarray] | None:
    """Per UTC day with a decided dose: (day start, confirmed / (confirmed + missed))."""
    # patient_due's filter alone first (with state in it, the embedded store reads every dose of the patient).
    pipeline = [{"$match": {"patient_id": patient_id, "due_at": {"$gte": start, "$lt": end}}},
                {"$match": {"state": {"$in": ["confirmed", "missed"]}}},
                {"$group": {"_id": {"$dateTrunc": {"date": "$due_at", "unit": "day"}},
                            "taken": {"$avg": {"$cond": [{"$eq": ["$state", "confirmed"]}, 1, 0]}}}},
                {"$sort": {"_id": 1}}]
    doses = BPReading.get_pymongo_collection().database[DOSES]
    rows = await (await doses.aggregate(pipeline)).to_list()
    if not rows:
        return None
    return _ts([r["_id"] for r in rows]), np.asarray([r["taken"] for r in rows], float)


class BPHistory:
    """A patient's series as the models see it. ``analyses`` gives the streaming concern's per-second
    analyses collection (documents with ``patient_id``, ``start`` and ``items`` of ``hr`` / ``rmssd``)."""

    def __init__(self, analyses: Callable[[], Any]) -> None:
        self.analyses = analyses

    async def daily_hr(self, patient_id: PydanticObjectId, start: datetime,
                       end: datetime) -> tuple[np.ndarray, ...] | None:
        """Per UTC day: (day start, mean heart rate, mean RMSSD) of the streamed per-second analyses."""
        pipeline = [{"$match": {"patient_id": patient_id, "start": {"$gte": start, "$lt": end}}},
                    {"$unwind": "$items"},
                    {"$group": {"_id": {"$dateTrunc": {"date": "$start", "unit": "day"}},
                                "hr": {"$avg": "$items.hr"}, "rmssd": {"$avg": "$items.rmssd"}}},
                    {"$sort": {"_id": 1}}]
        rows = await (await self.analyses().aggregate(pipeline)).to_list()
        rows = [r for r in rows if r.get("hr") is not None]
        if not rows:
            return None
        return (_ts([r["_id"] for r in rows]), np.asarray([r["hr"] for r in rows], float),
                np.asarray([np.nan if r.get("rmssd") is None else r["rmssd"] for r in rows], float))

    async def patient_series(self, patient_id: PydanticObjectId, as_of: datetime,
                             days: int = FEATURE_DAYS) -> PatientSeries:
        """Everything a forecast at ``as_of`` looks at: the last ``days`` days."""
        start = as_of - timedelta(days=days)
        return await self._series(patient_id, start, as_of)

    async def _series(self, patient_id: PydanticObjectId, start: datetime, end: datetime,
                      limit: int = MAX_READINGS) -> PatientSeries:
        r = await readings(patient_id, start, end, limit)
        series = PatientSeries(str(patient_id), r["times"], r["systolic"], r["diastolic"], r["pulse"],
                               utc_offset_s=await utc_offset_s(patient_id, end))
        hr = await self.daily_hr(patient_id, start, end)
        if hr is not None:
            series.day_times, series.hr, series.rmssd = hr
        adherence = await daily_adherence(patient_id, start, end)
        if adherence is not None:
            series.adherence_days, series.adherence = adherence
        return series

    async def store_cohort(self, min_readings: int = 20, end: datetime | None = None,
                           max_days: int = 730) -> AsyncIterator[PatientSeries]:
        """Every patient with at least ``min_readings`` readings, over the last ``max_days`` days: what
        ``healthmate train bp --from-store`` trains on."""
        end = end or datetime.now().astimezone()
        start = end - timedelta(days=max_days)
        pipeline = [{"$match": {"deleted_at": None, "measured_at": {"$gte": start, "$lt": end}}},
                    {"$group": {"_id": "$patient_id", "n": {"$sum": 1}}}, {"$match": {"n": {"$gte": min_readings}}}]
        rows = await (await BPReading.get_pymongo_collection().aggregate(pipeline)).to_list()
        for row in rows:
            series = await self._series(row["_id"], start, end, limit=50_000)
            if series.times.size >= min_readings:
                yield series
