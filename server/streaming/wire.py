"""What the streaming concern sends: streams, the live messages to watchers, and the history, as replies
and pushed events."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from server.core.wire import Items, Time, Wire


class StreamOut(Wire):
    id: str
    patient_id: str
    device_id: str
    kind: Literal["ecg", "ppg"]
    sampling_rate: float
    units: str
    channel: str
    opened_at: Time
    closed_at: Time | None
    close_reason: str | None
    last_seq: int | None
    last_frame_at: Time | None
    counters: dict[str, int] = Field(description="frames, gaps, duplicates, late, malformed, ...")
    drift_ppm: float | None
    clock_offset_ms: float | None


class Opened(Wire):
    stream_id: str
    max_samples: int = Field(description="The most samples a frame of this stream may carry")


class FrameAck(Wire):
    seq: int
    status: Literal["ok", "gap", "duplicate", "late"]


class Closed(Wire):
    stream_id: str
    counters: dict[str, int]


class Subscribed(Wire):
    patient_id: str
    display_rate: float
    streams: list[StreamOut] = Field(description="The patient's open streams")


class Unsubscribed(Wire):
    unsubscribed: bool


class LiveFrame(Wire):
    """Samples of one frame, decimated to the watcher's display rate (float32 little-endian, binary)."""

    stream_id: str
    kind: Literal["ecg", "ppg"]
    seq: int
    t0: float = Field(description="The device's clock at the first sample (ms)")
    server_ts: float = Field(description="The server's clock when the frame arrived (ms)")
    rate: float = Field(description="Samples a second after decimation")
    samples: bytes
    dropped: int = Field(description="Frames dropped for this watcher since the last one (a slow connection)")


class Hrv(Wire):
    rmssd: float | None
    sdnn: float | None


class LiveAnalysis(Wire):
    """One analysed second. No pulse, no number: hr and HRV are null then, with the reason."""

    stream_id: str
    kind: Literal["ecg", "ppg"]
    t: float | None
    hr: float | None
    hrv: Hrv
    reason: str | None = Field(examples=["no_signal", "poor_signal"])
    ectopic_per_min: float | None
    quality: float | None
    beats: int | None
    window: float | None
    at: Time
    lag_ms: float


class LiveGap(Wire):
    stream_id: str
    after_seq: int
    missing_frames: int
    missing_s: float
    at: Time


class LiveStream(Wire):
    change: Literal["opened", "closed"]
    stream: StreamOut


class LiveEnded(Wire):
    patient_id: str
    reason: Literal["link_revoked"]


class Run(Wire):
    t: Time
    seq: int
    rate: float
    samples: list[float]


class Waveform(Wire):
    stream: StreamOut
    from_: Time = Field(alias="from")
    to: Time
    downsampled_by: int
    runs: list[Run]


class SecondRow(Wire):
    stream_id: str
    at: Time
    hr: float | None
    rmssd: float | None
    sdnn: float | None
    reason: str | None
    ectopic_per_min: float | None
    quality: float | None
    beats: int | None


class MinuteRow(Wire):
    minute: Time
    hr_mean: float | None
    hr_min: float | None
    hr_max: float | None
    rmssd_mean: float | None
    sdnn_mean: float | None
    ectopic_per_min_mean: float | None
    quality_mean: float | None
    beats: int | None
    seconds: int


class Analyses(Items[SecondRow | MinuteRow]):
    every: Literal["second", "minute"]
