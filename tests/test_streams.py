"""Device streams over real sockets: opening, frame validation (binary and JSON paths), sequencing
counters in the stream record, the device clock, analyses, vital events and thresholds, stalls."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from beanie import PydanticObjectId

from server.infra.store import COMMANDS
from server.streaming.documents import Stream, WaveBucket
from tests.helpers import Api, User, scrape, scrape_until
from tests.streaming import device_socket, ecg, frame, open_stream, pair

RATE = 250.0


async def _until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def _stream_doc(api: Api, user: User, patient: User, stream_id: str) -> dict[str, Any]:
    status, body = await api.request("GET", f"/api/patients/{patient.id}/streams", user)
    assert status == 200, body
    return next(s for s in body["items"] if s["id"] == stream_id)


async def _waveform(api: Api, user: User, patient: User, stream_id: str, **query: Any) -> dict[str, Any]:
    status, body = await api.request("GET", f"/api/patients/{patient.id}/streams/{stream_id}/waveform", user,
                                     params=query)
    assert status == 200, body
    return body


async def test_open_refuses_wrong_kind_bad_rate_and_users(api: Api) -> None:
    patient = await api.register("patient")
    dev = await device_socket(api, (await pair(api, patient, "ecg"))["credential"])
    reply = await dev.call("stream:open", {"kind": "ppg", "sampling_rate": 100})
    assert reply["ok"] is False and reply["error"]["code"] == "wrong_kind"
    for rate in (24, 1001, "x"):
        reply = await dev.call("stream:open", {"kind": "ecg", "sampling_rate": rate})
        assert reply["error"]["code"] == "invalid_payload", rate
    cuff = await device_socket(api, (await pair(api, patient, "bp_cuff"))["credential"])
    assert (await cuff.call("stream:open", {"kind": "ecg", "sampling_rate": 250}))["error"]["code"] == "wrong_kind"
    me = await api.socket(patient)
    assert (await me.call("stream:open", {"kind": "ecg", "sampling_rate": 250}))["error"]["code"] == "forbidden"
    stream_id = await open_stream(dev)
    reply = await me.call("stream:frame", frame(stream_id, 0, np.zeros(10), RATE))
    assert reply["error"]["code"] == "forbidden"
    # A device cannot send on another device's stream, nor watch.
    other = await device_socket(api, (await pair(api, patient, "ecg"))["credential"])
    reply = await other.call("stream:frame", frame(stream_id, 0, np.zeros(10), RATE))
    assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
    assert (await dev.call("live:subscribe", {"patient_id": patient.id}))["error"]["code"] == "forbidden"
    reply = await dev.call("stream:frame", frame("6b0692aa6601621ba6a0d449", 0, np.zeros(10), RATE))
    assert reply["error"]["code"] == "unknown_stream"
    # Reopening a channel replaces its stream (the device restarted); channels per device are bounded.
    again = await open_stream(dev)
    reply = await dev.call("stream:frame", frame(stream_id, 0, np.zeros(10), RATE))
    assert reply["error"]["code"] == "unknown_stream"
    assert (await _stream_doc(api, patient, patient, stream_id))["close_reason"] == "replaced"
    for channel in ("II", "III", "V1"):
        await dev.ok("stream:open", {"kind": "ecg", "sampling_rate": 250, "channel": channel})
    reply = await dev.call("stream:open", {"kind": "ecg", "sampling_rate": 250, "channel": "V2"})
    assert reply["error"]["code"] == "too_many_streams" and again in reply["error"]["details"]["open_streams"]


async def test_malformed_frames_get_the_uniform_error_and_are_not_stored(api: Api) -> None:
    patient = await api.register("patient")
    dev = await device_socket(api, (await pair(api, patient))["credential"])
    stream_id = await open_stream(dev)
    signal = ecg(2)
    good_binary = frame(stream_id, 0, signal[:250], RATE)
    good_json = frame(stream_id, 1, signal[250:500], RATE, binary=False)
    base = {"stream_id": stream_id, "t0": 1000.0}
    malformed = [
        ({**base, "seq": 2, "samples": b""}, "empty_frame"),
        ({**base, "seq": 2, "samples": []}, "empty_frame"),
        ({**base, "seq": 2, "samples": b"\x00" * 7, "dtype": "float32"}, "bad_samples"),
        ({**base, "seq": 2, "samples": np.zeros(501, "<f4").tobytes()}, "frame_too_long"),
        ({**base, "seq": 2, "samples": [0.0] * 501}, "frame_too_long"),
        ({**base, "seq": 2, "samples": np.array([1, np.nan], "<f4").tobytes()}, "non_finite_samples"),
        ({**base, "seq": 2, "samples": np.array([1, 2], "<i2").tobytes(), "dtype": "float64"}, "invalid_payload"),
        ({**base, "seq": 2, "samples": [1.0, 2.0], "dtype": "int16"}, "bad_samples"),
        ({**base, "seq": 2, "samples": "AAAA"}, "invalid_payload"),
        ({**base, "seq": 2, "samples": [1, "2"]}, "invalid_payload"),
        ({**base, "seq": -1, "samples": [1.0]}, "invalid_payload"),
        ({"stream_id": stream_id, "seq": 2, "samples": [1.0]}, "invalid_payload"),
        ({**base, "seq": 2, "samples": [1.0], "extra": 1}, "invalid_payload"),
    ]
    assert (await dev.ok("stream:frame", good_binary))["status"] == "ok"
    for body, code in malformed:
        reply = await dev.call("stream:frame", body)
        assert reply["ok"] is False and reply["error"]["code"] == code, (code, reply)
        assert set(reply["error"]) == {"code", "message", "details"}
    assert (await dev.ok("stream:frame", good_json))["status"] == "ok"  # seq 1: the malformed ones took no seq
    closed = await dev.ok("stream:close", {"stream_id": stream_id})
    assert closed["counters"]["ok"] == 2 and closed["counters"]["malformed"] == 7  # the 6 others fail validation
    body = await _until(lambda: _stored(api, patient, stream_id, 500))
    samples = np.concatenate([np.array(r["samples"]) for r in body["runs"]])
    # Binary float32 and the JSON list carry the same numbers; nothing of the malformed frames was kept.
    assert np.allclose(samples, signal[:500], atol=1e-5)
    assert len(body["runs"]) == 1 and body["downsampled_by"] == 1


async def _stored(api: Api, patient: User, stream_id: str, n: int) -> dict[str, Any] | None:
    body = await _waveform(api, patient, patient, stream_id, max_points=20000)
    total = sum(len(r["samples"]) for r in body["runs"])
    return body if total >= n else None


async def test_gaps_duplicates_and_late_frames_are_counted_shown_and_stored(api: Api) -> None:
    patient = await api.register("patient")
    caregiver = await api.register("caregiver")
    await api.link(patient, caregiver)
    watcher = await api.socket(caregiver)
    await watcher.ok("live:subscribe", {"patient_id": patient.id})
    dev = await device_socket(api, (await pair(api, patient))["credential"])
    stream_id = await open_stream(dev)
    signal = ecg(8)
    chunk = 125  # 0.5 s frames

    async def send(seq: int) -> str:
        reply = await dev.ok("stream:frame", frame(stream_id, seq, signal[seq * chunk:(seq + 1) * chunk], RATE))
        return reply["status"]

    statuses = [await send(s) for s in (0, 1, 2, 2, 5, 3, 6, 1)]
    assert statuses == ["ok", "ok", "ok", "duplicate", "gap", "late", "ok", "duplicate"]
    gap = (await watcher.events.wait("live:gap"))[0]
    assert gap["stream_id"] == stream_id and gap["after_seq"] == 2 and gap["missing_frames"] == 2
    assert gap["missing_s"] == 1.0  # two 0.5 s frames, by the device clock
    frames = await watcher.events.wait("live:frame", 5)
    assert [f["seq"] for f in frames] == [0, 1, 2, 5, 6]  # dropped frames never reach watchers
    expected = {"ok": 4, "gap": 1, "duplicate": 2, "late": 1, "missing_frames": 2}
    # The REST view of a live stream shows its current counters; the stored record follows within a second.
    doc = await _stream_doc(api, caregiver, patient, stream_id)
    assert doc["counters"] == expected and doc["closed_at"] is None

    async def checkpointed() -> bool:
        stored = await Stream.get(stream_id)
        return stored is not None and stored.counters == expected and stored.last_seq == 6
    await _until(checkpointed, 5)
    await dev.ok("stream:close", {"stream_id": stream_id})
    assert (await watcher.events.wait("live:stream", 2))[-1]["change"] == "closed"
    body = await _until(lambda: _stored(api, patient, stream_id, 5 * chunk))
    assert [r["seq"] for r in body["runs"]] == [0, 5]  # a new run after the gap
    bucket = await WaveBucket.find_one(WaveBucket.stream_id == PydanticObjectId(stream_id))
    assert bucket is not None and bucket.gaps and bucket.gaps[0]["missing_frames"] == 2


async def test_device_clock_is_mapped_to_server_time_and_drift_recorded(api: Api) -> None:
    patient = await api.register("patient")
    dev = await device_socket(api, (await pair(api, patient))["credential"])
    stream_id = await open_stream(dev)
    signal = ecg(3)
    n = 25  # 0.1 s frames, sent in real time by a device whose clock runs 5 % slow
    start = time.monotonic()
    for seq in range(25):
        await asyncio.sleep(start + (seq + 1) * 0.1 - time.monotonic())  # on a fixed schedule: no accumulating lag
        t0 = 7_000.0 + seq * 100.0 * 0.95
        await dev.ok("stream:frame", {"stream_id": stream_id, "seq": seq, "t0": t0, "dtype": "float32",
                                      "samples": signal[seq * n:(seq + 1) * n].astype("<f4").tobytes()})
    closed = await dev.ok("stream:close", {"stream_id": stream_id})
    assert closed["counters"]["ok"] == 25
    doc = await _stream_doc(api, patient, patient, stream_id)
    assert 35_000 < doc["drift_ppm"] < 65_000, doc  # 5 % = 50,000 ppm (with a loaded machine's jitter)
    body = await _until(lambda: _stored(api, patient, stream_id, 25 * n))
    start = datetime.fromisoformat(body["runs"][0]["t"])
    # Device time 7 s since boot became wall-clock time of about 2.5 s ago, not 1970.
    assert abs((datetime.now(UTC) - start).total_seconds() - 2.6) < 1.5


async def _stream_signal(dev: Any, stream_id: str, signal: np.ndarray, seconds_per_frame: float = 1.0,
                         first_seq: int = 0, pause: float = 0.0) -> None:
    n = int(RATE * seconds_per_frame)
    for i in range(signal.size // n):
        await dev.ok("stream:frame", frame(stream_id, first_seq + i, signal[i * n:(i + 1) * n], RATE,
                                           first_seq=0))
        if pause:
            await asyncio.sleep(pause)


async def test_analysis_each_second_and_thresholds_set_by_a_clinician_only(api: Api) -> None:
    patient = await api.register("patient")
    clinician = await api.register("clinician")
    caregiver = await api.register("caregiver")
    await api.link(patient, clinician)
    await api.link(patient, caregiver)
    doctor, carer = await api.socket(clinician), await api.socket(caregiver)
    dev = await device_socket(api, (await pair(api, patient))["credential"])
    stream_id = await open_stream(dev)
    await doctor.ok("live:subscribe", {"patient_id": patient.id})
    # Only a linked clinician tunes the thresholds, and only to sane values.
    reply = await carer.call("vitals:set-thresholds", {"patient_id": patient.id, "tachycardia_hr": 90})
    assert reply["error"]["code"] == "forbidden"
    for bad in ({"tachycardia_hr": 20}, {"stalled_s": 0}, {"tachycardia_hr": "fast"}, {"nonsense": 1}):
        reply = await doctor.call("vitals:set-thresholds", {"patient_id": patient.id, **bad})
        assert reply["error"]["code"] == "invalid_payload", bad
    reply = await doctor.call("vitals:set-thresholds", {"patient_id": patient.id, "tachycardia_hr": 160,
                                                         "tachycardia_critical_hr": 130})  # each within its limits
    assert reply["error"]["code"] == "invalid_thresholds"
    data = await doctor.ok("vitals:set-thresholds", {"patient_id": patient.id, "tachycardia_hr": 90,
                                                       "tachycardia_s": 5})
    assert data["tachycardia_hr"] == 90 and data["tachycardia_s"] == 5 and data["bradycardia_hr"] == 45
    got = await carer.ok("vitals:get-thresholds", {"patient_id": patient.id})
    assert got["tachycardia_hr"] == 90
    # 100/min for 20 s: above the clinician's 90, below the default 120.
    before = await scrape(api.http, api.base_url)
    await _stream_signal(dev, stream_id, ecg(20, hr=100.0, seed=5))
    analyses = await doctor.events.wait("live:analysis", 15, timeout=20)
    a = analyses[-1]
    assert set(a) >= {"stream_id", "hr", "hrv", "quality", "beats", "window", "at", "lag_ms"}
    # /metrics: each batch of results observed its lag; the open stream is sampled each second.
    after = await scrape_until(api.http, api.base_url, lambda m: m.value("healthmate_streams_open") == 1)
    lags = after.value("healthmate_analysis_lag_seconds_count") - before.value("healthmate_analysis_lag_seconds_count")
    assert lags >= 1
    assert set(a["hrv"]) == {"rmssd", "sdnn"} and abs(a["hr"] - 100) < 5 and a["quality"] > 0.5
    assert [x["t"] for x in analyses[:5]] == [1.0, 2.0, 3.0, 4.0, 5.0]
    event = next(e for e in await carer.events.wait("vitals:event", timeout=20) if e["type"] == "tachycardia")
    assert event["phase"] == "started" and event["stream_id"] == stream_id and event["signal"] == "ecg"
    status, listed = await api.request("GET", f"/api/patients/{patient.id}/vital-events", clinician)
    assert status == 200 and event["id"] in [e["id"] for e in listed["items"]]
    # It became an alert for the care team, through the notification path.
    note = next(n for n in await carer.events.wait("notification:new") if n["kind"] == "alert")
    assert note["patient_id"] == patient.id and note["data"]["vital_event_id"] == event["id"]
    assert note["urgency"] in ("high", "critical") and note["title"] == "Fast heart rate"
    status, _ = await api.request("GET", f"/api/patients/{patient.id}/vital-events",
                                  await api.register("clinician"))
    assert status == 403


async def test_stalled_stream_event_after_5_s_without_frames(api: Api) -> None:
    patient = await api.register("patient")
    me = await api.socket(patient)
    dev = await device_socket(api, (await pair(api, patient))["credential"])
    stream_id = await open_stream(dev)
    signal = ecg(4)
    await _stream_signal(dev, stream_id, signal[:500], seconds_per_frame=0.5, pause=0.4)
    silent_from = time.monotonic()
    events = await me.events.wait("vitals:event", timeout=10)
    stalled = events[0]
    assert stalled["type"] == "stalled" and stalled["phase"] == "started" and stalled["stream_id"] == stream_id
    assert 4.5 <= time.monotonic() - silent_from <= 8.0
    assert stalled["detail"]["seconds_since_last_frame"] >= 5
    await _stream_signal(dev, stream_id, signal[500:1000], seconds_per_frame=0.5, first_seq=4)
    ended = await me.events.wait("vitals:event", 2, timeout=10)
    assert ended[1]["type"] == "stalled" and ended[1]["phase"] == "ended"
    status, listed = await api.request("GET", f"/api/patients/{patient.id}/vital-events", patient)
    assert status == 200 and [e["phase"] for e in listed["items"] if e["type"] == "stalled"] == ["ended", "started"]


async def test_revoking_the_device_ends_its_stream(api: Api) -> None:
    patient = await api.register("patient")
    me = await api.socket(patient)
    await me.ok("live:subscribe", {"patient_id": patient.id})
    paired = await pair(api, patient)
    dev = await device_socket(api, paired["credential"])
    stream_id = await open_stream(dev)
    await dev.ok("stream:frame", frame(stream_id, 0, ecg(1)[:125], RATE))
    status, _ = await api.request("DELETE", f"/api/patients/{patient.id}/devices/{paired['device']['id']}", patient)
    assert status == 200
    closed = [m for m in await me.events.wait("live:stream", 2) if m["change"] == "closed"]
    assert closed[0]["stream"]["id"] == stream_id and closed[0]["stream"]["close_reason"] == "device_revoked"
    doc = await _stream_doc(api, patient, patient, stream_id)
    assert doc["closed_at"] and doc["counters"]["ok"] == 1


async def test_analysis_runs_in_a_worker_process_restarted_if_it_dies(api: Api) -> None:
    import os
    import signal

    from server.app import SERVER

    patient = await api.register("patient")
    me = await api.socket(patient)
    await me.ok("live:subscribe", {"patient_id": patient.id})
    dev = await device_socket(api, (await pair(api, patient))["credential"])
    stream_id = await open_stream(dev)
    signal_ = ecg(8)
    await _stream_signal(dev, stream_id, signal_[:750])
    await me.events.wait("live:analysis", 3, timeout=20)
    pool = api.app[SERVER].streams.pool  # type: ignore[index]
    worker = pool.workers[0]
    pid = worker.proc.pid
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    await _until(lambda: _restarted(worker, pid), 15)
    n = len(me.events.of("live:analysis"))
    await _stream_signal(dev, stream_id, signal_[750:], first_seq=3)
    # The stream was re-opened in the new worker: its analysis restarts, as after a gap.
    later = await me.events.wait("live:analysis", n + 2, timeout=20)
    assert later[-1]["stream_id"] == stream_id


async def _restarted(worker: Any, old_pid: int) -> bool:
    return worker.proc is not None and worker.proc.pid != old_pid and worker.proc.is_alive()


async def test_devices_opening_streams_together_share_one_store_insert(api: Api) -> None:
    """At 08:00 (or after a restart) many devices open their streams at once: their records share the group
    commit's insert (one store command and disk sync, not one each), and each is stored."""
    devices = []
    for _ in range(6):
        patient = await api.register("patient")
        devices.append(await device_socket(api, (await pair(api, patient))["credential"]))
    before = COMMANDS.by_name["insert"]
    ids = await asyncio.gather(*(open_stream(dev) for dev in devices))
    # One each would be six inserts of streams alone; shared, one or two here (the streams', their access
    # records'), and three once on a loaded machine (an open arriving after the first batch had left).
    assert COMMANDS.by_name["insert"] - before < len(devices), COMMANDS.by_name["insert"] - before
    assert await Stream.find({"_id": {"$in": [PydanticObjectId(i) for i in ids]}}).count() == len(devices)
