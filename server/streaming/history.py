"""Stored streams: the stream records, raw waveforms in 10-second buckets (samples packed as
float32), per-second analyses in 10-second chunks, retention, and the history REST routes.

Writes are batched: a bucket is written when its 10 s are complete (or the stream ends), and a
background writer inserts what is ready once a second, so 500 streams cost a handful of
``insert_many`` calls a second rather than thousands of single writes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from aiohttp import web
from beanie import PydanticObjectId
from pydantic import Field
from pymongo import ASCENDING, DESCENDING, IndexModel

from server.care.access import require_patient
from server.core.documents import VersionedDocument, aware, iso, utcnow
from server.core.errors import ApiError, not_found
from server.core.identity import as_object_id
from server.transport.http import client_of, require_principal, services

log = logging.getLogger(__name__)
BUCKET_S = 10.0
MAX_POINTS = 20_000


class Stream(VersionedDocument):
    patient_id: PydanticObjectId
    device_id: PydanticObjectId
    kind: str
    sampling_rate: float
    units: str
    channel: str
    opened_at: datetime = Field(default_factory=utcnow)
    closed_at: datetime | None = None
    close_reason: str | None = None
    last_seq: int | None = None
    last_frame_at: datetime | None = None
    counters: dict[str, int] = Field(default_factory=dict)
    drift_ppm: float | None = None
    clock_offset_ms: float | None = None

    class Settings:
        name = "streams"
        indexes = [IndexModel([("patient_id", ASCENDING), ("_id", DESCENDING)], name="patient_recent")]

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "patient_id": str(self.patient_id), "device_id": str(self.device_id),
                "kind": self.kind, "sampling_rate": self.sampling_rate, "units": self.units, "channel": self.channel,
                "opened_at": iso(self.opened_at), "closed_at": iso(self.closed_at), "close_reason": self.close_reason,
                "last_seq": self.last_seq, "last_frame_at": iso(self.last_frame_at), "counters": dict(self.counters),
                "drift_ppm": self.drift_ppm, "clock_offset_ms": self.clock_offset_ms}


class WaveBucket(VersionedDocument):
    """Up to 10 s of one stream: contiguous runs of samples with their server start times."""

    stream_id: PydanticObjectId
    patient_id: PydanticObjectId
    start: datetime
    end: datetime
    sampling_rate: float
    first_seq: int
    last_seq: int
    samples: bytes  # little-endian float32, the runs concatenated
    runs: list[dict[str, Any]]  # [{"t": ISO start, "n": samples, "seq": first seq}] a new run after each gap
    gaps: list[dict[str, Any]] = Field(default_factory=list)

    class Settings:
        name = "wave_buckets"
        indexes = [IndexModel([("stream_id", ASCENDING), ("start", ASCENDING)], name="stream_time"),
                   IndexModel([("start", ASCENDING)], name="age")]


class AnalysisChunk(VersionedDocument):
    """Per-second analyses of one stream over about 10 s (a time-series bucket)."""

    stream_id: PydanticObjectId
    patient_id: PydanticObjectId
    start: datetime
    items: list[dict[str, Any]]  # {"at", "hr", "rmssd", "sdnn", "reason", "ectopic_per_min", "quality", "beats"}

    class Settings:
        name = "analyses"
        indexes = [IndexModel([("patient_id", ASCENDING), ("start", ASCENDING)], name="patient_time"),
                   IndexModel([("stream_id", ASCENDING), ("start", ASCENDING)], name="stream_time")]


class BucketBuilder:
    """Collects one stream's frames into 10-second buckets. Frames carry device time; it is mapped to
    server time (``to_server``: device ms -> epoch seconds) when the bucket is written, so a bucket gets
    the best clock estimate available then rather than the rougher one of its first frame."""

    def __init__(self, stream_id: PydanticObjectId, patient_id: PydanticObjectId, rate: float,
                 to_server: Callable[[float], float]) -> None:
        self.stream_id, self.patient_id, self.rate, self.to_server = stream_id, patient_id, rate, to_server
        self._reset()

    def _reset(self) -> None:
        self.parts: list[np.ndarray] = []
        self.runs: list[dict[str, Any]] = []  # {"t0": device ms, "n", "seq"} until written
        self.gaps: list[dict[str, Any]] = []
        self.n = 0
        self.first_seq: int | None = None
        self.last_seq = 0
        self.end_ms = 0.0  # device time just after the last sample
        self._contiguous = False

    def add(self, seq: int, t0_ms: float, samples: np.ndarray, gap: dict[str, Any] | None) -> WaveBucket | None:
        """Append a frame (``t0_ms``: device time of its first sample); return a bucket once 10 s are full."""
        if gap is not None:
            self.gaps.append(gap)
            self._contiguous = False
        if self.first_seq is None:
            self.first_seq = seq
        if not self._contiguous:
            self.runs.append({"t0": t0_ms, "n": 0, "seq": seq})
            self._contiguous = True
        self.parts.append(samples.astype("<f4", copy=False))
        self.runs[-1]["n"] += samples.size
        self.n += samples.size
        self.last_seq = seq
        self.end_ms = t0_ms + samples.size * 1000.0 / self.rate
        return self.flush() if self.n >= BUCKET_S * self.rate else None

    def _at(self, device_ms: float) -> datetime:
        return datetime.fromtimestamp(self.to_server(device_ms), UTC)

    def flush(self) -> WaveBucket | None:
        if not self.n or self.first_seq is None:
            return None
        runs = [{"t": iso(self._at(r["t0"])), "n": r["n"], "seq": r["seq"]} for r in self.runs]
        bucket = WaveBucket(stream_id=self.stream_id, patient_id=self.patient_id, start=self._at(self.runs[0]["t0"]),
                            end=self._at(self.end_ms), sampling_rate=self.rate, first_seq=self.first_seq,
                            last_seq=self.last_seq, samples=np.concatenate(self.parts).tobytes(), runs=runs,
                            gaps=self.gaps)
        self._reset()
        return bucket


class HistoryWriter:
    """Background batched inserts of finished buckets and analysis chunks."""

    def __init__(self, max_pending: int = 5_000) -> None:  # per kind: ~100 s of 500 streams, ~50 MB at most
        self.pending: dict[type[VersionedDocument], list[VersionedDocument]] = {WaveBucket: [], AnalysisChunk: []}
        self.max_pending = max_pending
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None

    def add(self, doc: VersionedDocument) -> None:
        queue = self.pending[type(doc)]
        if len(queue) >= self.max_pending:  # the store is down for long: bounded, and said so
            queue.pop(0)
            self.dropped += 1
            log.error("history writer full; dropped the oldest %s (%d dropped so far)", type(doc).__name__,
                      self.dropped)
        queue.append(doc)

    async def flush(self) -> None:
        for cls, docs in self.pending.items():
            if not docs:
                continue
            batch, self.pending[cls] = docs, []
            try:
                await cls.insert_many(batch)
            except Exception as exc:
                log.warning("history write of %d %s failed (%s); will retry", len(batch), cls.__name__, exc)
                self.pending[cls] = batch + self.pending[cls]

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="history-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


async def apply_retention(raw_days: int) -> int:
    """Delete raw waveform buckets older than the retention; analyses are kept."""
    cutoff = utcnow() - timedelta(days=raw_days)
    res = await WaveBucket.get_pymongo_collection().delete_many({"start": {"$lt": cutoff}})
    return res.deleted_count


# --- REST ---------------------------------------------------------------------------------------------

def _time_param(request: web.Request, name: str, default: datetime) -> datetime:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return aware(datetime.fromisoformat(raw.replace("Z", "+00:00")))
    except ValueError:
        raise ApiError("invalid_query", f"{name} must be an ISO 8601 time", 422, {"field": name}) from None


async def list_streams(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    pid = await require_patient(principal, request.match_info["patient_id"], "streams.list", client_of(request))
    streams = await Stream.find(Stream.patient_id == pid).sort(-Stream.id).limit(200).to_list()
    # A stream live in this process shows its current counters, not the last checkpoint's.
    live = services(request).streams.streams
    return web.json_response({"items": [(live[str(s.id)].doc if str(s.id) in live else s).public() for s in streams]})


async def _patient_stream(request: web.Request, action: str) -> Stream:
    principal = await require_principal(request)
    pid = await require_patient(principal, request.match_info["patient_id"], action, client_of(request),
                                stream_id=request.match_info["stream_id"])
    stream = await Stream.get(as_object_id(request.match_info["stream_id"], "stream_id"))
    if stream is None or stream.patient_id != pid:
        raise not_found("stream")
    return stream


async def get_waveform(request: web.Request) -> web.Response:
    """Samples between ``from`` and ``to`` (default: the last minute), as runs split at gaps;
    ``max_points`` downsamples each run by block means."""
    stream = await _patient_stream(request, "waveform.read")
    now = utcnow()
    end = _time_param(request, "to", now)
    start = _time_param(request, "from", end - timedelta(minutes=1))
    if not start < end or end - start > timedelta(hours=6):
        raise ApiError("invalid_query", "Ask for a range of at most 6 hours with from < to", 422)
    try:
        max_points = int(request.query.get("max_points", MAX_POINTS))
    except ValueError:
        raise ApiError("invalid_query", "max_points must be a whole number", 422) from None
    if not 10 <= max_points <= MAX_POINTS:
        raise ApiError("invalid_query", f"max_points must be between 10 and {MAX_POINTS}", 422)
    buckets = await WaveBucket.find(WaveBucket.stream_id == stream.id, WaveBucket.end > start,
                                    WaveBucket.start < end).sort(+WaveBucket.start).to_list()
    runs = []
    for b in buckets:
        data = np.frombuffer(b.samples, dtype="<f4")
        offset = 0
        for run in b.runs:
            t0 = aware(datetime.fromisoformat(run["t"].replace("Z", "+00:00")))
            chunk = data[offset:offset + run["n"]]
            offset += run["n"]
            first = max(0, int(np.ceil((start - t0).total_seconds() * b.sampling_rate)))
            last = min(chunk.size, int(np.floor((end - t0).total_seconds() * b.sampling_rate)) + 1)
            if first >= last:
                continue
            runs.append({"t": iso(t0 + timedelta(seconds=first / b.sampling_rate)), "seq": run["seq"],
                         "rate": b.sampling_rate, "samples": chunk[first:last]})
    total = sum(r["samples"].size for r in runs)
    factor = max(1, int(np.ceil(total / max_points)))
    out = []
    for r in runs:
        s = r["samples"]
        if factor > 1:
            usable = s.size - s.size % factor
            s = s[:usable].reshape(-1, factor).mean(axis=1) if usable else s[:0]
        out.append({"t": r["t"], "seq": r["seq"], "rate": r["rate"] / factor,
                    "samples": [round(float(v), 5) for v in s]})
    return web.json_response({"stream": stream.public(), "from": iso(start), "to": iso(end),
                              "downsampled_by": factor, "runs": out})


async def get_analyses(request: web.Request) -> web.Response:
    """Per-second analyses in a range, or per-minute aggregates (``?every=minute``)."""
    principal = await require_principal(request)
    pid = await require_patient(principal, request.match_info["patient_id"], "analyses.read", client_of(request))
    now = utcnow()
    end = _time_param(request, "to", now)
    start = _time_param(request, "from", end - timedelta(hours=1))
    every = request.query.get("every", "minute")
    if every not in ("second", "minute") or not start < end or end - start > timedelta(days=31):
        raise ApiError("invalid_query", "every is second or minute; from < to, at most 31 days apart", 422)
    if every == "second" and end - start > timedelta(hours=6):
        raise ApiError("invalid_query", "per-second history is served for at most 6 hours at a time", 422)
    match: dict[str, Any] = {"patient_id": pid, "start": {"$gte": start - timedelta(seconds=BUCKET_S * 2), "$lt": end}}
    stream_id = request.query.get("stream_id")
    if stream_id:
        match["stream_id"] = as_object_id(stream_id, "stream_id")
    pipeline: list[dict[str, Any]] = [
        {"$match": match}, {"$unwind": "$items"},
        {"$match": {"items.at": {"$gte": start, "$lt": end}}},
    ]
    coll = AnalysisChunk.get_pymongo_collection()
    if every == "second":
        pipeline += [{"$sort": {"items.at": 1}}, {"$limit": 25_000},
                     {"$project": {"_id": 0, "stream_id": {"$toString": "$stream_id"}, "item": "$items"}}]
        rows = [{"stream_id": r["stream_id"], **r["item"], "at": iso(r["item"]["at"])}
                async for r in await coll.aggregate(pipeline)]
        return web.json_response({"every": "second", "items": rows})
    pipeline += [
        {"$group": {"_id": {"$dateTrunc": {"date": "$items.at", "unit": "minute"}},
                    "hr_mean": {"$avg": "$items.hr"}, "hr_min": {"$min": "$items.hr"}, "hr_max": {"$max": "$items.hr"},
                    "rmssd_mean": {"$avg": "$items.rmssd"}, "sdnn_mean": {"$avg": "$items.sdnn"},
                    "ectopic_per_min_mean": {"$avg": "$items.ectopic_per_min"},
                    "quality_mean": {"$avg": "$items.quality"}, "beats": {"$sum": "$items.beats"},
                    "seconds": {"$sum": 1}}},
        {"$sort": {"_id": 1}},
    ]
    rows = []
    async for r in await coll.aggregate(pipeline):
        minute = r.pop("_id")
        rows.append({"minute": iso(minute), **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}})
    return web.json_response({"every": "minute", "items": rows})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/patients/{patient_id}/streams", list_streams)
    app.router.add_get("/api/patients/{patient_id}/streams/{stream_id}/waveform", get_waveform)
    app.router.add_get("/api/patients/{patient_id}/analyses", get_analyses)
