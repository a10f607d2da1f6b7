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

Beyond NeuroKit2, for live use on real recordings (validated in ``ml.validation``):

* no number without a pulse: each second's ``reason`` is ``no_signal`` (flat, clipped, only ADC noise,
  nothing in the cardiac band, no beat for a while) or ``poor_signal`` (beats that do not look like
  each other); then ``hr`` and HRV are ``None``, and once the pulse was lost no earlier beat counts;
* every beat counts in ``hr`` (ectopic ones too, as a monitor counts them), extra detections (T waves,
  dicrotic waves) do not; ectopic beats are reported as ``ectopic_per_min`` and left out of HRV,
  which is computed on NN intervals only.

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


def secondary_wave(height: float, interval: float, heights: Any, intervals: Any, max_height: float = 0.5,
                   max_interval: float = 0.75) -> bool:
    """Whether a PPG peak (cleaned ``height``, ``interval`` samples after the previous pulse) is the
    dicrotic / diastolic wave of that pulse rather than a pulse: under ``max_height`` of the recent
    pulses' median height and earlier than ``max_interval`` of their median interval. Elgendi's
    detector (NeuroKit2's default) takes a prominent diastolic wave for a pulse at slow rates. Needs
    three recent pulses (``heights``) and one interval (``intervals``), else ``False``."""
    if len(heights) < 3 or not len(intervals):
        return False
    return height < max_height * float(np.median(heights)) and interval < max_interval * float(np.median(intervals))


