"""Streaming ECG / PPG analysis (ml.signal_stream) and rhythm events (ml.rhythm_events) on NeuroKit2's
simulated signals, no mocks. The ``test_port_fidelity_*`` tests check that the port agrees with
NeuroKit2 itself (filters, detectors, rate on signals NeuroKit2 generated): they check the port, not the
heart rate. Accuracy on real recordings is tests/test_accuracy.py."""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import neurokit2 as nk
import numpy as np
import pytest
import scipy.signal

from devices.signal_scenarios import (
    ARTEFACT_ON_S,
    ARTEFACT_START_S,
    ECTOPIC_PER_MIN,
    SCENARIO_RATES,
    SIGNAL_ARTEFACTS,
    scenario_signal,
)
from ml.rhythm_events import EventDetector, Thresholds, rr_irregularity
from ml.rr_intervals import rr_beat_counts, rr_ectopic, rr_extra, rr_normal, rr_rate
from ml.signal_stream import (
    StreamAnalyser,
    ecg_findpeaks_window,
    ppg_findpeaks_window,
    rr_hrv,
    rr_valid,
    stream_clean,
    stream_filter_design,
)

ECG_FS, PPG_FS = 250, 100
RATES = (50, 75, 100, 150)


# ----------------------------------------------------------------------------- signals
@cache
def ecg(hr: float, noise: float = 0.0, duration: int = 40, seed: int = 0) -> np.ndarray:
    signal = nk.ecg_simulate(duration=duration, sampling_rate=ECG_FS, heart_rate=hr, noise=noise,
                             random_state=seed + int(hr))
    signal.flags.writeable = False
    return signal


@cache
def ppg(hr: float, noisy: bool, duration: int = 40) -> np.ndarray:
    noise = ({"motion_amplitude": 0.2, "powerline_amplitude": 0.02, "drift": 1.0} if noisy
             else {"motion_amplitude": 0.0, "powerline_amplitude": 0.0, "drift": 0.0})
    # ppg_simulate ends on a flat stretch; simulate 2 s more and cut them.
    signal = nk.ppg_simulate(duration=duration + 2, sampling_rate=PPG_FS, heart_rate=hr,
                             random_state=int(hr) + 7 * noisy, **noise)[:duration * PPG_FS]
    signal.flags.writeable = False
    return signal


@cache
def beat_template() -> np.ndarray:
    """One clean, tapered heartbeat (R-peak at 0.25 s) to build ECGs with any RR sequence."""
    signal = nk.ecg_simulate(duration=10, sampling_rate=ECG_FS, heart_rate=60, noise=0, random_state=3)
    _, info = nk.ecg_peaks(nk.ecg_clean(signal, sampling_rate=ECG_FS), sampling_rate=ECG_FS)
    r = int(info["ECG_R_Peaks"][4])
    beat = signal[r - int(0.25 * ECG_FS):r + int(0.45 * ECG_FS)]
    return (beat - np.median(signal)) * scipy.signal.windows.tukey(beat.size, 0.3)


def ecg_from_rr(rr: np.ndarray, seed: int = 0) -> np.ndarray:
    """Overlap-add of ``beat_template`` at the given RR intervals (seconds), plus light noise."""
    beat = beat_template()
    onsets = (np.concatenate(([0.5], 0.5 + np.cumsum(rr))) * ECG_FS).astype(int)
    out = np.zeros(onsets[-1] + beat.size)
    for onset in onsets:
        out[onset:onset + beat.size] += beat
    return out + np.random.default_rng(seed).normal(0, 0.01, out.size)


def motion(n: int, amplitude: float, seed: int) -> np.ndarray:
    """Motion artefact: band-limited (0.3-15 Hz) random movement plus random baseline steps."""
    rng = np.random.default_rng(seed)
    sos = scipy.signal.butter(2, [0.3, 15], btype="bandpass", fs=ECG_FS, output="sos")
    wobble = scipy.signal.sosfilt(sos, rng.standard_normal(n))
    steps = np.cumsum(rng.standard_normal(n) * (rng.random(n) < 3 / ECG_FS))
    return (wobble / wobble.std() + steps) * amplitude


