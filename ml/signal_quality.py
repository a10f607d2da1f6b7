"""Whether a stretch of ECG / PPG holds a readable pulse: cheap plausibility checks on the samples, and
template matching of the detected beats (NeuroKit2's ``templatematch`` / ``averageQRS`` idea).

Functions take arrays and a sampling rate and return plain data (NeuroKit2-style); ``ml.signal_stream``
applies them to each stream's latest seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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
    near = peaks.size - 1 if neighbours is None else min(peaks.size - 1, max(2, int((peaks.size - 1) * neighbours)))
    if near == peaks.size - 1:  # all the others: their sum is the sum of all less the beat
        template = beats.sum(axis=0)[None, :] - beats
    else:
        corr = beats @ beats.T
        np.fill_diagonal(corr, -np.inf)
        template = beats[np.argsort(-corr, axis=1)[:, :near]].sum(axis=1)
    norms = np.sqrt(np.einsum("ij,ij->i", template, template))
    best = np.clip(np.einsum("ij,ij->i", beats, template) / np.where(norms > 0, norms, 1.0), 0.0, 1.0)
    best *= best
    quality = float(best.sum() / best.size)
    if recent_from is not None:
        recent = best[peaks >= recent_from]
        if recent.size:
            quality = min(quality, float(recent.mean()))
    return quality


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
