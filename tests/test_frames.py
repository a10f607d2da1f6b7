"""The device side of the frame protocol (``devices/``): stream opening and frame validation,
sequencing, the device clock, and the simulator's signal scenarios. Pure unit tests."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydantic import ValidationError

from devices.clock import DeviceClock
from devices.frames import Frame, FrameError, StreamOpen, decode_samples, max_samples
from devices.signal_scenarios import CHUNK_S, drop_schedule, scenario_signal
from devices.stream_sequencer import StreamSequencer


@pytest.mark.parametrize("rate", [25, 25.0, 250, 1000])
def test_rates_within_bounds_open(rate: float) -> None:
    assert StreamOpen(kind="ecg", sampling_rate=rate).sampling_rate == rate


@pytest.mark.parametrize("body", [
    {"kind": "ecg", "sampling_rate": 24.9}, {"kind": "ecg", "sampling_rate": 1000.5},
    {"kind": "ecg", "sampling_rate": float("nan")}, {"kind": "ecg", "sampling_rate": float("inf")},
    {"kind": "ecg", "sampling_rate": "fast"}, {"kind": "bp_cuff", "sampling_rate": 100},
    {"kind": "ecg", "sampling_rate": 250, "units": "<script>"}, {"kind": "ecg", "sampling_rate": 250, "extra": 1},
    {"sampling_rate": 250},
])
def test_bad_stream_open_refused(body: dict) -> None:
    with pytest.raises(ValidationError):
        StreamOpen.model_validate(body)


def _frame(samples: object, dtype: str | None = None, **kw: object) -> Frame:
    return Frame.model_validate({"stream_id": "s", "seq": 0, "t0": 0.0, "samples": samples,
                                 **({"dtype": dtype} if dtype else {}), **kw})


def test_binary_float32_int16_and_json_paths_decode_alike() -> None:
    values = np.array([0.5, -1.25, 3.0, 100.0])
    for frame in (_frame(values.astype("<f4").tobytes()), _frame(values.astype("<f4").tobytes(), "float32"),
                  _frame(values.tolist())):
        assert np.allclose(decode_samples(frame, 250), values)
    ints = np.array([1, -2, 32767, -32768], dtype="<i2")
    assert decode_samples(_frame(ints.tobytes(), "int16"), 250).tolist() == ints.tolist()
    # Big-endian bytes read as little-endian are different numbers: the byte order is fixed.
    assert not np.allclose(decode_samples(_frame(values.astype(">f4").tobytes()), 250), values)


@pytest.mark.parametrize(("samples", "dtype", "rate", "code"), [
    (b"", "float32", 250, "empty_frame"),
    ([], None, 250, "empty_frame"),
    (b"\x00\x00\x80", "float32", 250, "bad_samples"),  # 3 bytes: not whole float32 samples
    (b"\x00\x00\x00", "int16", 250, "bad_samples"),
    ([1.0, 2.0], "float32", 250, "bad_samples"),  # dtype goes with binary only
    (np.zeros(501, "<f4").tobytes(), "float32", 250, "frame_too_long"),  # > 2 s at 250 Hz
    (np.zeros(51).tolist(), None, 25, "frame_too_long"),  # > 2 s at 25 Hz
    (np.array([1, np.nan], "<f4").tobytes(), "float32", 250, "non_finite_samples"),
    (np.array([np.inf, 1], "<f4").tobytes(), None, 250, "non_finite_samples"),
    ([1.0, float("nan")], None, 250, "non_finite_samples"),
    ([float("-inf")], None, 250, "non_finite_samples"),
    ([1.0, 1e39], None, 250, "non_finite_samples"),  # finite, but not as float32
])
def test_malformed_samples_refused_with_a_code(samples: object, dtype: str | None, rate: float, code: str) -> None:
    with pytest.raises(FrameError) as err:
        decode_samples(_frame(samples, dtype), rate)
    assert err.value.code == code


def test_frame_limits_at_the_edge() -> None:
    assert max_samples(250) == 500 and max_samples(25) == 50
    assert decode_samples(_frame(np.zeros(500, "<f4").tobytes()), 250).size == 500
    assert decode_samples(_frame([0.0] * 50), 25).size == 50


@pytest.mark.parametrize("body", [
    {"samples": "AAAA"}, {"samples": {"a": 1}}, {"samples": [1, "2"]}, {"samples": [True, 1.0]},
    {"samples": [[1.0]]}, {"samples": [0.0] * 2001}, {"samples": [1.0], "seq": -1},
    {"samples": [1.0], "t0": float("nan")}, {"samples": [1.0], "t0": -5}, {"samples": [1.0], "dtype": "float64"},
    {"samples": [1.0], "stream_id": ""}, {"samples": [1.0], "extra": True},
])
def test_malformed_frames_fail_validation(body: dict) -> None:
    with pytest.raises(ValidationError):
        Frame.model_validate({"stream_id": "s", "seq": 0, "t0": 0.0, **body})


def test_sequencer_in_order_gap_duplicate_late_resume() -> None:
    seq = StreamSequencer()
    assert seq.accept(5).kind == "ok"  # a stream may start at any number
    assert seq.accept(6).kind == "ok"
    gap = seq.accept(9)
    assert gap.kind == "gap" and gap.missing == 2 and seq.last_seq == 9
    assert seq.accept(9).kind == "duplicate"
    assert seq.accept(6).kind == "duplicate"
    assert seq.accept(7).kind == "late"  # given up as missing, arrived after all: dropped
    assert seq.accept(10).kind == "ok"
    resumed = StreamSequencer()
    resumed.resume(11)
    assert resumed.accept(10).kind == "late" and resumed.accept(11).kind == "ok" and resumed.accept(13).missing == 1


def test_sequencer_memory_is_bounded() -> None:
    seq = StreamSequencer()
    for i in range(10_000):
        seq.accept(i)
    assert len(seq._recent) <= 64


def test_clock_maps_device_time_and_measures_drift() -> None:
    clock = DeviceClock()
    rng = np.random.default_rng(3)
    boot_server_s, drift = 1_800_000_000.0, 200e-6  # the device clock runs 200 ppm slow
    for i in range(100):
        device_ms = 5_000.0 + i * 1000.0
        true_server = boot_server_s + (device_ms / 1000.0) * (1 + drift)
        clock.observe(device_ms, true_server + 0.002 + float(rng.exponential(0.01)))  # network delay >= 2 ms
    mapped = clock.to_server(100_000.0)
    assert abs(mapped - (boot_server_s + 100.0 * (1 + drift))) < 0.05
    assert 150 < clock.drift_ppm < 250


def test_frames_held_up_together_do_not_bend_the_drift() -> None:
    """A sender stalled for half a second sends its next frames in a burst: all of them late, none early."""
    clock = DeviceClock()
    rng = np.random.default_rng(5)
    for seq in range(25):  # 0.1 s frames from a device whose clock runs 5 % slow
        sent = 2.1 if 15 <= seq <= 20 else (seq + 1) * 0.1  # 15-20 sent in a burst when 20 is due
        clock.observe(7_000.0 + seq * 95.0, 1_000.0 + sent + 0.001 + float(rng.exponential(0.002)))
    assert 45_000 < clock.drift_ppm < 55_000


def test_clock_without_observations_refuses_and_reports_no_drift() -> None:
    clock = DeviceClock()
    with pytest.raises(ValueError):
        clock.to_server(0)
    assert clock.drift_ppm == 0.0


@pytest.mark.parametrize("scenario", ["normal", "exercise_ramp", "bradycardia", "tachycardia", "irregular",
                                      "motion_artefacts", "lead_off", "network_drop"])
@pytest.mark.parametrize(("kind", "rate"), [("ecg", 250.0), ("ppg", 100.0)])
def test_scenarios_give_finite_chunks_of_the_right_length(scenario: str, kind: str, rate: float) -> None:
    chunks = list(itertools.islice(scenario_signal(kind, scenario, rate, seed=2), 2))
    for chunk in chunks:
        assert chunk.shape == (int(CHUNK_S * rate),) and np.isfinite(chunk).all()
    assert not np.array_equal(chunks[0], chunks[1])


def _rate(signal: np.ndarray, rate: float) -> float:
    import neurokit2 as nk

    _, info = nk.ecg_peaks(nk.ecg_clean(signal, sampling_rate=int(rate)), sampling_rate=int(rate))
    return 60.0 / float(np.median(np.diff(info["ECG_R_Peaks"]) / rate))


def test_rate_scenarios_have_their_rates() -> None:
    for scenario, low, high in (("bradycardia", 35, 45), ("tachycardia", 130, 150), ("normal", 65, 80)):
        chunk = next(scenario_signal("ecg", scenario, 250.0))
        assert low <= _rate(chunk, 250.0) <= high, scenario


def test_lead_off_flattens_and_motion_adds_large_noise() -> None:
    lead = list(itertools.islice(scenario_signal("ecg", "lead_off", 250.0), 2))
    assert np.ptp(lead[0]) > 0.5 and np.std(lead[1]) < 0.01
    motion = list(itertools.islice(scenario_signal("ecg", "motion_artefacts", 250.0), 2))
    assert np.std(motion[1]) > 3 * np.std(motion[0])


def test_irregular_scenario_has_irregular_intervals() -> None:
    import neurokit2 as nk

    chunk = np.concatenate(list(itertools.islice(scenario_signal("ecg", "irregular", 250.0, seed=4), 3)))
    _, info = nk.ecg_peaks(nk.ecg_clean(chunk, sampling_rate=250), sampling_rate=250)
    rr = np.diff(info["ECG_R_Peaks"]) / 250.0
    assert np.std(rr) / np.mean(rr) > 0.15
    normal = next(scenario_signal("ecg", "normal", 250.0))
    _, info = nk.ecg_peaks(nk.ecg_clean(normal, sampling_rate=250), sampling_rate=250)
    rr = np.diff(info["ECG_R_Peaks"]) / 250.0
    assert np.std(rr) / np.mean(rr) < 0.1


def test_drop_schedule_only_for_network_drop() -> None:
    assert not any(drop_schedule("normal")(s) for s in range(200))
    offline = [s for s in range(80) if drop_schedule("network_drop", seed=0)(s)]
    assert offline == [*range(20, 28), *range(60, 68)]


def test_clock_offset_is_the_minimum_over_a_sliding_window() -> None:
    clock = DeviceClock()
    rng = np.random.default_rng(5)
    offsets = 10.0 + rng.exponential(0.05, 500)
    for i, offset in enumerate(offsets):
        clock.observe(i * 1000.0, i + offset)
        window = offsets[max(0, i - 119):i + 1]
        assert clock.offset_s == pytest.approx(window.min())
