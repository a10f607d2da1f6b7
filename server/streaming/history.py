"""Waveform history: raw waveforms stored in 10-second buckets (samples packed as float32), per-second
analyses in 10-second chunks, their retention, and reading them back (``waveform``, ``analyses``).

Writes are batched: a bucket is written when its 10 s are complete (or the stream ends), and a
background writer inserts what is ready once a second, so 500 streams cost a handful of
``insert_many`` calls a second rather than thousands of single writes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from beanie import PydanticObjectId

from server.core.background import cancel_and_wait
from server.core.documents import VersionedDocument, aware, iso, utcnow
from server.core.errors import ApiError
from server.streaming.documents import AnalysisChunk, Stream, WaveBucket

log = logging.getLogger(__name__)
BUCKET_S = 10.0
# A bucket spans at most this long, gaps included (a frame starting later begins the next one): a range of the
# waveform is then found by the buckets' start alone, which ``stream_time`` serves.
MAX_SPAN_S = 60.0
BUCKET_SPAN = timedelta(seconds=MAX_SPAN_S + BUCKET_S)  # the longest a bucket spans, its last frame included
MAX_POINTS = 20_000
RETENTION_FIRST_S = 60


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
        """Append a frame (``t0_ms``: device time of its first sample); return a bucket once 10 s are full, or
        once the frame starts more than ``MAX_SPAN_S`` after the bucket's first (the bucket before the frame)."""
        early = self.flush() if self.n and t0_ms - self.runs[0]["t0"] > MAX_SPAN_S * 1000 else None
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
        if early is not None:
            return early  # (a frame filling a bucket alone: that one goes with the next frame)
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
    """The waveform store's background work: batched inserts of finished buckets and analysis chunks
    (once a second), and the hourly retention pass over raw waveforms (``raw_days``; None: none)."""

    def __init__(self, raw_days: int | None = None, max_pending: int = 5_000) -> None:
        self.pending: dict[type[VersionedDocument], list[VersionedDocument]] = {WaveBucket: [], AnalysisChunk: []}
        self.max_pending = max_pending  # per kind: ~100 s of 500 streams, ~50 MB at most
        self.raw_days = raw_days
        self.dropped = 0
        self._tasks: list[asyncio.Task[None]] = []

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

    async def _expire(self, raw_days: int) -> None:
        """Hourly; the first pass a minute after start-up, not in the middle of it."""
        while True:
            await asyncio.sleep(RETENTION_FIRST_S)
            try:
                removed = await apply_retention(raw_days)
                if removed:
                    log.info("retention: removed %d raw waveform buckets older than %d days", removed, raw_days)
            except Exception as exc:
                log.warning("retention pass failed: %s", exc)
            await asyncio.sleep(3600 - RETENTION_FIRST_S)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="history-writer")]
        if self.raw_days is not None:
            self._tasks.append(asyncio.create_task(self._expire(self.raw_days), name="retention"))

    async def stop(self) -> None:
        # bounded: a task cancelled inside a store call must not hold up the shutdown
        await cancel_and_wait(*self._tasks, within=5)
        await self.flush()


async def apply_retention(raw_days: int) -> int:
    """Delete raw waveform buckets older than the retention; analyses are kept."""
    cutoff = utcnow() - timedelta(days=raw_days)
    res = await WaveBucket.get_pymongo_collection().delete_many({"start": {"$lt": cutoff}})
    return res.deleted_count


# --- reading back -------------------------------------------------------------------------------------

async def open_streams(patient_id: PydanticObjectId) -> list[Stream]:
    return await Stream.find(Stream.patient_id == patient_id, Stream.closed_at == None).to_list()  # noqa: E711


async def recent_streams(patient_id: PydanticObjectId, limit: int = 200) -> list[Stream]:
    return await Stream.find(Stream.patient_id == patient_id).sort(-Stream.id).limit(limit).to_list()


async def waveform(stream: Stream, start: datetime, end: datetime, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """Samples of ``stream`` between ``start`` and ``end``, as runs split at gaps; each run downsampled
    by block means so that all of them hold at most ``max_points``."""
    if not start < end or end - start > timedelta(hours=6):
        raise ApiError("invalid_query", "Ask for a range of at most 6 hours with from < to", 422)
    if not 10 <= max_points <= MAX_POINTS:
        raise ApiError("invalid_query", f"max_points must be between 10 and {MAX_POINTS}", 422)
    # On stream_time: the buckets starting in the range or a bucket's length before it (with ``end`` in the
    # filter too the embedded store would read every bucket of the stream).
    since = start - BUCKET_SPAN
    buckets = [b for b in await WaveBucket.find({"stream_id": stream.id, "start": {"$gt": since, "$lt": end}})
               .sort(+WaveBucket.start).to_list() if aware(b.end) > start]
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
    return {"stream": stream.public(), "from": iso(start), "to": iso(end), "downsampled_by": factor, "runs": out}


# An analysed second as history gives it: every field, null when the analysis had none.
SECOND_FIELDS = ("hr", "rmssd", "sdnn", "reason", "ectopic_per_min", "quality", "beats")


async def analyses(patient_id: PydanticObjectId, start: datetime, end: datetime, every: str,
                   stream_id: PydanticObjectId | None = None) -> dict[str, Any]:
    """Per-second analyses in a range (``every="second"``), or per-minute aggregates (``"minute"``)."""
    if every not in ("second", "minute") or not start < end or end - start > timedelta(days=31):
        raise ApiError("invalid_query", "every is second or minute; from < to, at most 31 days apart", 422)
    if every == "second" and end - start > timedelta(hours=6):
        raise ApiError("invalid_query", "per-second history is served for at most 6 hours at a time", 422)
    # The first $match is patient_time's alone (with stream_id in it too, the embedded store would read every
    # chunk of the patient); the stream is picked in the next stage.
    match = {"patient_id": patient_id, "start": {"$gte": start - timedelta(seconds=BUCKET_S * 2), "$lt": end}}
    pipeline: list[dict[str, Any]] = [
        {"$match": match}, *([{"$match": {"stream_id": stream_id}}] if stream_id is not None else []),
        {"$unwind": "$items"},
        {"$match": {"items.at": {"$gte": start, "$lt": end}}},
    ]
    coll = AnalysisChunk.get_pymongo_collection()
    if every == "second":
        pipeline += [{"$sort": {"items.at": 1}}, {"$limit": 25_000},
                     {"$project": {"_id": 0, "stream_id": {"$toString": "$stream_id"}, "item": "$items"}}]
        rows = [{"stream_id": r["stream_id"], **{k: r["item"].get(k) for k in SECOND_FIELDS},
                 "at": iso(r["item"]["at"])} async for r in await coll.aggregate(pipeline)]
        return {"every": "second", "items": rows}
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
    return {"every": "minute", "items": rows}
