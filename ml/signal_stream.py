"""Streaming NeuroKit2-style analysis of live ECG / PPG.

Re-running ``nk.ecg_process`` on the last 10 s every second costs tens of milliseconds per stream
and second, almost all of it spent re-filtering and re-detecting signal that was already analysed.
Here each sample is filtered once (causal IIR with carried state), peaks are searched only in the
newly finalised part of a short rolling buffer, and the per-second figures are computed from a
bounded history of beat times. The algorithms are NeuroKit2's defaults, adapted to streaming:

* cleaning: the filters of ``nk.ecg_clean(method="neurokit")`` (0.5 Hz high-pass Butterworth,
  order 5, then the 50 Hz moving-average "powerline" filter) and ``nk.ppg_clean(method="elgendi")``
  (0.5-8 Hz band-pass Butterworth, order 2 as in NeuroKit2 0.2.x), applied forward only
  (``sosfilt`` instead of ``sosfiltfilt``/``filtfilt``). Causal filtering delays the waveform by a
  few samples but leaves beat-to-beat intervals, hence rate and HRV, unchanged;
* peaks: ports of ``_ecg_findpeaks_neurokit`` (gradient threshold QRS detector) and
  ``_ppg_findpeaks_elgendi`` (two moving averages), run on ~2.5 s windows;
* quality: template matching of the recent beats, as NeuroKit2's ``ppg_quality("templatematch")``
  and (in spirit) ``ecg_quality("averageQRS")``, plus flat-line / saturation / amplitude checks.

Public functions take arrays and a sampling rate and return plain data; ``StreamAnalyser`` only holds
the per-stream state (bounded ring buffers) and composes them.
"""

from __future__ import annotations

import math
from collections import deque
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import scipy.ndimage
import scipy.signal

Kind = Literal["ecg", "ppg"]

# NeuroKit2's default detector parameters (seconds / weights), kept under the same names.
ECG_PEAKS = {"smoothwindow": 0.1, "avgwindow": 0.75, "gradthreshweight": 1.5, "minlenweight": 0.4, "mindelay": 0.3}
PPG_PEAKS = {"peakwindow": 0.111, "beatwindow": 0.667, "beatoffset": 0.02, "mindelay": 0.3}

_EMPTY = np.empty(0, dtype=np.int64)

try:  # scipy's compiled SOS kernel; the public wrapper spends ~50 us per call validating arguments.
    from scipy.signal._sosfilt import _sosfilt as _sosfilt_kernel
except ImportError:  # pragma: no cover - other scipy layouts fall back to the public function
    _sosfilt_kernel = None


