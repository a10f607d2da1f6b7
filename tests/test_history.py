"""History over REST: a patient's streams, waveform ranges (downsampled on request, split at gaps),
analyses per second and per minute, and retention (old raw buckets go, analyses stay)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from beanie import PydanticObjectId

from server.core.documents import iso
from server.streaming.documents import AnalysisChunk, WaveBucket
from server.streaming.history import MAX_SPAN_S, BucketBuilder, apply_retention
from tests.helpers import Api, User
from tests.streaming import device_socket, ecg, frame, open_stream, pair

RATE = 250.0


async def _get(api: Api, user: User, path: str, **params: Any) -> tuple[int, Any]:
    return await api.request("GET", path, user, params=params)


async def _streamed(api: Api, seconds: int = 10) -> tuple[User, User, str, np.ndarray]:
    patient, clinician = await api.register("patient"), await api.register("clinician")
    await api.link(patient, clinician)
    dev = await device_socket(api, (await pair(api, patient))["credential"])
    stream_id = await open_stream(dev)
    signal = ecg(seconds)
    start = time.monotonic()
    for seq in range(seconds * 4):  # 0.25 s frames in real time (so device and server clocks agree)
        await asyncio.sleep(max(0.0, start + seq * 0.25 - time.monotonic()))
        await dev.ok("stream:frame", frame(stream_id, seq, signal[seq * 62:(seq + 1) * 62], RATE))
    await dev.ok("stream:close", {"stream_id": stream_id})
    return patient, clinician, stream_id, signal[:seconds * 4 * 62]


async def test_streams_waveforms_and_analyses(api: Api) -> None:
    patient, clinician, stream_id, sent = await _streamed(api, 6)
    base = f"/api/patients/{patient.id}"
    status, listed = await _get(api, clinician, f"{base}/streams")
    assert status == 200 and [s["id"] for s in listed["items"]] == [stream_id]
    stream = listed["items"][0]
    assert stream["closed_at"] and stream["close_reason"] == "device_closed" and stream["counters"]["ok"] == 24
    waveform = f"{base}/streams/{stream_id}/waveform"
    for _ in range(30):  # the writer flushes once a second
        status, body = await _get(api, clinician, waveform)
        if body["runs"]:
            break
        await asyncio.sleep(0.1)
    assert status == 200 and body["downsampled_by"] == 1
    full = np.concatenate([r["samples"] for r in body["runs"]])
    assert np.allclose(full, sent, atol=1e-4)
    t0 = datetime.fromisoformat(body["runs"][0]["t"])
    # Downsampled: block means, the rate says so.
    status, small = await _get(api, clinician, waveform, max_points=100)
    assert status == 200 and small["downsampled_by"] == 15 and small["runs"][0]["rate"] == RATE / 15
    usable = sent.size - sent.size % 15
    assert np.allclose(small["runs"][0]["samples"], sent[:usable].reshape(-1, 15).mean(axis=1), atol=1e-4)
    # A range: from 1 s to 2 s after the first sample.
    status, part = await _get(api, clinician, waveform, **{"from": iso(t0 + timedelta(seconds=1)),
                                                           "to": iso(t0 + timedelta(seconds=2))})
    assert status == 200 and abs(len(part["runs"][0]["samples"]) - 251) <= 1
    assert np.allclose(part["runs"][0]["samples"][:10], sent[250:260], atol=1e-4)
    for bad in ({"from": "yesterday"}, {"max_points": 5}, {"max_points": "many"},
                {"from": iso(t0), "to": iso(t0 - timedelta(seconds=1))},
                {"from": iso(t0 - timedelta(hours=7)), "to": iso(t0)}):
        status, err = await _get(api, clinician, waveform, **bad)
        assert status == 422 and err["error"]["code"] == "invalid_query", bad
    # An empty time is its default, as a form leaves a field nobody filled in (the doses' range reads it so too).
    until = iso(t0 + timedelta(seconds=2))
    status, blank = await _get(api, clinician, waveform, **{"from": "", "to": until})
    _, explicit = await _get(api, clinician, waveform, **{"from": iso(t0 + timedelta(seconds=2, minutes=-1)),
                                                          "to": until})
    assert status == 200 and blank["runs"] == explicit["runs"] and len(blank["runs"][0]["samples"]) > 400
    status, err = await _get(api, clinician, f"{base}/streams/{PydanticObjectId()}/waveform")
    assert status == 404
    status, err = await _get(api, clinician, f"{base}/streams/not-an-id/waveform")
    assert status == 422
    # Another patient's stream is not reachable through this patient.
    other = await api.register("patient")
    status, _ = await _get(api, other, f"/api/patients/{other.id}/streams/{stream_id}/waveform")
    assert status == 404
    # Analyses: one a second, stored in chunks (flushed when the stream closed).
    for _ in range(30):
        status, per_second = await _get(api, clinician, f"{base}/analyses", every="second")
        if len(per_second["items"]) >= 5:
            break
        await asyncio.sleep(0.1)
    items = per_second["items"]
    assert status == 200 and 5 <= len(items) <= 6 and all(i["stream_id"] == stream_id for i in items)
    assert [i["at"] for i in items] == sorted(i["at"] for i in items) and len({i["at"] for i in items}) == len(items)
    assert set(items[0]) >= {"at", "hr", "rmssd", "sdnn", "quality", "beats"}


async def test_a_frame_long_after_its_bucket_began_starts_the_next_one(api: Api) -> None:
    """A bucket spans at most MAX_SPAN_S, gaps included, so that a waveform range finds it by its start alone
    (``api``: the documents initialised)."""
    builder = BucketBuilder(PydanticObjectId(), PydanticObjectId(), RATE, lambda ms: 1_700_000_000 + ms / 1000)
    one_s = np.ones(int(RATE), dtype="<f4")
    assert all(builder.add(seq, seq * 1000.0, one_s, None) is None for seq in range(3))
    later = (MAX_SPAN_S + 30) * 1000.0
    bucket = builder.add(3, later, one_s * 2, {"after_seq": 2, "missing_frames": 90})
    assert bucket is not None and bucket.last_seq == 2 and len(bucket.samples) == 3 * RATE * 4
    assert (bucket.end - bucket.start).total_seconds() == 3.0
    rest = builder.flush()
    assert rest is not None and rest.first_seq == 3 and rest.start.timestamp() == 1_700_000_000 + later / 1000
    assert rest.gaps == [{"after_seq": 2, "missing_frames": 90}]


async def test_analyses_per_minute_aggregates(api: Api) -> None:
    patient = await api.register("patient")
    stream_id = PydanticObjectId()
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)
    chunks = []
    for m in range(2):  # two minutes of per-second analyses: 60 + 60 items, in 10 s chunks
        for c in range(6):
            start = minute + timedelta(minutes=m, seconds=10 * c)
            chunks.append(AnalysisChunk(stream_id=stream_id, patient_id=PydanticObjectId(patient.id), start=start,
                                        items=[{"at": start + timedelta(seconds=s), "hr": 60.0 + m * 20 + s,
                                                "rmssd": 30.0, "sdnn": 40.0, "quality": 0.9, "beats": 1}
                                               for s in range(10)]))
    await AnalysisChunk.insert_many(chunks)
    status, body = await _get(api, patient, f"/api/patients/{patient.id}/analyses",
                              **{"from": iso(minute - timedelta(minutes=1)), "to": iso(minute + timedelta(minutes=5))})
    assert status == 200 and body["every"] == "minute"
    rows = body["items"]
    assert [r["minute"] for r in rows] == [iso(minute), iso(minute + timedelta(minutes=1))]
    assert rows[0]["hr_min"] == 60 and rows[0]["hr_max"] == 69 and rows[0]["hr_mean"] == 64.5
    assert rows[1]["hr_mean"] == 84.5 and rows[1]["seconds"] == 60 and rows[1]["beats"] == 60
    assert rows[0]["rmssd_mean"] == 30 and rows[0]["quality_mean"] == 0.9
    window = {"from": iso(minute), "to": iso(minute + timedelta(seconds=15))}
    status, body = await _get(api, patient, f"/api/patients/{patient.id}/analyses", every="second",
                              stream_id=str(stream_id), **window)
    assert status == 200 and len(body["items"]) == 15
    status, err = await _get(api, patient, f"/api/patients/{patient.id}/analyses", every="hour")
    assert status == 422 and err["error"]["code"] == "invalid_query"


async def test_retention_removes_old_raw_buckets_and_keeps_analyses(api: Api) -> None:
    patient = PydanticObjectId()
    stream = PydanticObjectId()
    now = datetime.now(UTC)
    samples = np.zeros(10, "<f4").tobytes()

    def bucket(age_days: float) -> WaveBucket:
        start = now - timedelta(days=age_days)
        return WaveBucket(stream_id=stream, patient_id=patient, start=start, end=start + timedelta(seconds=10),
                          sampling_rate=1.0, first_seq=0, last_seq=0, samples=samples,
                          runs=[{"t": iso(start), "n": 10, "seq": 0}])

    await WaveBucket.insert_many([bucket(40), bucket(31), bucket(29), bucket(0.01)])
    await AnalysisChunk(stream_id=stream, patient_id=patient, start=now - timedelta(days=40),
                        items=[{"at": now - timedelta(days=40), "hr": 70.0}]).insert()
    assert await apply_retention(30) == 2
    left = await WaveBucket.find(WaveBucket.stream_id == stream).to_list()
    assert len(left) == 2 and all(b.start.replace(tzinfo=UTC) > now - timedelta(days=30) for b in left)
    assert await AnalysisChunk.find(AnalysisChunk.stream_id == stream).count() == 1
    assert await apply_retention(30) == 0
