"""The device frame protocol: opening a stream and the frames that carry its samples.

A stream is opened with ``{kind, sampling_rate, units, channel}``. A frame is
``{stream_id, seq, t0, samples, dtype?}``: ``t0`` is the device clock (ms) at the first sample;
``samples`` is either raw little-endian bytes (``dtype`` ``float32`` or ``int16``; the efficient
path, sent as a Socket.IO binary attachment) or a JSON list of numbers.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

MIN_RATE, MAX_RATE = 25.0, 1000.0
MAX_FRAME_S = 2.0
FLOAT32_MAX = float(np.finfo(np.float32).max)
DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "int16": np.dtype("<i2")}


class FrameError(Exception):
    """A malformed frame: it is refused with this code and not stored."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}


class StreamOpen(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["ecg", "ppg"]
    sampling_rate: float = Field(ge=MIN_RATE, le=MAX_RATE)
    units: str = Field("mV", min_length=1, max_length=16, pattern=r"^[A-Za-z0-9µ/%\[\]._-]+$")
    channel: str = Field("lead-I", min_length=1, max_length=32, pattern=r"^[A-Za-z0-9 ._-]+$")

    @field_validator("sampling_rate")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stream_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0, le=2**53)
    t0: float = Field(ge=0, allow_inf_nan=False)
    dtype: Literal["float32", "int16"] | None = None
    samples: bytes | list[float]

    @field_validator("samples", mode="before")
    @classmethod
    def _kind(cls, v: Any) -> Any:
        if isinstance(v, (bytes, bytearray, memoryview)):
            return bytes(v)
        if isinstance(v, list):
            if len(v) > int(MAX_RATE * MAX_FRAME_S):
                raise ValueError(f"at most {int(MAX_RATE * MAX_FRAME_S)} samples")
            if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
                raise ValueError("samples must be numbers")
            return v
        raise ValueError("samples must be binary (float32/int16, little-endian) or a list of numbers")


def max_samples(sampling_rate: float) -> int:
    return int(MAX_FRAME_S * sampling_rate)


def decode_samples(frame: Frame, sampling_rate: float) -> np.ndarray:
    """The frame's samples as float64; ``FrameError`` if they are empty, too many or not finite."""
    if isinstance(frame.samples, bytes):
        dtype = DTYPES[frame.dtype or "float32"]
        if len(frame.samples) % dtype.itemsize:
            raise FrameError("bad_samples", f"{len(frame.samples)} bytes is not a whole number of {dtype.name} samples",
                             {"bytes": len(frame.samples), "dtype": frame.dtype or "float32"})
        samples = np.frombuffer(frame.samples, dtype=dtype).astype(np.float64)
    else:
        if frame.dtype is not None:
            raise FrameError("bad_samples", "dtype goes with binary samples only, not a JSON list")
        samples = np.asarray(frame.samples, dtype=np.float64)
    limit = max_samples(sampling_rate)
    if samples.size == 0:
        raise FrameError("empty_frame", "A frame carries at least one sample")
    if samples.size > limit:
        raise FrameError("frame_too_long", f"A frame carries at most {MAX_FRAME_S:g} s of samples ({limit})",
                         {"samples": int(samples.size), "max_samples": limit})
    # Stored and sent on as float32: a number beyond its range would become infinite there.
    ok = np.isfinite(samples) & (np.abs(samples) <= FLOAT32_MAX)
    if not ok.all():
        raise FrameError("non_finite_samples", "Samples must be finite numbers within the float32 range",
                         {"first_bad_index": int(np.argmin(ok))})
    return samples
