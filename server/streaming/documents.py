"""The streaming concern's stored documents (stream records, raw waveform buckets, analysis chunks)
and the request models of its Socket.IO events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from beanie import Document, PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field
from pymongo import ASCENDING, DESCENDING, IndexModel

from server.core.documents import VersionedDocument, iso, utcnow

DEFAULT_DISPLAY_RATE = 125.0


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
        indexes = [IndexModel([("patient_id", ASCENDING), ("_id", DESCENDING)], name="patient_recent"),
                   IndexModel([("patient_id", ASCENDING), ("closed_at", ASCENDING)], name="patient_open")]

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


DOCUMENTS: list[type[Document]] = [Stream, WaveBucket, AnalysisChunk]


class StreamRef(BaseModel):
    """``stream:close``."""

    model_config = ConfigDict(extra="forbid")
    stream_id: str = Field(max_length=64)


class SubscribeIn(BaseModel):
    """``live:subscribe``: watch a patient's streams, decimated to ``display_rate`` samples a second."""

    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(max_length=64)
    display_rate: float = Field(DEFAULT_DISPLAY_RATE, ge=10, le=1000)


class UnsubscribeIn(BaseModel):
    """``live:unsubscribe``."""

    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(max_length=64)
