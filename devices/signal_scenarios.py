"""Realistic device signals for the simulator: NeuroKit2's ECG/PPG simulators, with scenarios.

``scenario_signal`` yields consecutive chunks of ``CHUNK_S`` seconds forever, so a device can
stream for as long as it likes with bounded memory. Scenarios: ``normal``, ``exercise_ramp``
(rate rising to 150/min and back), ``bradycardia`` (40/min), ``tachycardia`` (140/min),
``irregular`` (atrial fibrillation: random RR), ``ectopic`` (sinus rhythm with premature beats, PVC-like
for ECG, at ``ECTOPIC_PER_MIN``, each followed by a compensatory pause), and, for 20 s every 40 s from
10 s: ``motion_artefacts`` (movement), ``lead_off`` (the electrode loses contact: ECG railed, PPG
ambient light), ``sensor_off`` (unplugged: a flat 0), ``clipping`` (the baseline runs to the top of the
ADC's range, which clips the signal); ``network_drop`` (a normal signal; ``drop_schedule`` takes the
device offline for a while). Beats in ``ectopic`` and ``irregular`` are a template laid at each
interval.

Chunks join seamlessly: each simulated stretch is cut at the same phase of the beat at both ends
(ECG: midway between R-peaks, on the isoelectric line; PPG: at a pulse's foot) and its start is
level-matched to the previous chunk's end, so the junction holds an ordinary beat-to-beat interval
and no step. (Independent 10 s simulations glued end to end put an interval of anywhere between
0 and 2 RR, and for PPG ``ppg_simulate``'s flat last second, at every junction.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import numpy as np
import scipy.signal

CHUNK_S = 10  # seconds per yielded chunk
SEGMENT_S = 30  # seconds simulated at a time (then cut at beats and joined)
SCENARIO_RATES = {"bradycardia": 40.0, "tachycardia": 140.0}
SIGNAL_ARTEFACTS = ("motion_artefacts", "lead_off", "sensor_off", "clipping")  # on by artefact_envelope
ECTOPIC_PER_MIN = 8.0  # premature beats a minute in ``ectopic``
PREMATURE = 0.5  # an ectopic beat's interval, of the sinus one
ARTEFACT_START_S, ARTEFACT_ON_S, ARTEFACT_PERIOD_S = 10.0, 20.0, 40.0  # motion_artefacts / lead_off schedule
ECG_RAIL_MV = 4.0  # where a detached electrode drives an ECG front end (its rail)
JOIN_S = 0.2  # level-matching ramp at a chunk's start


def _nk() -> Any:
    import neurokit2  # here: importing it takes seconds, and the CLI must answer --help without it

    return neurokit2


def _simulate(kind: str, seconds: float, rate: float, hr: float, seed: int) -> np.ndarray:
    nk = _nk()
    if kind == "ecg":
        return nk.ecg_simulate(duration=seconds, sampling_rate=int(rate), heart_rate=hr, noise=0.01,
                               random_state=seed)
    # ppg_simulate ends on a flat stretch (its last pulse is not completed): simulate 2 s more, cut them.
    x = nk.ppg_simulate(duration=seconds + 2, sampling_rate=int(rate), heart_rate=hr, frequency_modulation=0.1,
                        ibi_randomness=0.05, drift=0.1, motion_amplitude=0.05, powerline_amplitude=0.0,
                        burst_amplitude=0.0, random_state=seed)
    return x[:int(seconds * rate)]


def beat_marks(kind: str, x: np.ndarray, rate: float) -> np.ndarray:
    """Indices at the same phase of every beat: ECG midway between successive R-peaks, PPG the foot
    (minimum) before each systolic peak."""
    fs, nk = int(rate), _nk()
    if kind == "ecg":
        _, info = nk.ecg_peaks(nk.ecg_clean(x, sampling_rate=fs), sampling_rate=fs)
        peaks = np.asarray(info["ECG_R_Peaks"], dtype=int)
        return (peaks[:-1] + peaks[1:]) // 2
    peaks = np.asarray(nk.ppg_findpeaks(nk.ppg_clean(x, sampling_rate=fs), sampling_rate=fs)["PPG_Peaks"], dtype=int)
    return np.array([a + int(np.argmin(x[a:b])) for a, b in pairwise(peaks.tolist())], dtype=int)


def _whole_beats(kind: str, x: np.ndarray, rate: float) -> np.ndarray:
    """``x`` from its first beat mark to its last: a whole number of beats."""
    marks = beat_marks(kind, x, rate)
    return x[marks[0]:marks[-1]] if marks.size >= 2 else x


def _beat_template(kind: str, rate: float, seed: int) -> np.ndarray:
    """One beat, zero at both ends: ECG 0.25 s before to 0.5 s after an R-peak (tapered); PPG one
    pulse foot to foot (its baseline trend removed), to be stretched to each interval."""
    fs, nk = int(rate), _nk()
    x = _simulate(kind, 12, rate, 60.0, seed)
    if kind == "ecg":
        x = x - np.median(x)
        _, info = nk.ecg_peaks(nk.ecg_clean(x, sampling_rate=fs), sampling_rate=fs)
        r = int(info["ECG_R_Peaks"][5])
        beat = x[r - int(0.25 * fs):r + int(0.5 * fs)]
        return beat * scipy.signal.windows.tukey(beat.size, 0.3)
    marks = beat_marks(kind, x, rate)
    pulse = x[marks[4]:marks[5] + 1]
    return pulse - np.linspace(pulse[0], pulse[-1], pulse.size)


class _TemplateBeats:
    """Beats laid from one template at given intervals: ECG beats overlap-added at each onset; PPG pulses
    stretched to each interval (a short interval gives a short, a long one a long pulse wave).
    Continuous across chunks. ``irregular``: random intervals (coefficient of variation ~25 %, 0.35-2 s),
    as in atrial fibrillation. ``ectopic``: sinus rhythm (+/-3 %) where a beat comes early (at half the
    interval) ``ECTOPIC_PER_MIN`` times a minute on average, followed by a compensatory pause (the two
    intervals make two ordinary ones); an ECG ectopic beat is wide and inverted (ventricular), a PPG
    one a weaker pulse."""

    def __init__(self, kind: str, scenario: str, rate: float, seed: int) -> None:
        self.kind, self.scenario, self.rate = kind, scenario, rate
        self.beat = _beat_template(kind, rate, seed)
        wide = np.interp(np.linspace(0, self.beat.size - 1, int(self.beat.size * 1.6)), np.arange(self.beat.size),
                         self.beat)
        self.ectopic_beat = -1.2 * wide if kind == "ecg" else 0.7 * self.beat
        self.rng = np.random.default_rng(seed)
        self.carry = np.zeros(0)  # ECG: the tails of beats that run into the next chunk
        self.pause = 0.0  # the compensatory pause owed after an ectopic beat (s)

    def _next(self, mean_rr: float) -> tuple[float, bool]:
        """The next interval (s) and whether the beat that starts it is ectopic."""
        if self.scenario == "irregular":
            return float(np.clip(self.rng.normal(mean_rr, 0.25 * mean_rr), 0.35, 2.0)), False
        if self.pause:  # the ectopic beat, then its compensatory pause
            rr, self.pause = self.pause, 0.0
            return rr, True
        rr = mean_rr * float(self.rng.normal(1.0, 0.03))
        if self.rng.random() < ECTOPIC_PER_MIN * mean_rr / 60.0:
            self.pause = 2 * rr - PREMATURE * rr
            return PREMATURE * rr, False
        return rr, False

    def chunk(self, seconds: float, hr: float) -> np.ndarray:
        n = int(seconds * self.rate)
        mean_rr = 60.0 / hr
        out = np.zeros(n + self.ectopic_beat.size + int(2.0 * self.rate))  # the last beat may start at n - 1
        out[:self.carry.size] += self.carry
        t = 0
        while t < n:
            rr_s, ectopic = self._next(mean_rr)
            rr = int(rr_s * self.rate)
            beat = self.ectopic_beat if ectopic else self.beat
            if self.kind == "ecg":
                out[t:t + beat.size] += beat
            else:
                out[t:t + rr] = np.interp(np.linspace(0, beat.size - 1, rr), np.arange(beat.size), beat)
            t += rr
        if self.kind == "ecg":
            self.carry = out[n:].copy()
            x = out[:n]
        else:
            x = out[:t]  # whole pulses only
        return x + self.rng.normal(0, 0.01, x.size)


def _motion(n: int, rate: float, kind: str, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Movement: band-limited random motion (ECG 0.3-15 Hz, PPG 0.2-4 Hz, where motion puts its power)
    of ``scale`` RMS, plus, for ECG, random electrode-contact steps of the baseline."""
    band = [0.3, 15.0] if kind == "ecg" else [0.2, 4.0]
    band[1] = min(band[1], 0.45 * rate)
    sos = scipy.signal.butter(2, band, btype="bandpass", fs=rate, output="sos")
    wobble = scipy.signal.sosfilt(sos, rng.standard_normal(n + int(2 * rate)))[int(2 * rate):]
    wobble *= scale / (wobble.std() or 1.0)
    if kind == "ecg":
        wobble += np.cumsum(rng.standard_normal(n) * (rng.random(n) < 3 / rate)) * scale
    return wobble