def stream(signal: np.ndarray, kind: str = "ecg", fs: int = ECG_FS, frame: int | None = None,
           thresholds: Thresholds | None = None) -> tuple[list[dict[str, Any]], list[tuple[float, dict]]]:
    """Push ``signal`` in frames; return the analyses and (t of the analysis, event) pairs."""
    analyser, detector = StreamAnalyser(kind, fs), EventDetector(thresholds)
    analyses, events = [], []
    frame = frame or fs
    for i in range(0, signal.size, frame):
        for analysis in analyser.push(signal[i:i + frame]):
            analyses.append(analysis)
            events += [(analysis["t"], e) for e in detector.update(analysis)]
    return analyses, events


def started(events: list[tuple[float, dict]], kind: str) -> list[tuple[float, dict]]:
    return [(t, e) for t, e in events if e["type"] == kind and e["state"] == "started"]


# ----------------------------------------------------------------------------- port fidelity (vs NeuroKit2)
@pytest.mark.parametrize("kind,fs", [("ecg", 250), ("ecg", 125), ("ecg", 1000), ("ppg", 64), ("ppg", 25)])
def test_port_fidelity_filters_are_neurokit2s(kind: str, fs: int) -> None:
    """Run forward-backward, the streaming filters are exactly NeuroKit2's cleaning."""
    x = np.random.default_rng(1).standard_normal(20 * fs).cumsum()
    design = stream_filter_design(kind, float(fs))
    if kind == "ecg":
        ours = scipy.signal.sosfiltfilt(design["nk_sos"], x)
        taps = design["powerline"]
        ours = scipy.signal.filtfilt(taps * taps.size, [taps.size], ours, method="pad")
        reference = nk.ecg_clean(x, sampling_rate=fs)
    else:
        ours = scipy.signal.sosfiltfilt(design["nk_sos"], x)
        reference = nk.ppg_clean(x, sampling_rate=fs)
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-9 * np.abs(reference).max())


def test_stream_clean_carries_state_across_frames() -> None:
    x = np.asarray(ecg(75)) + 3.0
    design = stream_filter_design("ecg", float(ECG_FS))
    whole, _ = scipy.signal.sosfilt(design["sos"], x, zi=design["zi"] * x[0])
    parts, zi = [], None
    for i in range(0, x.size, 37):
        y, zi = stream_clean(x[i:i + 37], design["sos"], zi, design["zi"])
        parts.append(y)
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-12, atol=1e-12)


def test_port_fidelity_detectors_match_neurokit2_offline() -> None:
    """On a whole signal, the ported detectors find NeuroKit2's own peaks."""
    from neurokit2.ecg.ecg_findpeaks import _ecg_findpeaks_neurokit

    cleaned = nk.ecg_clean(ecg(75, 0.05), sampling_rate=ECG_FS)
    reference = _ecg_findpeaks_neurokit(cleaned, sampling_rate=ECG_FS)
    ours = ecg_findpeaks_window(cleaned, ECG_FS)
    np.testing.assert_array_equal(ours[ours > 0.3 * ECG_FS], reference)  # NK skips the first 0.3 s

    cleaned = nk.ppg_clean(ppg(75, True), sampling_rate=PPG_FS)
    reference = nk.ppg_findpeaks(cleaned, sampling_rate=PPG_FS)["PPG_Peaks"]
    ours = ppg_findpeaks_window(cleaned, PPG_FS)
    np.testing.assert_array_equal(ours[ours > 0.3 * PPG_FS], reference)