# =============================================================================
# Rate, ectopy and HRV from RR intervals
# =============================================================================
def _rr_ratios(rr: np.ndarray, min_rr: float, max_rr: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the plausible intervals (within ``[min_rr, max_rr]``) and each one's ratio to the local
    (``size``-beat running) median of them. At either end the median is the nearest whole window's (not
    a mirrored one: mirroring two consecutive missed beats at the newest end makes 3 doubled intervals
    of 5, which the median then accepts)."""
    rr = np.asarray(rr, dtype=float)
    ok = np.isfinite(rr)
    ok[ok] = (rr[ok] >= min_rr) & (rr[ok] <= max_rr)
    idx = np.flatnonzero(ok)
    values = rr[idx]
    if values.size >= size:
        half = size // 2
        windows = np.lib.stride_tricks.sliding_window_view(values, size)
        medians = np.partition(windows, half, axis=1)[:, half]
        median = medians[np.clip(np.arange(values.size) - half, 0, medians.size - 1)]
    else:
        median = np.full_like(values, np.median(values) if values.size else 1.0)
    return idx, values / median


def _split_and_premature(ratio: np.ndarray, max_deviation: float, premature: float) -> tuple[np.ndarray, np.ndarray]:
    """``split``: short intervals that, with the next one, make one ordinary interval (an extra
    detection, e.g. a T wave or a dicrotic notch), and that next one; ``premature``: the other short
    intervals (a real beat that came early)."""
    short = ratio < premature
    nxt = np.append(ratio[1:], np.inf)
    first = short & (np.abs(ratio + nxt - 1.0) <= max_deviation)
    split = first | np.append(False, first[:-1])
    return split, short & ~split


def rr_beat_counts(rr: np.ndarray, min_rr: float = 0.3, max_rr: float = 2.0, max_deviation: float = 0.3,
                   premature: float = 0.8, size: int = 5, max_rejected: float = 0.2, max_missed: int = 2) -> np.ndarray:
    """How many beats each RR interval (seconds) stands for, so that the rate counts every beat, as a
    monitor does: 1 for an interval between two real beats (premature / ectopic ones included, and the
    compensatory pause after them); k (2 up to ``1 + max_missed``) for an interval of k local medians
    (+/- ``max_deviation``) whose predecessor was not premature (it holds k - 1 missed beats: small
    pulses after a short interval are what Elgendi's PPG detector misses, in NeuroKit2 as here; the
    QRS detector does not miss beats that way, so for ECG ``max_missed=0``: a long interval there is a
    pause, one interval); 0 for artefacts: outside ``[min_rr, max_rr]``,
    or a short interval that with the next makes one ordinary interval (an extra detection; both
    count 0). The local median is that of ``size`` plausible intervals. Detection artefacts are rare,
    so if more than ``max_rejected`` of the intervals are not ordinary the rhythm itself is irregular
    (e.g. atrial fibrillation) and only the range test applies. NaN (no interval, e.g. the first beat
    after a gap) counts 0."""
    counts = np.zeros(np.size(rr), dtype=np.int64)
    idx, ratio = _rr_ratios(rr, min_rr, max_rr, size)
    if idx.size == 0:
        return counts
    k = np.rint(ratio)
    close = np.abs(ratio - k) <= max_deviation
    if np.count_nonzero(~close | (k != 1)) > max_rejected * ratio.size:
        counts[idx] = 1
        return counts
    split, early = _split_and_premature(ratio, max_deviation, premature)
    missed = close & (k >= 2) & (k <= 1 + max_missed) & ~np.append(False, early[:-1])
    counts[idx] = np.where(split, 0, np.where(missed, k, 1)).astype(np.int64)
    return counts


def rr_extra(rr: np.ndarray, min_rr: float = 0.3, max_rr: float = 2.0, max_deviation: float = 0.3,
             premature: float = 0.8, size: int = 5) -> np.ndarray:
    """Mask of the beats (each ending one RR interval, seconds) that are extra detections: they split one
    ordinary interval in two (a T wave, a dicrotic wave; see ``rr_beat_counts``)."""
    extra = np.zeros(np.size(rr), dtype=bool)
    idx, ratio = _rr_ratios(rr, min_rr, max_rr, size)
    if idx.size:
        extra[idx] = _split_and_premature(ratio, max_deviation, premature)[0] & (ratio < premature)
    return extra


def rr_ectopic(rr: np.ndarray, min_rr: float = 0.3, max_rr: float = 2.0, max_deviation: float = 0.3,
               premature: float = 0.8, size: int = 5) -> np.ndarray:
    """Mask of the beats (each ending one RR interval, seconds) that came early: their interval is below
    ``premature`` x the local median and is not an extra detection (see ``rr_beat_counts``). These are
    the ectopic beats (premature ventricular or atrial contractions; each beat of a couplet or run).
    In an irregular rhythm such as atrial fibrillation many beats are "early": irregularity is judged
    on the intervals between normal beats, so that frequent ectopy is not taken for it (and the
    other way round, see ``ml.rhythm_events``)."""
    ectopic = np.zeros(np.size(rr), dtype=bool)
    idx, ratio = _rr_ratios(rr, min_rr, max_rr, size)
    if idx.size:
        ectopic[idx] = _split_and_premature(ratio, max_deviation, premature)[1]
    return ectopic


def rr_normal(rr: np.ndarray, counts: np.ndarray | None = None, ectopic: np.ndarray | None = None) -> np.ndarray:
    """Mask of the NN intervals (normal to normal): ordinary intervals (``rr_beat_counts == 1``) that
    neither end nor start at an ectopic beat. HRV standards compute HRV on these only."""
    counts = rr_beat_counts(rr) if counts is None else counts
    ectopic = rr_ectopic(rr) if ectopic is None else ectopic
    return (counts == 1) & ~ectopic & ~np.append(False, ectopic[:-1])


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
    """Time-domain HRV in ms: SDNN over the valid (NN, see ``rr_normal``) intervals, RMSSD over
    successive pairs of them only (never across a rejected interval or a gap). ``None`` with too few
    intervals."""
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
def quantisation_step(raw: np.ndarray) -> float:
    """The smallest step between the distinct values of ``raw``: the ADC's step when a device sends its
    integer counts (or counts times a gain), ~0 for an already continuous signal."""
    levels = np.unique(np.asarray(raw, dtype=float))
    return float(np.diff(levels).min()) if levels.size > 1 else 0.0


def signal_plausibility(raw: np.ndarray, cleaned: np.ndarray, reference_ptp: float | None = None,
                        saturation_fraction: float = 0.25, amplitude_range: tuple[float, float] = (0.1, 4.0),
                        min_steps: int = 16, min_band_share: float = 0.05) -> dict[str, Any]:
    """Cheap checks on the latest raw / cleaned samples: whether they can hold a pulse at all.

    * ``flat``: the raw signal does not move (lead off, sensor unplugged), moves by fewer than
      ``min_steps`` steps of its ADC (``quantisation_step``: a sensor off the skin sees only the ADC's
      noise), or the cleaned amplitude is below ``min_band_share`` of the raw one (all that moves is
      out of the cardiac band: mains hum, a light's flicker) or below 1/1000 of the stream's usual one;
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
    if (span <= 0 or span < min_steps * quantisation_step(raw) or ptp < min_band_share * span
            or (reference_ptp and ptp < 1e-3 * reference_ptp)):
        return {"ok": False, "reason": "flat", "ptp": ptp}
    tol = 1e-6 * span
    limit = saturation_fraction * raw.size
    if np.count_nonzero(raw >= hi - tol) >= limit or np.count_nonzero(raw <= lo + tol) >= limit:
        return {"ok": False, "reason": "saturated", "ptp": ptp}
    if reference_ptp and not amplitude_range[0] * reference_ptp <= ptp <= amplitude_range[1] * reference_ptp:
        return {"ok": False, "reason": "amplitude", "ptp": ptp}
    return {"ok": True, "reason": None, "ptp": ptp}


def beats_template_quality(cleaned: np.ndarray, peaks: np.ndarray, sampling_rate: float,
                           recent_from: int | None = None, neighbours: float | None = None) -> float:
    """Template-matching quality in [0, 1] of the beats at ``peaks`` (indices into ``cleaned``).

    Each beat (from 0.35 to 0.55 median RR around its peak, at most 0.3 s / 0.45 s) is correlated with
    a template made of the *other* beats, as NeuroKit2's ``ppg_quality("templatematch")`` and
    ``ecg_quality("averageQRS")`` compare beats to the average beat: by default their mean
    (leave-one-out, so that with few beats random segments do not match a template made of
    themselves); with ``neighbours`` (a fraction), the mean of that share of the other beats (at least
    two) most like it, so that ectopic beats (another shape, but each like the others of its kind)
    find theirs while segments of noise still match nothing. Quality is the mean of the squared
    correlations (negative ones count as 0): the share of each beat's variance that its template
    explains, so that 0.5 means "as much noise as beat" (r = 0.71). If ``recent_from`` is given, the
    result is the lower of the mean over all beats and over those at or after it, so that a burst of
    bad beats shows at once. Fewer than two beats give 0. Peaks whose segment falls outside
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
    norms = np.sqrt(np.einsum("ij,ij->i", beats, beats))
    beats /= np.where(norms > 0, norms, 1.0)[:, None]
    corr = beats @ beats.T
    np.fill_diagonal(corr, -np.inf)
    near = peaks.size - 1 if neighbours is None else min(peaks.size - 1, max(2, int((peaks.size - 1) * neighbours)))
    order = np.argsort(-corr, axis=1)[:, :near]
    template = beats[order].sum(axis=1)
    norms = np.sqrt(np.einsum("ij,ij->i", template, template))
    best = np.clip(np.einsum("ij,ij->i", beats, template) / np.where(norms > 0, norms, 1.0), 0.0, 1.0)
    best *= best
    quality = float(best.sum() / best.size)
    if recent_from is not None:
        recent = best[peaks >= recent_from]
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
                 hrv_window_s: float = 60.0, buffer_s: float = 8.0, quality_window_s: float = 6.0,
                 min_quality: float = 0.5, min_intervals: int = 4) -> None:
        if kind not in ("ecg", "ppg"):
            raise ValueError(f"kind must be 'ecg' or 'ppg', got {kind!r}")
        self.kind: Kind = kind
        self.sampling_rate = fs = float(sampling_rate)
        self.window_s = float(window_s)
        self.hrv_window_s = max(float(hrv_window_s), self.window_s)
        self.quality_window_s = float(quality_window_s)
        self.min_quality = float(min_quality)
        self.min_intervals = int(min_intervals)  # ordinary intervals since the pulse became readable, for a rate
        design = stream_filter_design(kind, fs)
        self._sos, self._zi_unit = design["sos"], design["zi"]
        self._zi: np.ndarray | None = None
        # ECG: ectopic beats (another QRS shape) are matched with their own kind; a PPG pulse has one shape.
        self._neighbours = 1 / 3 if kind == "ecg" else None
        self._max_missed = 0 if kind == "ecg" else 2
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
        self._good_from = 0  # first sample after the pulse was last lost
        self._poor = False  # the previous second held no readable pulse
        self._last_peak: int | None = None
        self._tick = 1
        self._next_tick = round(fs)
        beats = math.ceil(self.hrv_window_s * 240 / 60) + 8  # >= hrv_window_s at up to 240 /min
        self._peaks: deque[int] = deque(maxlen=beats)
        self._rr: deque[float] = deque(maxlen=beats)  # samples; NaN after a discontinuity
        self._ptp: deque[float] = deque(maxlen=30)  # per-second cleaned peak-to-peak, for the reference
        self._heights: deque[float] = deque(maxlen=5)  # PPG: cleaned height of the latest pulses
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
            if self.kind == "ppg":
                height = float(window[p - start])
                recent = [v for v in list(self._rr)[-5:] if not math.isnan(v)]
                if contiguous and secondary_wave(height, p - last_peak, self._heights, recent):
                    continue
                self._heights.append(height)
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

    def _quality(self, peaks: np.ndarray, beats: np.ndarray) -> tuple[float, str | None]:
        """Quality of the latest second and why it holds no readable pulse, if it does not:
        ``no_signal`` (quality 0) if the latest samples are flat or clipped (``signal_plausibility``) or
        no beat was found for longer than 1.6 median RR (min 1.5 s: a lost pulse, or heavy noise that
        raises the detector's threshold above every QRS); ``poor_signal`` if their amplitude jumped
        (quality 0) or ``beats_template_quality`` of the last ``quality_window_s`` is below
        ``min_quality``. ``peaks``: every detection; ``beats``: those judged as beats (not the extra
        detections, nor the newest if it came early, which only the next beat tells apart)."""
        fs, n, cap = self.sampling_rate, self._n, self._raw.size
        recent = round(2.0 * fs)
        first = max(n - recent, self._valid_from, n - cap)
        if n - first < int(0.25 * fs):
            return 0.0, "no_signal"
        reference = sorted(self._ptp)[len(self._ptp) // 2] if len(self._ptp) >= 5 else None
        check = signal_plausibility(self._raw[cap - (n - max(first, n - round(fs))):],
                                    self._clean[cap - (n - first):], reference)
        if check["reason"] in (None, "amplitude"):
            self._ptp.append(check["ptp"])
        if not check["ok"]:
            return 0.0, "poor_signal" if check["reason"] == "amplitude" else "no_signal"
        tail = np.diff(peaks[-6:])
        allowed = max(1.5 * fs, 1.6 * float(np.median(tail))) if tail.size else 2.0 * fs
        if self._searched_to - self._valid_from > allowed and (
                not peaks.size or peaks[-1] < self._searched_to - allowed):
            return 0.0, "no_signal"
        # Beats of the last quality_window_s whose segment holds no gap.
        buf_start = n - cap
        peaks = beats[beats >= max(n - int(self.quality_window_s * fs), buf_start + int(0.3 * fs))]
        for g0, g1 in self._gaps:
            if g1 > buf_start:
                peaks = peaks[(peaks + int(0.45 * fs) <= g0) | (peaks - int(0.3 * fs) >= g1)]
        # Too few beats to judge: the stream (or the pulse) has just started, or it is lost. Judging 2 beats
        # by each other is only good enough at the start.
        young = n - max(self._valid_from, self._good_from) < self.quality_window_s * fs
        if peaks.size < (2 if young else 3):
            return 0.0, None if young else "poor_signal"
        recent_from = n - int(1.6 * fs)
        quality = beats_template_quality(self._clean, peaks - buf_start, fs, recent_from=recent_from - buf_start,
                                         neighbours=self._neighbours)
        return quality, "poor_signal" if quality < self.min_quality else None

    def _analyse(self) -> dict[str, Any]:
        fs, n = self.sampling_rate, self._n
        new = self._detect()
        peaks = np.fromiter(self._peaks, dtype=np.int64, count=len(self._peaks))
        rr = np.fromiter(self._rr, dtype=float, count=len(self._rr))
        in_hrv = peaks >= n - self.hrv_window_s * fs
        rr_s = rr[in_hrv] / fs
        extra = rr_extra(rr_s)  # not beats: neither judged for quality nor counted
        recent = rr_s[-6:-1][np.isfinite(rr_s[-6:-1])]
        if recent.size and rr_s[-1] < 0.8 * np.median(recent):
            extra[-1] = True  # early: an extra detection or an ectopic beat, told apart by the next beat
        quality, reason = self._quality(peaks, np.concatenate((peaks[:peaks.size - extra.size], peaks[in_hrv][~extra])))
        # Once the pulse is lost (no signal, or two poor seconds running: one is a passing disturbance), no
        # beat from before counts towards a rate or HRV when it is back.
        forget = self._last_peak is not None and self._last_peak >= self._good_from  # beats since the last loss
        if forget and (reason == "no_signal" or (reason is not None and self._poor)):
            self._good_from = n
        self._poor = reason is not None
        starts = peaks[in_hrv] - rr[in_hrv]  # NaN for a beat with no interval (then nowhere "inside")
        usable = starts >= self._good_from
        counts = rr_beat_counts(rr_s, max_missed=self._max_missed) * usable
        ectopic = rr_ectopic(rr_s) & usable
        # The rate window is the last window_s of *final* signal (beats are final up to _searched_to,
        # ~0.6 s behind n), holding only intervals that start and end inside it: an interval that
        # straddles the window's start would weigh a beat from outside it (biasing irregular rhythms).
        in_window = starts >= self._searched_to - self.window_s * fs
        rate = hrv = ectopic_per_min = None
        if reason is None:
            rate = rr_rate(rr_s, counts * in_window, min_intervals=self.min_intervals)
            hrv = rr_hrv(rr_s, rr_normal(rr_s, counts, ectopic))
            covered = float(rr_s[counts > 0].sum())
            ectopic_per_min = round(60.0 * np.count_nonzero(ectopic) / covered, 1) if covered >= self.window_s else None
        k = len(new)
        new_rr = rr[rr.size - k:] / fs if k else rr[:0]
        return {
            "t": n / fs,
            "hr": rate,
            "hrv": hrv or {"rmssd": None, "sdnn": None},
            "reason": reason,
            "ectopic_per_min": ectopic_per_min,
            "quality": round(quality, 3),
            "beats": k,
            "window": round(self._signal_seconds(max(n - round(self.window_s * fs), self._good_from)), 3),
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