def _artefact(scenario: str, kind: str, x: np.ndarray, rate: float, scale: float,
              rng: np.random.Generator) -> np.ndarray:
    """What the device sends instead of ``x`` while the artefact of ``scenario`` is on."""
    if scenario == "motion_artefacts":  # as large as movement gets: several times the signal
        return x + _motion(x.size, rate, kind, (3.5 if kind == "ecg" else 3.0) * scale, rng)
    if scenario == "sensor_off":  # unplugged: the front end reads 0
        return np.zeros(x.size)
    if scenario == "clipping":  # the baseline runs near the top of the ADC's range; what goes above clips
        top = float(np.max(x)) + scale
        return np.minimum(3.0 * (x - np.median(x)) + top - 0.2 * scale, top)
    if kind == "ecg":  # lead off: the electrode drives the front end to its rail
        return np.full(x.size, ECG_RAIL_MV)
    # A PPG sensor off the skin sees ambient light: the ADC's noise around a low level, in its steps.
    return np.round(rng.normal(0.0, 0.002, x.size) / 0.001) * 0.001


def artefact_envelope(t: np.ndarray) -> np.ndarray:
    """1 while the motion / lead-off artefact is on (20 s every 40 s from 10 s), else 0."""
    return ((t >= ARTEFACT_START_S) & ((t - ARTEFACT_START_S) % ARTEFACT_PERIOD_S < ARTEFACT_ON_S)).astype(float)