# ----------------------------------------------------------------------------- port fidelity: rate vs NeuroKit2
def reference_rate(kind: str, signal: np.ndarray, fs: int) -> np.ndarray:
    """NeuroKit2's rate (per sample) from its own pipeline, its peaks corrected by its own artefact
    correction (``signal_fixpeaks``, Kubios): at ~170/min (``ppg_simulate(heart_rate=150)`` with its
    frequency modulation) Elgendi's detector misses the smaller pulse after a short interval, in
    NeuroKit2 as in the port, and an uncorrected reference rate is then off by 10/min."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "ecg":
            _, info = nk.ecg_process(signal, sampling_rate=fs)
            peaks = info["ECG_R_Peaks"]
        else:
            _, info = nk.ppg_process(signal, sampling_rate=fs)
            peaks = info["PPG_Peaks"]
        _, fixed = nk.signal_fixpeaks(peaks, sampling_rate=fs, method="kubios", iterative=True)
        return nk.signal_rate(fixed, sampling_rate=fs, desired_length=signal.size)


@pytest.mark.parametrize("noisy", [False, True], ids=["clean", "noisy"])
@pytest.mark.parametrize("hr", RATES)
@pytest.mark.parametrize("kind", ["ecg", "ppg"])
def test_port_fidelity_rate_matches_neurokit2(kind: str, hr: int, noisy: bool) -> None:
    """After the first 10 s, every second's rate is within 2/min of NeuroKit2's over the same window
    (the last 10 s of final signal: beats are final ``lag_s`` after they happen)."""
    fs = ECG_FS if kind == "ecg" else PPG_FS
    signal = ecg(hr, 0.05 if noisy else 0.0) if kind == "ecg" else ppg(hr, noisy)
    rate = reference_rate(kind, signal, fs)
    analyses, events = stream(signal, kind, fs)
    assert [a["t"] for a in analyses] == list(range(1, 41))
    lag = round(StreamAnalyser(kind, fs).lag_s * fs)

    for a in analyses:
        # From the first window that lies wholly within the signal, to the last whose beats all have
        # a successor (NeuroKit2's peak correction cannot fix the signal's last interval).
        if not 11 <= a["t"] <= 39:
            continue
        end = int(a["t"] * fs) - lag
        expected = rate[end - 10 * fs:end].mean()
        assert a["hr"] is not None and abs(a["hr"] - expected) <= 2.0, (a["t"], a["hr"], expected)
        assert a["window"] == 10.0
        assert a["hrv"]["sdnn"] is not None and a["hrv"]["rmssd"] is not None

    assert all(a["quality"] > 0.7 for a in analyses if a["t"] >= 8), [a["quality"] for a in analyses]
    expected = {"tachycardia"} if hr > 120 else set()  # 150/min for 40 s is a tachycardia
    assert {e["type"] for _, e in events} == expected, events


def test_frame_size_does_not_change_results() -> None:
    signal = ecg(75, 0.05)
    by_second, _ = stream(signal, frame=ECG_FS)
    by_fifth, _ = stream(signal, frame=ECG_FS // 5)
    odd, _ = stream(signal, frame=77)
    assert by_second == by_fifth == odd


def test_hrv_and_artefact_rejection() -> None:
    rr = np.array([0.8, 0.82, 0.78, 1.6, 0.81, 0.79, 0.2, 0.8, 0.83, np.nan, 0.8])
    valid = rr_valid(rr)
    assert valid.tolist() == [True, True, True, False, True, True, False, True, True, False, True]
    hrv = rr_hrv(rr, valid)
    good = np.array([0.8, 0.82, 0.78, 0.81, 0.79, 0.8, 0.83, 0.8])
    assert hrv["sdnn"] == pytest.approx(np.std(good, ddof=1) * 1000)
    # Successive pairs only where both intervals are valid and adjacent: (1,2), (2,3), (5,6), (8,9).
    diffs = np.array([0.02, -0.04, -0.02, 0.03])
    assert hrv["rmssd"] == pytest.approx(np.sqrt(np.mean(diffs**2)) * 1000)
    assert rr_hrv(rr[:3]) == {"rmssd": None, "sdnn": None}


def test_every_beat_counts_ectopic_beats_apart_and_hrv_on_normal_intervals() -> None:
    """Sinus rhythm at 0.8 s with a premature beat and its compensatory pause (a real beat: counts), an
    extra detection splitting one interval (not a beat), and a missed PPG pulse (a 2x interval)."""
    rr = np.full(36, 0.8) + np.tile([0.01, -0.01, 0.0], 12)
    rr[8:10] = 0.45, 1.15  # premature beat at index 8, compensatory pause after it
    rr[16:18] = 0.32, 0.48  # a T wave / dicrotic wave detected: one 0.8 s interval split in two
    rr[25] = 1.6  # one pulse missed
    counts = rr_beat_counts(rr)
    expected = np.ones(36, dtype=int)
    expected[[16, 17]] = 0
    expected[25] = 2
    assert counts.tolist() == expected.tolist()
    assert rr_beat_counts(rr, max_missed=0)[25] == 1  # ECG: a long interval is a pause, not a missed beat
    assert np.flatnonzero(rr_ectopic(rr)).tolist() == [8]
    assert np.flatnonzero(rr_extra(rr)).tolist() == [16]
    normal = rr_normal(rr)
    assert not normal[[8, 9, 16, 17, 25]].any() and normal.sum() == 31
    # The rate counts the ectopic beat (37 beats' worth in the intervals that count), HRV leaves it out.
    assert rr_rate(rr, counts) == pytest.approx(60 * 35 / (rr.sum() - 0.8))
    assert rr_hrv(rr, normal)["sdnn"] == pytest.approx(np.std(rr[normal], ddof=1) * 1000)


# ----------------------------------------------------------------------------- quality / poor signal
ONSET, END = 10, 30


def with_artefact(kind: str) -> np.ndarray:
    signal = np.array(ecg(75, 0.05, duration=50))
    part = slice(ONSET * ECG_FS, END * ECG_FS)
    n = (END - ONSET) * ECG_FS
    if kind.startswith("motion"):
        signal[part] += motion(n, 1.5, seed=int(kind[-1]))
    elif kind == "flat":
        signal[part] = 0.0
    elif kind == "railed":
        signal[part] = 5.0  # ADC at full scale
    elif kind.startswith("noise"):
        signal[part] += np.random.default_rng(int(kind[-1])).normal(0.0, 1.0, n)
    return signal


SIGNAL_EVENT = {"motion": {"poor_signal"}, "flat": {"no_signal"}, "railed": {"no_signal"},
                "noise": {"poor_signal", "no_signal"}}  # noise: whichever most of its seconds were


@pytest.mark.parametrize("artefact", ["motion0", "motion1", "motion2", "flat", "railed", "noise0", "noise1"])
def test_artefacts_raise_poor_signal_or_no_signal(artefact: str) -> None:
    analyses, events = stream(with_artefact(artefact))
    poor = [(t, e) for t, e in events if e["type"] in ("poor_signal", "no_signal") and e["state"] == "started"]
    assert len(poor) == 1 and poor[0][1]["type"] in SIGNAL_EVENT[artefact.rstrip("012")], events
    t, event = poor[0]
    assert ONSET + 10 <= t <= ONSET + 10 + 2, (t, event)
    assert ONSET - 1 <= event["started_at"] <= ONSET + 2
    during = [a for a in analyses if ONSET + 3 <= a["t"] <= END]
    # No rate while it lasts; quality shows it (a second of noise may now and then look like beats).
    assert all(a["hr"] is None for a in during), during
    assert sum(a["quality"] < 0.5 for a in during) >= 0.85 * len(during), [a["quality"] for a in during]
    ended = [(t, e) for t, e in events if e["type"] == event["type"] and e["state"] == "ended"]
    # Ends once quality has been good for 10 s; the 6 s beat template must first fill with clean beats.
    assert len(ended) == 1 and END + 10 <= ended[0][0] <= END + 10 + 8
    # Artefacts are not read as rhythm: no rate alarm.
    assert not started(events, "tachycardia") and not started(events, "bradycardia")


def test_ppg_motion_raises_poor_signal() -> None:
    signal = np.array(ppg(75, True))
    n = (END - ONSET) * PPG_FS
    rng = np.random.default_rng(5)
    sos = scipy.signal.butter(2, [0.2, 4], btype="bandpass", fs=PPG_FS, output="sos")
    wobble = scipy.signal.sosfilt(sos, rng.standard_normal(n))
    signal[ONSET * PPG_FS:END * PPG_FS] += wobble / wobble.std() * 2.0 * signal.std()
    _, events = stream(signal, "ppg", PPG_FS)
    poor = started(events, "poor_signal")
    assert len(poor) == 1 and ONSET + 10 <= poor[0][0] <= ONSET + 12, events


# ----------------------------------------------------------------------------- rhythm events
def test_tachycardia_from_the_start() -> None:
    _, events = stream(ecg(140, 0.05))
    tachy = started(events, "tachycardia")
    assert len(tachy) == 1, events
    t, event = tachy[0]
    assert 30 <= t <= 32 and event["started_at"] <= 2
    assert event["severity"] == "warning" and event["detail"]["rate"] > 120
    assert not started(events, "bradycardia") and not started(events, "poor_signal")


def test_tachycardia_mid_stream() -> None:
    """75/min for 20 s, then 140/min: the alarm comes 30 (+2) s after the change, not 30 s after the
    10 s mean heart rate crosses 120."""
    signal = np.concatenate((ecg(75, 0.05, duration=20), ecg(140, 0.05, duration=40)))
    analyses, events = stream(signal)
    tachy = started(events, "tachycardia")
    assert len(tachy) == 1, events
    t, event = tachy[0]
    assert 50 <= t <= 52 and 19 <= event["started_at"] <= 21.5
    assert next(a["t"] for a in analyses if (a["hr"] or 0) > 120) > 23  # the 10 s mean lags


def test_bradycardia() -> None:
    _, events = stream(ecg(40, 0.05))
    brady = started(events, "bradycardia")
    assert len(brady) == 1, events
    t, event = brady[0]
    assert 30 <= t <= 32 and event["started_at"] <= 2
    assert event["severity"] in ("warning", "critical")
    assert not started(events, "tachycardia") and not started(events, "poor_signal")


def test_normal_rhythm_raises_nothing() -> None:
    analyses, events = stream(ecg(75, 0.05, duration=75))
    assert events == []
    assert all(60 < a["hr"] < 90 for a in analyses if a["t"] >= 5)


def test_irregular_rhythm() -> None:
    rr = np.random.default_rng(11).uniform(0.4, 1.2, 100)  # AF-like: no two alike
    analyses, events = stream(ecg_from_rr(rr)[:75 * ECG_FS])
    irregular = started(events, "irregular_rhythm")
    assert len(irregular) == 1, events
    t, event = irregular[0]
    assert t <= 60 + 5 and event["detail"]["cv"] > 0.12 and event["detail"]["nrmssd"] > 0.12
    assert not started(events, "poor_signal")
    # The rate is the true one: irregular intervals are not rejected as artefacts. The rate window
    # is the last 10 s of final signal, [t - lag - 10, t - lag] (beats are final lag_s after them),
    # holding the intervals that start and end inside it; beats are detected a few ms late (causal
    # filters), so the true beat times are shifted by that delay before windowing.
    beats = 0.5 + 0.25 + np.concatenate(([0.0], np.cumsum(rr)))
    detected = np.array([b for a in analyses for b in a["beats_t"]])
    delay = float(np.median([detected[np.argmin(np.abs(detected - b))] - b for b in beats[beats < 70]]))
    assert abs(delay) < 0.04
    lag = StreamAnalyser("ecg", ECG_FS).lag_s
    for a in analyses:
        if a["t"] >= 12:
            end = a["t"] - lag - delay
            if np.min(np.abs(np.concatenate((beats - end, beats - end + 10)))) < 2 / ECG_FS:
                continue  # a beat on the window's edge: in or out by a sample's rounding
            inside = beats[(beats >= end - 10) & (beats <= end)]
            assert abs(a["hr"] - 60 * (inside.size - 1) / (inside[-1] - inside[0])) < 2.5, a


def test_respiratory_sinus_arrhythmia_is_regular() -> None:
    beats = np.arange(100)
    rr = 0.85 + 0.08 * np.sin(2 * np.pi * beats * 0.85 / 4.0)  # +/-10 %, 4 s breathing
    _, events = stream(ecg_from_rr(rr)[:75 * ECG_FS])
    assert events == []


def test_rr_irregularity_metric() -> None:
    rng = np.random.default_rng(0)
    af = rr_irregularity(rng.uniform(0.4, 1.2, 80))
    assert af["cv"] > 0.2 and af["nrmssd"] > 0.25
    sinus = np.full(80, 0.8)
    sinus[[20, 50]] = 1.6  # two missed beats are trimmed away
    figures = rr_irregularity(sinus + rng.normal(0, 0.01, 80))
    assert figures["cv"] < 0.05 and figures["nrmssd"] < 0.05


def test_event_detector_episodes_thresholds_and_stalled() -> None:
    """Pure bookkeeping on synthetic analyses: once per episode, ended notice, per-patient override."""
    def analysis(t: int, rr: float, quality: float = 0.95) -> dict[str, Any]:
        return {"t": float(t), "hr": 60 / rr, "quality": quality, "beats": 1, "beats_t": [t - 0.6],
                "rr": [rr]}

    detector = EventDetector(Thresholds(tachycardia_hr=100, tachycardia_critical_hr=110))
    events = []
    for t in range(1, 61):
        events += [(t, e) for e in detector.update(analysis(t, 0.5 if t <= 40 else 0.8))]
    assert [(e["type"], e["state"]) for _, e in events] == [("tachycardia", "started"), ("tachycardia", "ended")]
    (t_start, start), (t_end, end) = events
    assert start["severity"] == "critical" and start["detail"]["rate"] == 120.0
    assert 30 <= t_start <= 32 and 50 <= t_end <= 52 and end["started_at"] == start["started_at"]
    assert 40 - 0.6 <= end["ended_at"] <= 42 - 0.6  # the 5-beat median needs 3 slow beats to flip
    assert detector.active() == {}

    assert detector.stalled(2.0) == []
    (stall,) = detector.stalled(5.5)
    assert stall["type"] == "stalled" and stall["state"] == "started"
    assert detector.stalled(9.0) == []  # once per episode
    (resumed,) = detector.update(analysis(61, 0.8))
    assert resumed["type"] == "stalled" and resumed["state"] == "ended"

    # The default thresholds would not alarm at 120/min.
    default = EventDetector()
    assert not [e for t in range(1, 61) for e in default.update(analysis(t, 0.5))]


# ----------------------------------------------------------------------------- gaps and memory
def test_gap_makes_no_beat_and_no_jump() -> None:
    signal = ecg(75, 0.05)
    _, info = nk.ecg_process(signal, sampling_rate=ECG_FS)
    reference = np.asarray(info["ECG_R_Peaks"])
    analyser = StreamAnalyser("ecg", ECG_FS)
    analyses = []
    lost = range(100, 110)  # frames of 0.2 s: 20 s to 22 s never arrive
    frame = ECG_FS // 5
    for k in range(signal.size // frame):
        if k in lost:
            continue
        analyses += analyser.push(signal[k * frame:(k + 1) * frame], t0_ms=1_700_000_000_000 + k * 200)
    assert [a["t"] for a in analyses] == [t for t in range(1, 41) if t not in (21, 22)]

    beat_times, rr = analyser.rr_intervals(60)
    # Every detected beat is a real R-peak (causal filtering delays it by a few samples) ...
    offsets = [np.min(np.abs(reference / ECG_FS - b)) for b in beat_times]
    assert max(offsets) < 0.04
    # ... none inside the gap, and no interval spans it.
    assert not ((beat_times >= 20) & (beat_times < 22)).any()
    after = beat_times >= 22
    assert np.isnan(rr[after][0]) and np.isfinite(rr[~after][1:]).all()
    rates = [a["hr"] for a in analyses if a["t"] >= 10]
    assert max(rates) - min(rates) < 3
    assert all(a["quality"] > 0.5 for a in analyses if a["t"] >= 8)
    assert next(a for a in analyses if a["t"] == 23)["window"] == 8.0


def test_explicit_gap_and_non_finite_samples() -> None:
    signal = np.array(ecg(75, 0.05))
    a, b = StreamAnalyser("ecg", ECG_FS), StreamAnalyser("ecg", ECG_FS)
    out_a, out_b = [], []
    for i in range(0, signal.size, ECG_FS):
        frame = signal[i:i + ECG_FS]
        if i == 15 * ECG_FS:
            a.gap(ECG_FS)
            out_a += a.push(frame[:0])
            marked = frame.copy()
            marked[:] = np.nan
            out_b += b.push(marked)
            continue
        out_a += a.push(frame)
        out_b += b.push(frame)
    assert out_a == out_b
    assert 16.0 not in [x["t"] for x in out_a]
    assert all(x["hr"] is not None and 70 < x["hr"] < 80 for x in out_a if x["t"] >= 5)


def test_repeated_frame_is_dropped() -> None:
    signal = ecg(75, 0.05)
    analyser = StreamAnalyser("ecg", ECG_FS)
    plain = StreamAnalyser("ecg", ECG_FS)
    out, expected = [], []
    for k in range(20):
        frame = signal[k * ECG_FS:(k + 1) * ECG_FS]
        out += analyser.push(frame, t0_ms=k * 1000.0)
        if k == 7:
            out += analyser.push(frame, t0_ms=k * 1000.0)  # retransmitted
        expected += plain.push(frame)
    assert out == expected


def test_memory_is_bounded() -> None:
    chunk = ecg(75, 0.05)
    analyser = StreamAnalyser("ecg", ECG_FS)
    sizes = {}
    for k in range(15):  # 10 minutes
        for i in range(0, chunk.size, ECG_FS):
            analyser.push(chunk[i:i + ECG_FS])
        sizes[k] = (analyser.buffer_sizes(), analyser.nbytes())
    assert sizes[6] == sizes[10] == sizes[14]  # the beat deque (60 s at 240/min) is full by then
    assert sizes[14][0]["peaks"] == sizes[14][0]["peaks_max"]
    assert sizes[14][1] < 64 * 1024


# ----------------------------------------------------------------------------- simulator scenarios
SCENARIO_EVENTS = {  # scenario -> (seconds to stream, the event types it must raise, nothing else)
    "normal": (70, set()),
    "tachycardia": (36, {"tachycardia"}),
    "bradycardia": (36, {"bradycardia"}),
    "irregular": (70, {"irregular_rhythm"}),
    "ectopic": (110, {"frequent_ectopy"}),  # judged once the 60 s window tells it from irregularity, then 30 s
    "motion_artefacts": (36, {"poor_signal"}),
    "lead_off": (36, {"no_signal"}),
    "sensor_off": (36, {"no_signal"}),
    "clipping": (36, {"no_signal"}),
}


@cache
def scenario(kind: str, name: str, seconds: int) -> np.ndarray:
    fs = ECG_FS if kind == "ecg" else PPG_FS
    chunks, n = [], 0
    for chunk in scenario_signal(kind, name, fs, seed=3):
        chunks.append(chunk)
        n += chunk.size
        if n >= seconds * fs:
            break
    signal = np.concatenate(chunks)[:seconds * fs]
    signal.flags.writeable = False
    return signal


@pytest.mark.parametrize("name", list(SCENARIO_EVENTS))
@pytest.mark.parametrize("kind", ["ecg", "ppg"])
def test_simulator_scenarios_raise_their_events(kind: str, name: str) -> None:
    """The simulator's scenarios (devices.signal_scenarios), streamed through the analysis, raise the
    events they are meant to, in time: rate alarms 30 s (sustained) + 2 s after the start, poor / no
    signal 10 s (sustained) + 4 s after the artefact starts, irregular rhythm within its 60 s window + 5 s,
    frequent ectopy (and not irregular rhythm) within 110 s; and nothing else. No rate is shown while
    the sensor is off, clipped or off the skin."""
    fs = ECG_FS if kind == "ecg" else PPG_FS
    seconds, expected = SCENARIO_EVENTS[name]
    analyses, events = stream(scenario(kind, name, seconds), kind, fs, frame=fs // 4)
    assert {e["type"] for _, e in events if e["state"] == "started"} == expected, events
    for kind_, limit in (("tachycardia", 32), ("bradycardia", 32), ("irregular_rhythm", 65), ("frequent_ectopy", 110),
                         ("poor_signal", ARTEFACT_START_S + 14), ("no_signal", ARTEFACT_START_S + 14)):
        for t, _ in started(events, kind_):
            assert t <= limit, (kind_, t, events)
    if name == "normal":
        assert all(60 < a["hr"] < 85 for a in analyses if a["t"] >= 11), [a["hr"] for a in analyses]
        assert all(a["quality"] > 0.5 for a in analyses if a["t"] >= 8)
    if name in ("tachycardia", "bradycardia"):
        target = SCENARIO_RATES[name]
        assert all(abs(a["hr"] - target) < 0.1 * target for a in analyses if a["t"] >= 11)
    if name == "ectopic":  # every beat counts in the rate; ectopic beats are counted apart
        late = [a for a in analyses if a["t"] >= 70]
        assert sum(60 < (a["hr"] or 0) < 85 for a in late) >= 0.9 * len(late), [a["hr"] for a in late]
        per_min = np.median([a["ectopic_per_min"] for a in late if a["ectopic_per_min"] is not None])
        assert 0.5 * ECTOPIC_PER_MIN <= per_min <= 1.5 * ECTOPIC_PER_MIN, per_min
    if name in SIGNAL_ARTEFACTS and name != "motion_artefacts":  # no pulse: no rate once it has held for 3 s
        on = [a for a in analyses if ARTEFACT_START_S + 3 <= a["t"] <= ARTEFACT_START_S + ARTEFACT_ON_S]
        assert all(a["hr"] is None and a["reason"] for a in on), on


def test_scenario_chunks_join_without_artefacts() -> None:
    """Chunks are cut at the same phase of a beat: every beat-to-beat interval across the junctions is
    an ordinary one (no interval of 0-2 RR where two independent simulations meet)."""
    for kind, fs in (("ecg", ECG_FS), ("ppg", PPG_FS)):
        analyses, _ = stream(scenario(kind, "normal", 70), kind, fs)
        rr = np.array([r for a in analyses for r in a["rr"] if r is not None])
        assert rr_valid(rr).all(), (kind, rr)