def _sosfilt(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.sosfilt(sos, x, zi=zi)`` for 1-D float64 ``x``, without the argument checks."""
    if _sosfilt_kernel is None:
        return scipy.signal.sosfilt(sos, x, zi=zi)
    y = np.array(x, dtype=np.float64, order="C", ndmin=2)
    state = np.array(zi, dtype=np.float64, order="C", ndmin=3)
    _sosfilt_kernel(sos, y, state)
    return y[0], state[0]


def _boxcar(x: np.ndarray, size: int) -> np.ndarray:
    """``scipy.ndimage.uniform_filter1d(x, size, mode="nearest")`` (NeuroKit2's boxcar smoothing) via a
    cumulative sum: same values, a fraction of the call overhead on short windows."""
    size = max(int(size), 1)
    left = size // 2
    padded = np.empty(x.size + size)
    padded[0] = 0.0
    padded[1:left + 1] = x[0]
    padded[left + 1:left + 1 + x.size] = x
    padded[left + 1 + x.size:] = x[-1]
    c = np.cumsum(padded)
    return (c[size:] - c[:-size]) / size


# =============================================================================
# Cleaning
# =============================================================================
@lru_cache(maxsize=64)
def stream_filter_design(kind: Kind, sampling_rate: float) -> dict[str, Any]:
    """Design (once per kind and rate) NeuroKit2's cleaning filters for causal streaming use.

    Returns ``nk_sos`` (the Butterworth stage exactly as NeuroKit2 designs it), ``powerline`` (the
    moving-average taps of NeuroKit2's powerline filter, ECG only, else ``None``), ``sos`` (both
    cascaded as one SOS array, what ``stream_clean`` runs) and ``zi`` (the unit-step steady state of
    ``sos``, scaled by the first sample to start without a transient). The result is cached and
    shared between streams: do not modify it.
    """
    fs = float(sampling_rate)
    if kind == "ecg":
        if fs < 50:
            raise ValueError(f"ECG needs a sampling rate of at least 50 Hz, got {fs}")
        nk_sos = scipy.signal.butter(5, 0.5, btype="highpass", output="sos", fs=fs)
        # NeuroKit2: b = ones(int(fs / 50)) if fs >= 100 else ones(2); a = [len(b)].
        taps = np.ones(int(fs / 50) if fs >= 100 else 2)
        powerline: np.ndarray | None = taps / taps.size
        sos = np.vstack([nk_sos, scipy.signal.tf2sos(powerline, [1.0])]) if taps.size > 1 else nk_sos
    elif kind == "ppg":
        if fs <= 16:
            raise ValueError(f"PPG needs a sampling rate above 16 Hz (8 Hz high cut), got {fs}")
        nk_sos = scipy.signal.butter(2, [0.5, 8.0], btype="bandpass", output="sos", fs=fs)
        powerline = None
        sos = nk_sos
    else:
        raise ValueError(f"kind must be 'ecg' or 'ppg', got {kind!r}")
    return {"nk_sos": nk_sos, "powerline": powerline, "sos": np.ascontiguousarray(sos),
            "zi": scipy.signal.sosfilt_zi(sos)}


def stream_clean(samples: np.ndarray, sos: np.ndarray, zi: np.ndarray | None = None,
                 zi_unit: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Causal version of NeuroKit2's cleaning: filter one frame, carrying the filter state.

    ``zi`` is the state returned for the previous frame; ``None`` starts (or restarts, after a gap)
    in the steady state for the first sample (``zi_unit * x[0]``), so a DC offset does not ring.
    Returns ``(cleaned, zi)``.
    """
    x = np.asarray(samples, dtype=float)
    if zi is None:
        unit = scipy.signal.sosfilt_zi(sos) if zi_unit is None else zi_unit
        zi = unit * x[0]
    return _sosfilt(sos, x, zi)


# =============================================================================
# Peak detection on a window
# =============================================================================
def _edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends of the runs of True, as NeuroKit2 computes them (ends after the first start)."""
    m = mask.view(np.int8)
    d = m[1:] - m[:-1]
    beg = (d == 1).nonzero()[0]
    if beg.size == 0:
        return _EMPTY, _EMPTY
    end = (d == -1).nonzero()[0]
    end = end[end > beg[0]]
    n = min(beg.size, end.size)
    return beg[:n], end[:n]


def _most_prominent(signal: np.ndarray, beg: np.ndarray, end: np.ndarray, mindelay: int,
                    last_peak: int | None) -> np.ndarray:
    """NeuroKit2's inner loop: the most prominent local maximum of each region, spaced by ``mindelay``.

    A region with a single strict local maximum and no flat step (the usual QRS / pulse wave) takes
    it directly; only the others go through ``scipy.signal.find_peaks`` (same result, 5x cheaper).
    """
    peaks = []
    last = last_peak
    for b, e in zip(beg.tolist(), end.tolist(), strict=True):
        data = signal[b:e]
        step = data[1:] - data[:-1]
        tops = ((step[:-1] > 0) & (step[1:] < 0)).nonzero()[0]
        if tops.size == 1 and step.all():
            peak = b + int(tops[0]) + 1
        else:
            locmax, props = scipy.signal.find_peaks(data, prominence=(None, None))
            if not locmax.size:
                continue
            peak = b + int(locmax[np.argmax(props["prominences"])])
        if last is None or peak - last > mindelay:
            peaks.append(peak)
            last = peak
    return np.asarray(peaks, dtype=np.int64)


def ecg_findpeaks_window(cleaned: np.ndarray, sampling_rate: float, last_peak: int | None = None,
                         from_index: int = 0, smoothwindow: float = 0.1, avgwindow: float = 0.75,
                         gradthreshweight: float = 1.5, minlenweight: float = 0.4,
                         mindelay: float = 0.3) -> np.ndarray:
    """R-peaks in a window of cleaned ECG: NeuroKit2's default ``_ecg_findpeaks_neurokit``.

    QRS complexes are where the smoothed absolute gradient exceeds 1.5x its 0.75 s moving average;
    the R-peak is the most prominent maximum of each long-enough complex. Streaming additions:
    ``last_peak`` (index relative to the window, may be negative) extends the refractory period
    across windows, and complexes ending before ``from_index`` are skipped (already analysed).
    The thresholds use centred windows, so peaks are final only ~0.55 s before the window's end.
    """
    x = np.asarray(cleaned, dtype=float)
    if x.size < 3:
        return _EMPTY
    absgrad = np.empty_like(x)  # |np.gradient(x)|, without its generic overhead
    np.subtract(x[2:], x[:-2], out=absgrad[1:-1])
    absgrad[1:-1] *= 0.5
    absgrad[0], absgrad[-1] = x[1] - x[0], x[-1] - x[-2]
    np.abs(absgrad, out=absgrad)
    smoothgrad = _boxcar(absgrad, round(smoothwindow * sampling_rate))
    avggrad = _boxcar(smoothgrad, round(avgwindow * sampling_rate))
    beg, end = _edges(smoothgrad > gradthreshweight * avggrad)
    if beg.size == 0:
        return _EMPTY
    lengths = end - beg
    keep = (lengths >= lengths.sum() / lengths.size * minlenweight) & (end > from_index)
    return _most_prominent(x, beg[keep], end[keep], round(sampling_rate * mindelay), last_peak)


def ppg_findpeaks_window(cleaned: np.ndarray, sampling_rate: float, last_peak: int | None = None,
                         from_index: int = 0, peakwindow: float = 0.111, beatwindow: float = 0.667,
                         beatoffset: float = 0.02, mindelay: float = 0.3) -> np.ndarray:
    """Systolic peaks in a window of cleaned PPG: NeuroKit2's default ``_ppg_findpeaks_elgendi``.

    Elgendi et al. (2013): the squared positive signal's 0.111 s moving average must exceed its
    0.667 s moving average (plus an offset) for at least 0.111 s; the peak is the most prominent
    maximum of that wave. ``last_peak`` / ``from_index`` as in ``ecg_findpeaks_window``.
    """
    x = np.asarray(cleaned, dtype=float)
    if x.size < 3:
        return _EMPTY
    sqrd = np.maximum(x, 0.0) ** 2
    ma_peak = _boxcar(sqrd, round(peakwindow * sampling_rate))
    ma_beat = _boxcar(sqrd, round(beatwindow * sampling_rate))
    beg, end = _edges(ma_peak > ma_beat + beatoffset * sqrd.sum() / sqrd.size)
    if beg.size == 0:
        return _EMPTY
    keep = (end - beg >= round(peakwindow * sampling_rate)) & (end > from_index)
    return _most_prominent(x, beg[keep], end[keep], round(sampling_rate * mindelay), last_peak)


# =============================================================================
# Rate and HRV from RR intervals
# =============================================================================
def rr_beat_counts(rr: np.ndarray, min_rr: float = 0.3, max_rr: float = 2.0, max_deviation: float = 0.3,
                   size: int = 5, max_rejected: float = 0.2) -> np.ndarray:
    """How many beats each RR interval (seconds) stands for: 1 if plausible, k (2 or 3) if it holds
    k - 1 missed beats, 0 if it is an artefact. Plausible: within ``[min_rr, max_rr]`` and within 30 %
    of the local (5-beat running) median; a missed beat makes an interval ~2x its neighbours (small
    pulses after a short interval are what Elgendi's PPG detector misses, in NeuroKit2 as here), an
    extra beat two intervals ~0.5x. At either end the median is the nearest whole window's (not a
    mirrored one: mirroring two consecutive missed beats at the newest end makes 3 doubled intervals
    of 5, which the median then accepts). Detection artefacts are rare, so if more than
    ``max_rejected`` of the intervals fail the median test the rhythm itself is irregular (e.g.
    atrial fibrillation) and only the range test applies: rejecting half of an irregular rhythm's
    intervals would bias its rate. NaN (no interval, e.g. the first beat after a gap) counts 0."""
    rr = np.asarray(rr, dtype=float)
    ok = np.isfinite(rr)
    counts = np.zeros(rr.size, dtype=np.int64)
    ok[ok] = (rr[ok] >= min_rr) & (rr[ok] <= max_rr)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return counts
    values = rr[idx]
    if values.size >= size:  # running median; at the ends, that of the nearest whole window
        half = size // 2
        windows = np.lib.stride_tricks.sliding_window_view(values, size)
        medians = np.partition(windows, half, axis=1)[:, half]
        median = medians[np.clip(np.arange(values.size) - half, 0, medians.size - 1)]
    else:
        median = np.full_like(values, np.median(values))
    ratio = values / median
    k = np.rint(ratio)
    close = np.abs(ratio - k) <= max_deviation * k
    if np.count_nonzero(~close | (k != 1)) > max_rejected * values.size:
        counts[idx] = 1
        return counts
    counts[idx] = np.where(close & (k <= 3), k, 0).astype(np.int64)
    return counts


def rr_valid(rr: np.ndarray, **options: Any) -> np.ndarray:
    """Mask of the plausible RR intervals (``rr_beat_counts == 1``; same options)."""
    return rr_beat_counts(rr, **options) == 1


def rr_rate(rr: np.ndarray, valid: np.ndarray | None = None, min_intervals: int = 2) -> float | None:
    """Heart rate (/min) as 60 / mean RR. This equals the time average of NeuroKit2's interpolated
    ``ECG_Rate`` / ``PPG_Rate`` over the same beats (each interval weighs its own duration).
    ``valid`` is a mask, or ``rr_beat_counts`` (an interval holding missed beats then counts for
    as many beats, so the rate still covers the whole window instead of skipping that interval)."""
    rr = np.asarray(rr, dtype=float)
    if valid is None:
        valid = np.isfinite(rr)
    counts = np.asarray(valid).astype(np.int64)
    beats = int(counts.sum())
    if np.count_nonzero(counts == 1) < min_intervals:
        return None
    return float(60.0 * beats / rr[counts > 0].sum())


def rr_hrv(rr: np.ndarray, valid: np.ndarray | None = None, min_intervals: int = 5) -> dict[str, float | None]:
    """Time-domain HRV in ms: SDNN over the valid intervals, RMSSD over successive pairs of valid
    intervals only (never across a rejected interval or a gap). ``None`` with too few intervals."""
    rr = np.asarray(rr, dtype=float)
    ok = np.isfinite(rr) if valid is None else np.asarray(valid, dtype=bool)
    values = rr[ok]
    sdnn = None
    if values.size >= min_intervals:
        centred = values - values.sum() / values.size
        sdnn = math.sqrt(centred.dot(centred) / (values.size - 1)) * 1000.0
    diffs = (rr[1:] - rr[:-1])[ok[1:] & ok[:-1]]
    rmssd = math.sqrt(diffs.dot(diffs) / diffs.size) * 1000.0 if diffs.size >= min_intervals - 1 else None
    return {"rmssd": rmssd, "sdnn": sdnn}


# =============================================================================
# Quality
# =============================================================================
def signal_plausibility(raw: np.ndarray, cleaned: np.ndarray, reference_ptp: float | None = None,
                        saturation_fraction: float = 0.25, amplitude_range: tuple[float, float] = (0.1, 4.0),
                        ) -> dict[str, Any]:
    """Cheap checks on the latest raw / cleaned samples that make quality 0 whatever the beats look like.

    * ``flat``: the raw signal does not move (lead off, sensor unplugged), or the cleaned amplitude is
      below 1/1000 of the stream's usual one;
    * ``saturated``: >= 25 % of the samples sit at the minimum or at the maximum (railed ADC, clipping);
    * ``amplitude``: the cleaned peak-to-peak is outside 0.1-4x ``reference_ptp`` (the stream's
      recent typical value): motion bursts, electrode pops, or a detached sensor picking up noise.

    Returns ``{"ok": bool, "reason": str | None, "ptp": cleaned peak-to-peak}``.
    """
    raw = np.asarray(raw, dtype=float)
    cleaned = np.asarray(cleaned, dtype=float)
    ptp = float(np.ptp(cleaned)) if cleaned.size else 0.0
    if raw.size == 0:
        return {"ok": False, "reason": "flat", "ptp": ptp}
    hi, lo = raw.max(), raw.min()
    span = hi - lo
    if span <= 0 or (reference_ptp and ptp < 1e-3 * reference_ptp):
        return {"ok": False, "reason": "flat", "ptp": ptp}
    tol = 1e-6 * span
    limit = saturation_fraction * raw.size
    if np.count_nonzero(raw >= hi - tol) >= limit or np.count_nonzero(raw <= lo + tol) >= limit:
        return {"ok": False, "reason": "saturated", "ptp": ptp}
    if reference_ptp and not amplitude_range[0] * reference_ptp <= ptp <= amplitude_range[1] * reference_ptp:
        return {"ok": False, "reason": "amplitude", "ptp": ptp}
    return {"ok": True, "reason": None, "ptp": ptp}


def beats_template_quality(cleaned: np.ndarray, peaks: np.ndarray, sampling_rate: float,
                           recent_from: int | None = None) -> float:
    """Template-matching quality in [0, 1] of the beats at ``peaks`` (indices into ``cleaned``).

    Each beat (from 0.35 to 0.55 median RR around its peak, at most 0.3 s / 0.45 s) is correlated
    with the average of the *other* beats (leave-one-out, so that with few beats random segments do
    not match a template made of themselves), as NeuroKit2's ``ppg_quality("templatematch")`` and
    ``ecg_quality("averageQRS")`` compare beats to the average beat. Quality is the mean of the
    squared correlations (negative ones count as 0): the share of each beat's variance that the
    template explains, so that 0.5 means "as much noise as beat" (r = 0.71); plain r stays above
    0.6 with noise of the signal's own power, which is already hard to read. If ``recent_from`` is
    given, the result is the lower of the mean over all beats and over those at or after it, so that
    a burst of bad beats shows at once.
    Two beats are compared with each other; fewer give 0. Peaks whose segment falls outside
    ``cleaned`` are ignored.
    """
    peaks = np.asarray(peaks, dtype=np.int64)
    if peaks.size < 2:
        return 0.0
    intervals = sorted((peaks[1:] - peaks[:-1]).tolist())
    rr = min(max(intervals[len(intervals) // 2] / sampling_rate, 0.3), 2.0)
    before = round(min(0.35 * rr, 0.3) * sampling_rate)
    after = round(min(0.55 * rr, 0.45) * sampling_rate)
    peaks = peaks[(peaks - before >= 0) & (peaks + after <= len(cleaned))]
    if peaks.size < 2:
        return 0.0
    beats = cleaned[peaks[:, None] + np.arange(-before, after)[None, :]]
    beats -= beats.mean(axis=1, keepdims=True)
    total = beats.sum(axis=0)  # with two beats, "the others" of each is the other one
    # With others_i = total - beat_i: beat_i . others_i and |others_i|^2 from two products.
    bt = beats @ total
    bb = np.einsum("ij,ij->i", beats, beats)
    num = bt - bb
    den = np.sqrt(np.maximum(bb * (total @ total - 2.0 * bt + bb), 0.0))
    corr = np.clip(np.divide(num, den, out=np.zeros_like(num), where=den > 0), 0.0, 1.0)
    corr *= corr
    quality = float(corr.sum() / corr.size)
    if recent_from is not None:
        recent = corr[peaks >= recent_from]
        if recent.size:
            quality = min(quality, float(recent.mean()))
    return quality


# =============================================================================
# Per-stream state
# =============================================================================
class StreamAnalyser:
    """Per-stream state: feed frames with ``push``, get one analysis per whole second of signal.

    Memory is bounded: two ``buffer_s`` ring buffers (raw and cleaned) and deques of beat times,
    whatever the stream's length. Analyses lag the signal by up to ~1.5 s for beats (a peak is only
    final once the detector's centred windows are complete), by nothing for quality checks.
    """

    def __init__(self, kind: Kind = "ecg", sampling_rate: float = 250.0, window_s: float = 10.0,
                 hrv_window_s: float = 60.0, buffer_s: float = 8.0, quality_window_s: float = 6.0) -> None:
        if kind not in ("ecg", "ppg"):
            raise ValueError(f"kind must be 'ecg' or 'ppg', got {kind!r}")
        self.kind: Kind = kind
        self.sampling_rate = fs = float(sampling_rate)
        self.window_s = float(window_s)
        self.hrv_window_s = max(float(hrv_window_s), self.window_s)
        self.quality_window_s = float(quality_window_s)
        design = stream_filter_design(kind, fs)
        self._sos, self._zi_unit = design["sos"], design["zi"]
        self._zi: np.ndarray | None = None
        if kind == "ecg":
            self._find = ecg_findpeaks_window
            half = (ECG_PEAKS["smoothwindow"] + ECG_PEAKS["avgwindow"]) / 2
        else:
            self._find = ppg_findpeaks_window
            half = (PPG_PEAKS["peakwindow"] + PPG_PEAKS["beatwindow"]) / 2
        self._mindelay = int(np.rint(0.3 * fs))
        # Peaks before now - guard are final: the detector's centred windows reach ``half`` past a
        # sample, and a QRS / pulse region ends < 0.1 s after its peak.
        self._guard = math.ceil((half + 0.1) * fs)
        self.lag_s = self._guard / fs  # beats reach the analyses this late; the rate window ends here
        self._context = round(1.0 * fs)  # detector context before the newly searched part
        self._tolerance = round(0.1 * fs)  # a peak may shift a little between windows
        capacity = math.ceil(max(buffer_s, quality_window_s + 2.0, 4.0) * fs)
        self._raw = np.zeros(capacity)
        self._clean = np.zeros(capacity)
        self._n = 0  # samples since the stream started, gaps included (absolute index of the next one)
        self._valid_from = 0  # first sample after the last discontinuity
        self._searched_to = 0  # peaks before this absolute index are final
        self._last_peak: int | None = None
        self._tick = 1
        self._next_tick = round(fs)
        beats = math.ceil(self.hrv_window_s * 240 / 60) + 8  # >= hrv_window_s at up to 240 /min
        self._peaks: deque[int] = deque(maxlen=beats)
        self._rr: deque[float] = deque(maxlen=beats)  # samples; NaN after a discontinuity
        self._ptp: deque[float] = deque(maxlen=30)  # per-second cleaned peak-to-peak, for the reference
        self._gaps: deque[tuple[int, int]] = deque(maxlen=16)
        self._origin_ms: float | None = None

    # ------------------------------------------------------------------ feeding
    def push(self, samples: np.ndarray, t0_ms: float | None = None) -> list[dict[str, Any]]:
        """Add a frame; return the analyses completed by it (one per whole second of signal).

        ``t0_ms`` (device time of the frame's first sample), when given, detects lost frames (a gap
        is recorded, see ``gap``) and repeated ones (the overlapping samples are dropped). Non-finite
        samples are treated as a gap.
        """
        x = np.asarray(samples, dtype=float).ravel()
        if x.size == 0:
            return []
        if t0_ms is not None:
            x = self._align(x, float(t0_ms))
            if x.size == 0:
                return []
        finite = np.isfinite(x)
        if not finite.all():
            out: list[dict[str, Any]] = []
            start = 0
            for bad, run in _runs(finite):
                if bad:
                    self.gap(run)
                else:
                    out.extend(self._feed(x[start:start + run]))
                start += run
            return out
        return self._feed(x)

    def gap(self, n_samples: int) -> None:
        """Record ``n_samples`` of missing signal. Time keeps running (analyses resume at the right
        ``t``), the filters restart on the next sample, no RR interval spans the gap, and seconds that
        fall entirely in the gap get no analysis."""
        n = int(n_samples)
        if n <= 0:
            return
        m = min(n, self._raw.size)
        for buf in (self._raw, self._clean):
            buf[:-m] = buf[m:]
            buf[-m:] = 0.0
        self._gaps.append((self._n, self._n + n))
        self._n += n
        self._valid_from = self._searched_to = self._n
        self._zi = None
        while self._next_tick <= self._n:
            self._tick += 1
            self._next_tick = round(self._tick * self.sampling_rate)

    def _align(self, x: np.ndarray, t0_ms: float) -> np.ndarray:
        fs = self.sampling_rate
        if self._origin_ms is None:
            self._origin_ms = t0_ms - self._n * 1000.0 / fs
            return x
        offset = (t0_ms - self._origin_ms) * fs / 1000.0 - self._n  # samples ahead of expectation
        slack = max(3.0, 0.04 * fs)
        if offset > slack:
            self.gap(round(offset))
        elif offset < -slack:
            x = x[round(-offset):]
        return x

    def _feed(self, x: np.ndarray) -> list[dict[str, Any]]:
        if self._zi is None:
            self._zi = self._zi_unit * x[0]
        y, self._zi = _sosfilt(self._sos, x, self._zi)
        out = []
        pos = 0
        while pos < x.size:
            take = min(x.size - pos, self._next_tick - self._n)
            self._append(x[pos:pos + take], y[pos:pos + take])
            pos += take
            if self._n == self._next_tick:
                out.append(self._analyse())
                self._tick += 1
                self._next_tick = round(self._tick * self.sampling_rate)
        return out

    def _append(self, raw: np.ndarray, clean: np.ndarray) -> None:
        n = raw.size
        cap = self._raw.size
        if n >= cap:
            self._raw[:] = raw[-cap:]
            self._clean[:] = clean[-cap:]
        else:
            self._raw[:-n] = self._raw[n:]
            self._raw[-n:] = raw
            self._clean[:-n] = self._clean[n:]
            self._clean[-n:] = clean
        self._n += n

    # ------------------------------------------------------------------ analysis
    def _detect(self) -> list[int]:
        """Search the newly final part of the buffer for peaks; record them; return the new ones."""
        n, cap = self._n, self._clean.size
        final_to = n - self._guard
        if final_to <= self._searched_to:
            return []
        start = max(self._searched_to - self._context, self._valid_from, n - cap)
        window = self._clean[cap - (n - start):]
        lo = max(self._searched_to - self._tolerance, start) - start
        last = None if self._last_peak is None else self._last_peak - start
        rel = self._find(window, self.sampling_rate, last_peak=last, from_index=lo)
        rel = rel[(rel >= lo) & (rel < final_to - start)]
        self._searched_to = final_to
        new = []
        for p in (rel + start).tolist():
            last_peak = self._last_peak
            if last_peak is not None and p - last_peak <= self._mindelay:
                continue
            contiguous = last_peak is not None and last_peak >= self._valid_from
            self._peaks.append(p)
            self._rr.append(float(p - last_peak) if contiguous else math.nan)
            self._last_peak = p
            new.append(p)
        return new

    def _signal_seconds(self, since: int) -> float:
        """Seconds of real signal (not gap, not before the start) between ``since`` and now."""
        since = max(since, 0)
        missing = sum(max(0, min(e, self._n) - max(s, since)) for s, e in self._gaps)
        return (self._n - since - missing) / self.sampling_rate

    def _quality(self, peaks: np.ndarray) -> float:
        """Quality of the latest second: 0 if the latest samples fail ``signal_plausibility`` or if
        no beat was found for longer than 1.6 median RR (min 1.5 s: heavy noise raises the detector's
        threshold above every QRS), else ``beats_template_quality`` of the last ``quality_window_s``."""
        fs, n, cap = self.sampling_rate, self._n, self._raw.size
        recent = round(2.0 * fs)
        first = max(n - recent, self._valid_from, n - cap)
        if n - first < int(0.25 * fs):
            return 0.0
        reference = sorted(self._ptp)[len(self._ptp) // 2] if len(self._ptp) >= 5 else None
        check = signal_plausibility(self._raw[cap - (n - max(first, n - round(fs))):],
                                    self._clean[cap - (n - first):], reference)
        if check["reason"] in (None, "amplitude"):
            self._ptp.append(check["ptp"])
        if not check["ok"]:
            return 0.0
        tail = np.diff(peaks[-6:])
        allowed = max(1.5 * fs, 1.6 * float(np.median(tail))) if tail.size else 2.0 * fs
        if self._searched_to - self._valid_from > allowed and (
                not peaks.size or peaks[-1] < self._searched_to - allowed):
            return 0.0
        # Beats of the last quality_window_s whose segment holds no gap.
        buf_start = n - cap
        peaks = peaks[peaks >= max(n - int(self.quality_window_s * fs), buf_start + int(0.3 * fs))]
        for g0, g1 in self._gaps:
            if g1 > buf_start:
                peaks = peaks[(peaks + int(0.45 * fs) <= g0) | (peaks - int(0.3 * fs) >= g1)]
        return beats_template_quality(self._clean, peaks - buf_start, fs,
                                      recent_from=n - int(1.6 * fs) - buf_start)

    def _analyse(self) -> dict[str, Any]:
        fs, n = self.sampling_rate, self._n
        new = self._detect()
        peaks = np.fromiter(self._peaks, dtype=np.int64, count=len(self._peaks))
        rr = np.fromiter(self._rr, dtype=float, count=len(self._rr))
        in_hrv = peaks >= n - self.hrv_window_s * fs
        rr_s = rr[in_hrv] / fs
        counts = rr_beat_counts(rr_s)
        valid = counts == 1
        # The rate window is the last window_s of *final* signal (beats are final up to _searched_to,
        # ~0.6 s behind n), holding only intervals that start and end inside it: an interval that
        # straddles the window's start would weigh a beat from outside it (biasing irregular rhythms).
        in_window = peaks[in_hrv] - rr[in_hrv] >= self._searched_to - self.window_s * fs
        rate = rr_rate(rr_s, counts * in_window)
        hrv = rr_hrv(rr_s, valid)
        quality = self._quality(peaks)
        k = len(new)
        new_rr = rr[rr.size - k:] / fs if k else rr[:0]
        return {
            "t": n / fs,
            "hr": rate,
            "hrv": hrv,
            "quality": round(quality, 3),
            "beats": k,
            "window": round(self._signal_seconds(n - round(self.window_s * fs)), 3),
            "beats_t": [p / fs for p in new],
            "rr": [None if math.isnan(v) else float(v) for v in new_rr.tolist()],
        }

    # ------------------------------------------------------------------ introspection
    def rr_intervals(self, window_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(beat_times_s, rr_s)`` of the beats in the last ``window_s`` (default: the HRV window);
        ``rr_s`` is NaN for the first beat after a discontinuity."""
        window = self.hrv_window_s if window_s is None else window_s
        peaks = np.fromiter(self._peaks, dtype=np.int64, count=len(self._peaks))
        rr = np.fromiter(self._rr, dtype=float, count=len(self._rr))
        keep = peaks >= self._n - window * self.sampling_rate
        return peaks[keep] / self.sampling_rate, rr[keep] / self.sampling_rate

    def buffer_sizes(self) -> dict[str, int]:
        """Sizes of every per-stream buffer (all bounded; for tests and memory accounting)."""
        return {"raw": self._raw.size, "clean": self._clean.size, "peaks": len(self._peaks),
                "peaks_max": self._peaks.maxlen or 0, "rr": len(self._rr), "ptp": len(self._ptp),
                "gaps": len(self._gaps)}

    def nbytes(self) -> int:
        """Approximate memory held by this analyser's buffers, in bytes."""
        return int(self._raw.nbytes + self._clean.nbytes + 8 * (2 * (self._peaks.maxlen or 0) + 30 + 32)
                   + (self._zi.nbytes if self._zi is not None else 0))


def _runs(mask: np.ndarray) -> list[tuple[bool, int]]:
    """``(is_false, length)`` for each run of equal values in ``mask``."""
    change = np.flatnonzero(np.diff(mask.view(np.int8))) + 1
    bounds = np.concatenate(([0], change, [mask.size]))
    return [(not bool(mask[a]), int(b - a)) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]
