"""Beat-to-beat (RR) intervals: how many beats each stands for, which beats came early (ectopic) or
are extra detections, the rate over them and time-domain HRV over the normal-to-normal ones.

Functions take arrays of intervals in seconds and return plain arrays / numbers (NeuroKit2-style);
``ml.signal_stream`` applies them to each stream's recent beats.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


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


def _split_and_premature(ratio: np.ndarray, max_deviation: float,
                         premature: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``extra``: short intervals that, with the next one, make one ordinary interval (they end at an
    extra detection, e.g. a T wave or a dicrotic wave); ``split``: those and the next ones; ``early``:
    the other short intervals (a real beat that came early)."""
    short = ratio < premature
    nxt = np.append(ratio[1:], np.inf)
    extra = short & (np.abs(ratio + nxt - 1.0) <= max_deviation)
    split = extra | np.append(False, extra[:-1])
    return extra, split, short & ~split


def rr_classify(rr: np.ndarray, min_rr: float = 0.3, max_rr: float = 2.0, max_deviation: float = 0.3,
                premature: float = 0.8, size: int = 5, max_rejected: float = 0.2,
                max_missed: int = 2) -> dict[str, np.ndarray]:
    """Each RR interval (seconds) classified in one pass: ``counts`` (see ``rr_beat_counts``), ``ectopic``
    (``rr_ectopic``), ``extra`` (``rr_extra``) and ``normal`` (``rr_normal``)."""
    n = np.size(rr)
    counts = np.zeros(n, dtype=np.int64)
    ectopic, extra = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    idx, ratio = _rr_ratios(rr, min_rr, max_rr, size)
    if idx.size:
        first, split, early = _split_and_premature(ratio, max_deviation, premature)
        ectopic[idx], extra[idx] = early, first
        k = np.rint(ratio)
        close = np.abs(ratio - k) <= max_deviation
        if np.count_nonzero(~close | (k != 1)) > max_rejected * ratio.size:  # an irregular rhythm
            counts[idx] = 1
        else:
            missed = close & (k >= 2) & (k <= 1 + max_missed) & ~np.append(False, early[:-1])
            counts[idx] = np.where(split, 0, np.where(missed, k, 1)).astype(np.int64)
    normal = (counts == 1) & ~ectopic & ~np.append(False, ectopic[:-1])
    return {"counts": counts, "ectopic": ectopic, "extra": extra, "normal": normal}


def rr_beat_counts(rr: np.ndarray, **options: Any) -> np.ndarray:
    """How many beats each RR interval (seconds) stands for, so that the rate counts every beat, as a
    monitor does: 1 for an interval between two real beats (premature / ectopic ones included, and the
    compensatory pause after them); k (2 up to ``1 + max_missed``) for an interval of k local medians
    (+/- ``max_deviation``) whose predecessor was not premature (it holds k - 1 missed beats: small
    pulses after a short interval are what Elgendi's PPG detector misses, in NeuroKit2 as here; the
    QRS detector does not miss beats that way, so for ECG ``max_missed=0``: a long interval there is a
    pause, one interval); 0 for artefacts: outside ``[min_rr, max_rr]`` (0.3-2 s), or a short interval
    (below ``premature``, 0.8, of the local median) that with the next makes one ordinary interval (an
    extra detection; both count 0). The local median is that of ``size`` (5) plausible intervals.
    Detection artefacts are rare, so if more than ``max_rejected`` (20 %) of the intervals are not
    ordinary the rhythm itself is irregular (e.g. atrial fibrillation) and only the range test
    applies. NaN (no interval, e.g. the first beat after a gap) counts 0. Options: ``rr_classify``'s."""
    return rr_classify(rr, **options)["counts"]


def rr_extra(rr: np.ndarray, **options: Any) -> np.ndarray:
    """Mask of the beats (each ending one RR interval, seconds) that are extra detections: they split one
    ordinary interval in two (a T wave, a dicrotic wave; see ``rr_beat_counts``)."""
    return rr_classify(rr, **options)["extra"]


def rr_ectopic(rr: np.ndarray, **options: Any) -> np.ndarray:
    """Mask of the beats (each ending one RR interval, seconds) that came early: their interval is below
    ``premature`` x the local median and is not an extra detection (see ``rr_beat_counts``). These are
    the ectopic beats (premature ventricular or atrial contractions; each beat of a couplet or run).
    In an irregular rhythm such as atrial fibrillation many beats are "early": irregularity is judged
    on the intervals between normal beats, so that frequent ectopy is not taken for it (and the
    other way round, see ``ml.rhythm_events``)."""
    return rr_classify(rr, **options)["ectopic"]


def rr_normal(rr: np.ndarray, **options: Any) -> np.ndarray:
    """Mask of the NN intervals (normal to normal): ordinary intervals (``rr_beat_counts == 1``) that
    neither end nor start at an ectopic beat. HRV standards compute HRV on these only."""
    return rr_classify(rr, **options)["normal"]


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