def exercise_rate(t_s: float, rest: float, peak: float = 150.0) -> float:
    """Exercise ramp: up over 2 minutes to ``peak``/min, hold a minute, down over 2 minutes, repeat."""
    phase = t_s % 300
    if phase < 120:
        return rest + (peak - rest) * phase / 120
    if phase < 180:
        return peak
    return peak - (peak - rest) * (phase - 180) / 120


def _beats(kind: str, scenario: str, rate: float, heart_rate: float, seed: int) -> Iterator[np.ndarray]:
    """Seamless stretches of whole beats (about ``SEGMENT_S`` each), level-matched at each junction."""
    irregular = _TemplateBeats(kind, scenario, rate, seed) if scenario in ("irregular", "ectopic") else None
    join = max(int(JOIN_S * rate), 1)
    last: float | None = None
    made = 0  # samples so far
    part = 0
    while True:
        hr = SCENARIO_RATES.get(scenario, heart_rate)
        if scenario == "exercise_ramp":
            hr = exercise_rate(made / rate, heart_rate)
        if irregular is not None:
            x = np.array(irregular.chunk(SEGMENT_S, hr), dtype=np.float64)
        else:
            # The same random state for every stretch: NeuroKit2 draws the beat's morphology from it, and
            # a different P/QRS/T shape at every junction is not what one patient's heart does.
            x = np.array(_whole_beats(kind, _simulate(kind, SEGMENT_S + 3, rate, hr, seed), rate), dtype=np.float64)
        if last is not None:
            ramp = np.linspace(1.0, 0.0, min(join, x.size))
            x[:ramp.size] += (last - x[0]) * ramp
        last = float(x[-1])
        made += x.size
        part += 1
        yield x


def scenario_signal(kind: str, scenario: str, rate: float, heart_rate: float = 72.0,
                    seed: int = 0) -> Iterator[np.ndarray]:
    """Consecutive chunks of exactly ``CHUNK_S`` seconds of a simulated signal for ``scenario`` (ECG in
    mV, PPG in arbitrary units), cut from seamless stretches of whole beats; artefacts by the clock."""
    rng = np.random.default_rng(seed)
    size = int(CHUNK_S * rate)
    source = _beats(kind, scenario, rate, heart_rate, seed)
    buffer = np.zeros(0)
    elapsed = 0  # samples yielded so far
    scale = None  # the clean signal's RMS, for artefact amplitudes
    while True:
        while buffer.size < size:
            buffer = np.concatenate((buffer, next(source)))
        x, buffer = buffer[:size].copy(), buffer[size:]
        if scale is None:
            scale = float(np.std(x)) or 1.0
        if scenario in SIGNAL_ARTEFACTS:
            on = artefact_envelope((elapsed + np.arange(size)) / rate) > 0
            if on.any():
                x = np.where(on, _artefact(scenario, kind, x, rate, scale, rng), x)
        elapsed += size
        yield x


def drop_schedule(scenario: str, seed: int = 0, online_s: int = 20, offline_s: int = 8) -> Callable[[int], bool]:
    """For ``network_drop``: whether the device is offline in a given second of streaming
    (``offline_s`` offline after ``online_s`` online, then online again for ``online_s + offline_s``,
    repeating; the seed shifts the first drop by up to 4 s); never for other scenarios."""
    if scenario != "network_drop":
        return lambda second: False
    first = online_s + seed % 5
    period = 2 * online_s
    return lambda second: second >= first and (second - first) % period < offline_s
