"""Streaming a signal (a real recording of ``ml.validation``, or one made for a test) to a running server as
a device would, and judging the live rates that come back: shared by tests/test_accuracy.py (short
excerpts) and bench/accuracy.py (whole recordings)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from ml.signal_stream import StreamAnalyser
from ml.validation.metrics import judge
from ml.validation.recordings import Recording
from tests.helpers import Api, Sock, User
from tests.streaming import device_socket, frame, pair

FRAME_S = 1.0
AHEAD_S = 20


async def stream_signal(api: Api, patient: User, watcher: Sock, kind: str, fs: float, x: np.ndarray,
                        units: str = "mV", frame_s: float = FRAME_S, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Pair a device for ``patient``, open a stream at ``fs``, send ``x`` in binary float32 frames of
    ``frame_s`` (the device clock in step), each acked, at most ``AHEAD_S`` seconds of signal ahead of
    the analyses received, close it, and return the ``live:analysis`` messages ``watcher`` (subscribed to
    the patient) received for it: one per whole second."""
    dev = await device_socket(api, (await pair(api, patient, kind))["credential"])
    stream_id = (await dev.ok("stream:open", {"kind": kind, "sampling_rate": fs, "units": units}))["stream_id"]
    n = round(frame_s * fs)
    frames = x.size // n

    async def until(count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            analyses = [a for a in watcher.events.of("live:analysis") if a["stream_id"] == stream_id]
            if len(analyses) >= count or time.monotonic() > deadline:
                return analyses
            await asyncio.sleep(0.05)

    for seq in range(frames):
        # Faster than real time, but never far ahead of the analyses received: a watcher's queue holds
        # about a minute of them (a burst beyond it would drop the oldest).
        await until(int(seq * n / fs) - AHEAD_S)
        await dev.ok("stream:frame", frame(stream_id, seq, x[seq * n:(seq + 1) * n], fs))
    expected = int(frames * n / fs)
    analyses = await until(expected)
    await dev.ok("stream:close", {"stream_id": stream_id})
    assert len(analyses) == expected, (len(analyses), expected)
    return analyses


async def stream_recording(api: Api, recording: Recording, start_s: float = 0.0,
                           end_s: float | None = None) -> list[dict[str, Any]]:
    """``stream_signal`` of ``[start_s, end_s)`` of ``recording`` for a new patient, watched by the patient."""
    patient = await api.register("patient")
    watcher = await api.socket(patient)
    await watcher.ok("live:subscribe", {"patient_id": patient.id})
    fs = recording.sampling_rate
    x = recording.signal[round(start_s * fs):None if end_s is None else round(end_s * fs)]
    return await stream_signal(api, patient, watcher, recording.kind, fs, x, recording.units)


async def judge_live(api: Api, recording: Recording, start_s: float = 0.0,
                     end_s: float | None = None) -> dict[str, Any]:
    """``ml.validation.metrics.judge`` of the live analyses of ``recording`` streamed through ``api``."""
    analyses = await stream_recording(api, recording, start_s, end_s)
    lag = StreamAnalyser(recording.kind, recording.sampling_rate).lag_s  # type: ignore[arg-type]
    return judge(recording, analyses, offset_s=start_s, lag_s=lag)
