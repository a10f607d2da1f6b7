"""Realistic device signals for the simulator: NeuroKit2's ECG/PPG simulators, with scenarios.

``scenario_signal`` yields consecutive chunks (one per simulated 10 s) forever, so a device can
stream for as long as it likes with bounded memory. Scenarios: ``normal``, ``exercise_ramp``
(rate rising to 150/min and back), ``bradycardia`` (40/min), ``tachycardia`` (140/min),
``irregular`` (atrial-fibrillation-like random RR), ``motion_artefacts`` (bursts of large
movement noise), ``lead_off`` (the electrode loses contact: a flat, railed signal for a while),
``network_drop`` (a normal signal; ``drop_schedule`` takes the device offline for a while).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

CHUNK_S = 10
SCENARIO_RATES = {"bradycardia": 40.0, "tachycardia": 140.0}


def _simulate(kind: str, seconds: int, rate: float, hr: float, seed: int, noise: float) -> np.ndarray:
    import neurokit2 as nk  # here: importing it takes seconds, and the CLI must answer --help without it

    if kind == "ecg":
        return nk.ecg_simulate(duration=seconds, sampling_rate=int(rate), heart_rate=hr, noise=noise,
                               random_state=seed)
    return nk.ppg_simulate(duration=seconds, sampling_rate=int(rate), heart_rate=hr, frequency_modulation=0.1,
                           ibi_randomness=0.05, drift=0.1, motion_amplitude=0.05, powerline_amplitude=0.0,
                           burst_amplitude=0.0, random_state=seed)


def _beat(kind: str, rate: float, seed: int) -> np.ndarray:
    """One beat's waveform (a cycle cut from a simulated 60/min signal), for irregular rhythms."""
    one = _simulate(kind, 4, rate, 60.0, seed, 0.0)
    n = int(rate)
    return one[n:2 * n]


def _irregular(kind: str, seconds: int, rate: float, hr: float, rng: np.random.Generator,
               beat: np.ndarray) -> np.ndarray:
    """Beats placed at random RR intervals (coefficient of variation ~25%), as in atrial fibrillation."""
    n = int(seconds * rate)
    out = np.zeros(n + beat.size) + (0.0 if kind == "ecg" else float(beat.min()))
    t = 0
    mean_rr = 60.0 / hr
    while t < n:
        rr = float(np.clip(rng.normal(mean_rr, 0.25 * mean_rr), 0.35, 2.0))
        width = min(beat.size, int(rr * rate))
        seg = beat[:width]
        out[t:t + width] = seg
        t += int(rr * rate)
    return out[:n] + rng.normal(0, 0.01, n)


def scenario_signal(kind: str, scenario: str, rate: float, heart_rate: float = 72.0,
                    seed: int = 0) -> Iterator[np.ndarray]:
    """Consecutive chunks of a simulated signal for ``scenario``."""
    rng = np.random.default_rng(seed)
    beat = _beat(kind, rate, seed) if scenario == "irregular" else None
    chunk = 0
    while True:
        t_s = chunk * CHUNK_S
        hr = SCENARIO_RATES.get(scenario, heart_rate)
        if scenario == "exercise_ramp":  # up over 2 minutes to 150/min, hold a minute, down over 2 minutes
            phase = t_s % 300
            peak = 150.0
            if phase < 120:
                hr = heart_rate + (peak - heart_rate) * phase / 120
            elif phase < 180:
                hr = peak
            else:
                hr = peak - (peak - heart_rate) * (phase - 180) / 120
        if beat is not None:
            x = _irregular(kind, CHUNK_S, rate, hr, rng, beat)
        else:
            x = _simulate(kind, CHUNK_S, rate, hr, seed + chunk, 0.01)
        n = x.size
        if scenario == "motion_artefacts" and chunk % 3 == 1:  # 10 s of movement every 30 s
            burst = np.cumsum(rng.normal(0, 0.3, n)) * 0.2 + rng.normal(0, 1.0, n)
            x = x + burst * (2.0 if kind == "ecg" else 1.5)
        if scenario == "lead_off" and chunk % 4 in (1, 2):  # 20 s of lost contact every 40 s
            x = np.full(n, 4.0 if kind == "ecg" else 0.0) + rng.normal(0, 0.002, n)
        chunk += 1
        yield np.asarray(x, dtype=np.float64)


def drop_schedule(scenario: str, seed: int = 0, online_s: int = 20, offline_s: int = 8) -> Callable[[int], bool]:
    """For ``network_drop``: whether the device is offline in a given second of streaming
    (``offline_s`` offline after ``online_s`` online, then online again for ``online_s + offline_s``,
    repeating; the seed shifts the first drop by up to 4 s); never for other scenarios."""
    if scenario != "network_drop":
        return lambda second: False
    first = online_s + seed % 5
    period = 2 * online_s
    return lambda second: second >= first and (second - first) % period < offline_s
