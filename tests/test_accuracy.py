"""Live heart rate on real recordings (ml/validation/data), streamed through the device frame protocol to
a running server and judged window by window against each recording's reference: the goals of issue 16
on a short excerpt of each (the whole recordings: ``python -m bench accuracy``). Then no number without a
pulse (flat line, clipping, pure noise, disconnected lead: live, in the history, as a vital event) and
frequent ectopy above a clinician's threshold, through the same server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from devices.signal_scenarios import scenario_signal
from ml.validation.metrics import meets_goals
from ml.validation.recordings import RECORDINGS
from tests.accuracy import judge_live, stream_signal
from tests.helpers import Api
from tests.streaming import ecg


@pytest.mark.parametrize("name", list(RECORDINGS))
async def test_live_rate_on_real_recording_meets_the_goals(api: Api, name: str) -> None:
    """>= 95 % of the clean windows within 5/min of the reference, a rate on >= 95 % of them, and no rate
    on any window whose last 3 s hold no pulse."""
    recording = RECORDINGS[name]
    start, end = recording.excerpt
    figures = await judge_live(api, recording, start, end)
    assert figures["clean_windows"] >= 8, figures  # enough windows to judge
    assert meets_goals(figures), figures


async def test_the_sensor_off_excerpt_holds_pulseless_windows(api: Api) -> None:
    """The detached-sensor recording's excerpt really is judged on windows with no pulse (so that
    ``rates_on_pulseless == 0`` above means something), and the same stream got rates once the pulse
    was back."""
    recording = RECORDINGS["ppg_sensor_off_heartpy"]
    figures = await judge_live(api, recording, *recording.excerpt)
    assert figures["pulseless_windows"] >= 8 and figures["rates_on_pulseless"] == 0, figures
    assert figures["coverage"] >= 0.95, figures


RATE = 250.0
NO_PULSE = ("flat line", "clipping", "pure noise", "disconnected lead")
CLEAN_S, BAD_S, AFTER_S = 15, 12, 25


def no_pulse_signal() -> np.ndarray:
    """An ECG: clean, then 12 s each of a flat line, clipping (the baseline at the ADC's top rail), pure
    noise and a disconnected lead (mains hum), then clean again."""
    rng = np.random.default_rng(7)
    n = int(BAD_S * RATE)
    hum = 2.0 * np.sin(2 * np.pi * 50 * np.arange(n) / RATE) + rng.normal(0, 0.01, n)
    parts = [ecg(CLEAN_S, RATE, seed=2), np.zeros(n), np.minimum(3 * ecg(BAD_S, RATE, seed=3) + 4.95, 5.0),
             rng.normal(0, 1, n), hum, ecg(AFTER_S, RATE, seed=4)]
    return np.concatenate(parts)


async def test_no_rate_on_a_flat_line_clipping_pure_noise_or_a_disconnected_lead(api: Api) -> None:
    """Live, then in the history: no rate and no HRV, with the reason, while there is no pulse (from 3 s
    into each part); a rate again once the pulse is back; one no_signal vital event that starts and ends,
    and the patient told once."""
    patient, clinician = await api.register("patient"), await api.register("clinician")
    await api.link(patient, clinician)
    doctor, phone = await api.socket(clinician), await api.socket(patient)
    await doctor.ok("live:subscribe", {"patient_id": patient.id})
    analyses = await stream_signal(api, patient, doctor, "ecg", RATE, no_pulse_signal())
    by_t = {a["t"]: a for a in analyses}
    for k, what in enumerate(NO_PULSE):
        start = CLEAN_S + k * BAD_S
        for t in range(start + 3, start + BAD_S + 1):
            a = by_t[float(t)]
            assert a["hr"] is None and a["hrv"] == {"rmssd": None, "sdnn": None}, (what, a)
            assert a["reason"] in ("no_signal", "poor_signal"), (what, a)
    assert all(by_t[float(t)]["hr"] is not None for t in range(8, CLEAN_S + 1))
    back = [by_t[float(t)]["hr"] for t in range(CLEAN_S + 4 * BAD_S + 12, CLEAN_S + 4 * BAD_S + AFTER_S + 1)]
    assert all(hr is not None and 60 < hr < 85 for hr in back), back

    events = await doctor.events.wait("vitals:event", 2, timeout=20)
    signal = [(e["type"], e["phase"]) for e in events if e["type"] in ("no_signal", "poor_signal")]
    assert signal == [("no_signal", "started"), ("no_signal", "ended")], events
    notes = [n for n in await phone.events.wait("notification:new", timeout=10) if n["kind"] == "alert"]
    assert [n["title"] for n in notes] == ["No pulse signal from the sensor"]

    # The history holds the same: no rate, and why.
    params = {"every": "second", "stream_id": analyses[0]["stream_id"]}
    for _ in range(100):  # written in batches, shortly after
        status, body = await api.request("GET", f"/api/patients/{patient.id}/analyses", clinician, params=params)
        assert status == 200, body
        if len(body["items"]) == len(analyses):
            break
        await asyncio.sleep(0.1)
    stored = [(item["hr"], item["rmssd"], item["reason"]) for item in body["items"]]
    # The same seconds (ordered by server time, which a device streaming faster than real time skews).
    live = [(a["hr"], a["hrv"]["rmssd"], a["reason"]) for a in analyses]
    assert sorted(stored, key=repr) == sorted(live, key=repr)
    assert sum(hr is None and reason is not None for hr, _, reason in stored) >= 4 * (BAD_S - 3)


async def test_frequent_ectopy_above_the_clinicians_threshold(api: Api) -> None:
    """A clinician sets the ectopy threshold; an ECG with premature beats (the simulator's ``ectopic``
    scenario, 8 a minute) raises frequent_ectopy (not irregular rhythm), told to the care team; the rate
    counts every beat and ``ectopic_per_min`` reports the ectopic ones."""
    patient, clinician = await api.register("patient"), await api.register("clinician")
    await api.link(patient, clinician)
    doctor = await api.socket(clinician)
    await doctor.ok("live:subscribe", {"patient_id": patient.id})
    reply = await doctor.call("vitals:set-thresholds", {"patient_id": patient.id, "frequent_ectopy_per_min": 0})
    assert reply["error"]["code"] == "invalid_payload"
    data = await doctor.ok("vitals:set-thresholds", {"patient_id": patient.id, "frequent_ectopy_per_min": 4,
                                                       "frequent_ectopy_s": 20})
    assert data["frequent_ectopy_per_min"] == 4 and data["frequent_ectopy_s"] == 20
    chunks = scenario_signal("ecg", "ectopic", RATE, seed=3)
    analyses = await stream_signal(api, patient, doctor, "ecg", RATE, np.concatenate([next(chunks) for _ in range(10)]))
    late = [a for a in analyses if a["t"] >= 70]
    assert all(a["hr"] is not None and 60 < a["hr"] < 85 for a in late), [a["hr"] for a in late]
    assert 4 <= np.median([a["ectopic_per_min"] for a in late]) <= 12
    events = await doctor.events.wait("vitals:event", timeout=20)
    assert {e["type"] for e in events} == {"frequent_ectopy"}, events
    assert events[0]["detail"]["threshold"] == 4 and events[0]["detail"]["ectopic_per_min"] > 4
    note = next(n for n in await doctor.events.wait("notification:new", timeout=10) if n["kind"] == "alert")
    assert note["title"] == "Frequent extra heartbeats" and note["data"]["type"] == "frequent_ectopy"
