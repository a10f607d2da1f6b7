"""Device streams (whichever transport brings them): open, frames, close; each frame validated, sequenced, clocked,
stored in buckets, sent to live watchers and to the analysis workers; the analyses and events
that come back are stored, pushed live, and turned into vital events.

A device that reconnects keeps sending on its stream id: the sequence numbers say what was
missed, and the gap is recorded and shown to watchers."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from beanie import PydanticObjectId

from devices.clock import DeviceClock
from devices.frames import Frame, FrameError, StreamOpen, decode_samples, max_samples
from devices.stream_sequencer import StreamSequencer
from server.core.background import cancel_and_wait
from server.core.documents import iso, utcnow
from server.core.errors import ApiError, forbidden
from server.core.identity import as_object_id
from server.core.ports import VitalEvents
from server.infra.group_commit import COMMITS
from server.infra.metrics import ANALYSIS_BACKLOG, ANALYSIS_LAG, STREAMS_OPEN
from server.streaming.analysis_pool import AnalysisPool, Result
from server.streaming.documents import AnalysisChunk, Stream
from server.streaming.history import BucketBuilder, HistoryWriter
from server.streaming.live import LiveHub
from server.transport.events import EventContext

log = logging.getLogger(__name__)
STALL_CHECK_S = 1.0
IDLE_CLOSE_S = 600.0
MAX_STREAMS_PER_DEVICE = 4  # a stream silent this long is closed (its device may reopen another)


@dataclass(eq=False)
class LiveStream:
    doc: Stream
    sequencer: StreamSequencer
    clock: DeviceClock
    bucket: BucketBuilder
    last_frame: float = field(default_factory=time.monotonic)
    first_t0: float | None = None  # device ms of the first sample analysed here (analysis ``t`` counts from it)
    next_t0: float | None = None  # device ms the next frame should start at, to size a gap in samples
    dirty: bool = False  # counters changed since the last checkpoint
    analyses: list[dict[str, Any]] = field(default_factory=list)
    lag_ms: float | None = None

    @property
    def id(self) -> str:
        return str(self.doc.id)


class StreamService:
    def __init__(self, live: LiveHub, vitals: VitalEvents, writer: HistoryWriter, analysis_workers: int) -> None:
        self.live = live
        self.vitals = vitals
        self.writer = writer
        self.pool = AnalysisPool(analysis_workers, self._on_results)
        self.streams: dict[str, LiveStream] = {}
        self.frames_in = 0
        self._watchdog: asyncio.Task[None] | None = None
        # Results are handled one batch after another, in the order the pool gave them: a task per batch
        # interleaved at each publish and watchers could see second 2 before second 1.
        self._results: asyncio.Queue[list[Result]] = asyncio.Queue()
        self._results_task: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.pool.start()
        self._watchdog = asyncio.create_task(self._watch(), name="stream-watchdog")
        self._results_task = asyncio.create_task(self._handle_results_forever(), name="stream-results")

    async def stop(self) -> None:
        await cancel_and_wait(self._watchdog, self._results_task)
        for stream in list(self.streams.values()):
            await self._close(stream, "server_shutdown", announce=False)
        await self.pool.stop()

    # --- a device's stream ---------------------------------------------------------------------------

    async def open(self, ctx: EventContext, body: StreamOpen) -> dict[str, Any]:
        device_kind = ctx.principal.name.split(":", 1)[0]
        if device_kind != body.kind:
            raise ApiError("wrong_kind", f"This device is paired as {device_kind}, not {body.kind}", 422)
        # A device opening a channel again has restarted: its old stream on that channel ends. Other
        # channels are bounded, so no device can hold more than a few analysers.
        mine = [s for s in self.streams.values() if str(s.doc.device_id) == ctx.principal.sid]
        for old in [s for s in mine if s.doc.channel == body.channel]:
            await self._close(old, "replaced")
            mine.remove(old)
        if len(mine) >= MAX_STREAMS_PER_DEVICE:
            raise ApiError("too_many_streams", f"A device streams at most {MAX_STREAMS_PER_DEVICE} channels at once; "
                           "close one first", 409, {"open_streams": [s.id for s in mine]})
        await self.vitals.load_thresholds(ctx.principal.user_id)
        doc = Stream(patient_id=ctx.principal.user_id, device_id=PydanticObjectId(ctx.principal.sid), kind=body.kind,
                     sampling_rate=body.sampling_rate, units=body.units, channel=body.channel)
        await COMMITS.insert_documents([doc])  # devices opening together (08:00, a restart) share a commit
        stream = self._track(doc)
        meta = doc.public()
        await self.live.publish(str(doc.patient_id), "live:stream", {"change": "opened", "stream": meta})
        return {"stream_id": stream.id, "max_samples": max_samples(body.sampling_rate)}

    def _track(self, doc: Stream, takeover: bool = False) -> LiveStream:
        clock = DeviceClock()
        stream = LiveStream(doc=doc, sequencer=StreamSequencer(), clock=clock,
                            bucket=BucketBuilder(doc.id, doc.patient_id, doc.sampling_rate,  # type: ignore[arg-type]
                                                 clock.to_server))
        if doc.last_seq is not None or takeover:
            # Taken over from a process that died: what it had not checkpointed (its unflushed bucket, up to
            # a bucket's length of signal) is lost, so the gap is counted from the last stored position.
            stream.sequencer.resume(doc.last_seq + 1 if doc.last_seq is not None else 0)
        self.streams[stream.id] = stream
        self.pool.open(stream.id, doc.kind, doc.sampling_rate, self.vitals.thresholds_for(doc.patient_id))
        return stream

    async def _owned(self, ctx: EventContext, stream_id: str) -> LiveStream:
        stream = self.streams.get(stream_id)
        if stream is None:
            # Not in this process: a device that reconnected here after a restart or a failover.
            doc = await Stream.get(as_object_id(stream_id, "stream_id"))
            if doc is None or doc.closed_at is not None or str(doc.device_id) != ctx.principal.sid:
                raise ApiError("unknown_stream", "No open stream with that id for this device; open one", 404)
            await self.vitals.load_thresholds(doc.patient_id)
            stream = self._track(doc, takeover=True)
        if str(stream.doc.device_id) != ctx.principal.sid:
            raise forbidden("That stream belongs to another device")
        return stream

    async def close(self, ctx: EventContext, stream_id: str) -> dict[str, Any]:
        stream = await self._owned(ctx, stream_id)
        await self._close(stream, "device_closed")
        return {"stream_id": stream.id, "counters": stream.doc.counters}

    def current(self, doc: Stream) -> Stream:
        """A stream live in this process with its current counters, not the last checkpoint's."""
        stream = self.streams.get(str(doc.id))
        return stream.doc if stream is not None else doc

    @staticmethod
    def _count(stream: LiveStream, name: str, by: int = 1) -> None:
        stream.doc.counters[name] = stream.doc.counters.get(name, 0) + by

    async def frame(self, ctx: EventContext, frame: Frame) -> dict[str, Any]:
        stream = await self._owned(ctx, frame.stream_id)
        rate = stream.doc.sampling_rate
        try:
            samples = decode_samples(frame, rate)
        except FrameError as err:
            self._count(stream, "malformed")  # kept with the next checkpoint: a refusal itself writes nothing
            raise ApiError(err.code, err.message, 422, err.details) from None
        verdict = stream.sequencer.accept(frame.seq)
        status = verdict.kind
        self._count(stream, status)
        if status in ("duplicate", "late"):
            stream.dirty = True
            return {"seq": frame.seq, "status": status}
        now = time.time()
        stream.last_frame = time.monotonic()
        duration_ms = samples.size * 1000.0 / rate
        # A frame leaves the device after its last sample: that is the instant its arrival bounds.
        stream.clock.observe(frame.t0 + duration_ms, now)
        pid = str(stream.doc.patient_id)
        gap = None
        if stream.first_t0 is None:
            stream.first_t0 = frame.t0
        if status == "gap":  # also the first frame after a takeover, sized by the frame count then
            # The device clock says how much signal is missing; the frame count is the fallback.
            by_clock = round((frame.t0 - (stream.next_t0 or frame.t0)) * rate / 1000.0)
            missing_samples = by_clock if by_clock > 0 else verdict.missing * samples.size
            gap = {"after_seq": frame.seq - verdict.missing - 1, "missing_frames": verdict.missing,
                   "missing_s": round(missing_samples / rate, 3),
                   "at": iso(datetime.fromtimestamp(stream.clock.to_server(frame.t0), UTC))}
            self._count(stream, "missing_frames", verdict.missing)
            stream.dirty = True
            self.pool.gap(stream.id, int(missing_samples))
            await self.live.publish(pid, "live:gap", {"stream_id": stream.id, **gap})
        stream.next_t0 = frame.t0 + duration_ms
        bucket = stream.bucket.add(frame.seq, frame.t0, samples, gap)
        if bucket is not None:
            self.writer.add(bucket)
            self._checkpoint(stream)
        if not self.pool.push(stream.id, samples, now):
            self._count(stream, "analysis_dropped")
        self.frames_in += 1
        meta = {"stream_id": stream.id, "kind": stream.doc.kind, "seq": frame.seq, "t0": frame.t0,
                "server_ts": round(now * 1000, 1)}
        await self.live.publish_frame(pid, meta, samples, rate)
        return {"seq": frame.seq, "status": status}

    def _checkpoint(self, stream: LiveStream) -> None:
        """Record where the stream is, so a failover can resume its sequence (batched with the bucket write)."""
        doc = stream.doc
        doc.last_seq = stream.sequencer.last_seq
        doc.last_frame_at = datetime.fromtimestamp(time.time() - (time.monotonic() - stream.last_frame), UTC)
        doc.drift_ppm = stream.clock.drift_ppm
        if stream.clock.offset_s is not None:
            doc.clock_offset_ms = round(stream.clock.offset_s * 1000.0, 1)
        stream.dirty = False
        asyncio.get_running_loop().create_task(self._save(doc))

    @staticmethod
    async def _save(doc: Stream) -> None:
        # A snapshot, written without touching the live document: Beanie's ``set`` would assign the snapshot
        # back to it when the write completes, losing what was counted meanwhile.
        snapshot = {"last_seq": doc.last_seq, "last_frame_at": doc.last_frame_at, "drift_ppm": doc.drift_ppm,
                    "clock_offset_ms": doc.clock_offset_ms, "counters": dict(doc.counters)}
        try:
            await Stream.get_pymongo_collection().update_one({"_id": doc.id}, {"$set": snapshot})
        except Exception as exc:
            log.warning("stream %s checkpoint failed: %s", doc.id, exc)

    async def _close(self, stream: LiveStream, reason: str, announce: bool = True) -> None:
        self.streams.pop(stream.id, None)
        self.pool.close(stream.id)
        bucket = stream.bucket.flush()
        if bucket is not None:
            self.writer.add(bucket)
        self._flush_analyses(stream)
        doc = stream.doc
        changes = {"closed_at": utcnow(), "close_reason": reason, "last_seq": stream.sequencer.last_seq,
                   "counters": dict(doc.counters), "drift_ppm": stream.clock.drift_ppm}
        # Idle here may mean the device reconnected to another process, which took the stream over and
        # moved it on: then it is not ours to close.
        query = {"_id": doc.id, "last_seq": doc.last_seq} if reason == "idle" else {"_id": doc.id}
        try:
            if (await Stream.get_pymongo_collection().update_one(query, {"$set": changes})).matched_count:
                for key, value in changes.items():
                    setattr(doc, key, value)
        except Exception as exc:
            log.warning("closing stream %s: %s", doc.id, exc)
        if announce:
            await self.live.publish(str(doc.patient_id), "live:stream", {"change": "closed", "stream": doc.public()})

    # --- analysis results ---------------------------------------------------------------------------

    def _on_results(self, results: list[Result]) -> None:
        self._results.put_nowait(results)  # no more than the pool's bounded inboxes let through

    async def _handle_results_forever(self) -> None:
        while True:
            results = await self._results.get()
            try:
                await self._handle_results(results)
            except Exception:
                log.exception("handling analysis results failed")

    async def _handle_results(self, results: list[Result]) -> None:
        now = time.time()
        for stream_id, analyses, events, received_at in results:
            stream = self.streams.get(stream_id)
            if stream is None:
                continue
            pid = str(stream.doc.patient_id)
            if received_at:
                stream.lag_ms = (now - received_at) * 1000
                ANALYSIS_LAG.observe(now - received_at)
            for a in analyses:
                # Server time of the end of the analysed second, through the device clock mapping.
                at_s = stream.clock.to_server((stream.first_t0 or 0.0) + a["t"] * 1000.0) \
                    if stream.clock.offset_s is not None else now
                hrv = a.get("hrv") or {}
                # No pulse, no number: hr and HRV are null then, with the reason (no_signal / poor_signal).
                item = {"at": datetime.fromtimestamp(at_s, UTC), "hr": a.get("hr"), "rmssd": hrv.get("rmssd"),
                        "sdnn": hrv.get("sdnn"), "reason": a.get("reason"), "ectopic_per_min": a.get("ectopic_per_min"),
                        "quality": a.get("quality"), "beats": a.get("beats")}
                stream.analyses.append(item)
                await self.live.publish(pid, "live:analysis", {
                    "stream_id": stream_id, "kind": stream.doc.kind, "t": a.get("t"), "hr": a.get("hr"),
                    "hrv": {"rmssd": hrv.get("rmssd"), "sdnn": hrv.get("sdnn")}, "reason": a.get("reason"),
                    "ectopic_per_min": a.get("ectopic_per_min"), "quality": a.get("quality"),
                    "beats": a.get("beats"), "window": a.get("window"), "at": iso(item["at"]),
                    "lag_ms": round(stream.lag_ms or 0.0, 1)})
            if len(stream.analyses) >= 10:
                self._flush_analyses(stream)
            for event in events:
                if event.get("type") == "analysis_error":
                    log.warning("analysis of stream %s failed: %s", stream_id, event.get("detail"))
                    continue
                await self.vitals.record(stream.doc.patient_id, stream.doc.id, stream.doc.kind, event)

    def _flush_analyses(self, stream: LiveStream) -> None:
        if stream.analyses:
            self.writer.add(AnalysisChunk(stream_id=stream.doc.id, patient_id=stream.doc.patient_id,  # type: ignore[arg-type]
                                          start=stream.analyses[0]["at"], items=stream.analyses))
            stream.analyses = []

    # --- watchdog -----------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(STALL_CHECK_S)
            try:
                await self._watch_once()
            except Exception:
                log.exception("stream watchdog pass failed")

    async def _watch_once(self) -> None:
        now = time.monotonic()
        STREAMS_OPEN.set(len(self.streams))
        ANALYSIS_BACKLOG.set(self.pool.backlog)
        for stream in list(self.streams.values()):
            silent = now - stream.last_frame
            if silent >= IDLE_CLOSE_S:
                await self._close(stream, "idle")
                continue
            if silent >= 1.0:
                self.pool.stalled(stream.id, silent)
            if stream.dirty:  # gaps, duplicates, malformed frames: visible in the stream record within a second
                self._checkpoint(stream)

    async def device_revoked(self, msg: dict[str, Any]) -> None:
        """A revoked device's streams end with it (it was disconnected at once, in every process)."""
        for stream in list(self.streams.values()):
            if str(stream.doc.device_id) == msg["device_id"]:
                await self._close(stream, "device_revoked")

    def apply_thresholds(self, patient_id: PydanticObjectId, thresholds: Any) -> None:
        for stream in self.streams.values():
            if stream.doc.patient_id == patient_id:
                self.pool.set_thresholds(stream.id, thresholds)

    def stats(self) -> dict[str, Any]:
        lags = [s.lag_ms for s in self.streams.values() if s.lag_ms is not None]
        return {"open_streams": len(self.streams), "frames_in": self.frames_in, "analysis_backlog": self.pool.backlog,
                "analysis_dropped_ops": self.pool.dropped_ops, "max_lag_ms": max(lags) if lags else None,
                "history_dropped": self.writer.dropped}
