"""Features of a patient's blood-pressure history at a point in time, and the labels of the week after.

``bp_features(series, as_of)`` looks only at what was known at ``as_of`` (readings, wearable daily
summaries and doses before it) over rolling windows of 7, 14 and 28 days: means, least-squares
slopes, variability, morning and evening means, counts, days since the last reading, heart rate and
RMSSD, adherence. Missing data is NaN (XGBoost routes it), never an invented value.
``bp_labels(series, as_of)`` gives the mean systolic/diastolic over the next 7 days and whether that
week is stage 2 or worse (ACC/AHA 2017: mean systolic >= 140 or mean diastolic >= 90).
"""

from __future__ import annotations

import numpy as np

from ml.bp_cohort import DAY_S, PatientSeries

WINDOWS = (7, 14, 28)
HORIZON_DAYS = 7
MIN_READINGS = 3  # in the last 28 days, to make a forecast; in the next 7 days, to label a week
STAGE2_SYS, STAGE2_DIA = 140.0, 90.0


def _names() -> list[str]:
    names = []
    for w in WINDOWS:
        names += [f"sys_mean_{w}d", f"dia_mean_{w}d", f"sys_sd_{w}d", f"dia_sd_{w}d", f"count_{w}d"]
    for w in WINDOWS[1:]:
        names += [f"sys_slope_{w}d", f"dia_slope_{w}d"]
    names += ["sys_max_7d", "stage2_share_14d", "sys_morning_14d", "sys_evening_14d", "dia_morning_14d",
              "dia_evening_14d", "morning_surge_14d", "pulse_mean_14d", "last_sys", "last_dia",
              "days_since_last", "history_days", "hr_mean_7d", "rmssd_mean_7d", "hr_mean_28d", "rmssd_mean_28d",
              "adherence_7d", "adherence_28d"]
    return names


FEATURES: list[str] = _names()


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else np.nan


def _sd(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if x.size >= 2 else np.nan


def _slope(t_days: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope (mmHg/day); NaN unless the readings span at least 3 days."""
    if y.size < MIN_READINGS or np.ptp(t_days) < 3:
        return np.nan
    tc = t_days - t_days.mean()
    return float((tc * (y - y.mean())).sum() / (tc * tc).sum())


def _window(times: np.ndarray, start: float, end: float) -> slice:
    """Index range of sorted ``times`` in [start, end)."""
    return slice(int(np.searchsorted(times, start, "left")), int(np.searchsorted(times, end, "left")))


def bp_features(s: PatientSeries, as_of: float) -> np.ndarray:
    """The feature vector (``FEATURES`` order, float32) of ``s`` at ``as_of`` (POSIX seconds)."""
    out = np.full(len(FEATURES), np.nan, dtype=np.float64)
    sl = _window(s.times, as_of - 28 * DAY_S, as_of)
    t, sys_, dia, pulse = s.times[sl], s.systolic[sl], s.diastolic[sl], s.pulse[sl]
    age_days = (as_of - t) / DAY_S
    i = 0
    for w in WINDOWS:
        m = age_days <= w
        out[i:i + 5] = _mean(sys_[m]), _mean(dia[m]), _sd(sys_[m]), _sd(dia[m]), float(m.sum())
        i += 5
    for w in WINDOWS[1:]:
        m = age_days <= w
        out[i:i + 2] = _slope(-age_days[m], sys_[m]), _slope(-age_days[m], dia[m])
        i += 2
    m7, m14 = age_days <= 7, age_days <= 14
    hour = ((t + s.utc_offset_s) % DAY_S) / 3600.0
    morning, evening = m14 & (hour >= 4) & (hour < 11), m14 & (hour >= 17)
    stage2 = (sys_[m14] >= STAGE2_SYS) | (dia[m14] >= STAGE2_DIA)
    sys_morning, sys_evening = _mean(sys_[morning]), _mean(sys_[evening])
    pulse14 = pulse[m14]
    pulse14 = pulse14[np.isfinite(pulse14)]
    out[i:i + 8] = (sys_[m7].max() if m7.any() else np.nan, _mean(stage2.astype(float)), sys_morning, sys_evening,
                    _mean(dia[morning]), _mean(dia[evening]), sys_morning - sys_evening, _mean(pulse14))
    i += 8
    last = int(np.searchsorted(s.times, as_of, "left")) - 1
    if last >= 0:
        out[i:i + 4] = (s.systolic[last], s.diastolic[last], (as_of - s.times[last]) / DAY_S,
                        min(28.0, (as_of - s.times[0]) / DAY_S))
    i += 4
    if s.day_times is not None and s.hr is not None and s.rmssd is not None:
        for w in (7, 28):
            d = _window(s.day_times, as_of - w * DAY_S, as_of)
            out[i:i + 2] = _mean(s.hr[d]), _mean(s.rmssd[d])
            i += 2
    else:
        i += 4
    if s.adherence_days is not None and s.adherence is not None:
        for w in (7, 28):
            out[i] = _mean(s.adherence[_window(s.adherence_days, as_of - w * DAY_S, as_of)])
            i += 1
    return out.astype(np.float32)


def bp_labels(s: PatientSeries, as_of: float) -> tuple[float, float, float] | None:
    """(mean systolic, mean diastolic, stage-2-or-worse 0/1) over the 7 days after ``as_of``, or None
    if fewer than ``MIN_READINGS`` readings were taken in them."""
    sl = _window(s.times, as_of, as_of + HORIZON_DAYS * DAY_S)
    if sl.stop - sl.start < MIN_READINGS:
        return None
    ms, md = float(s.systolic[sl].mean()), float(s.diastolic[sl].mean())
    return ms, md, float(ms >= STAGE2_SYS or md >= STAGE2_DIA)


def enough_history(s: PatientSeries, as_of: float) -> bool:
    sl = _window(s.times, as_of - 28 * DAY_S, as_of)
    return sl.stop - sl.start >= MIN_READINGS


def _anchor(means: tuple[float, ...]) -> float:
    return next((m for m in means if np.isfinite(m)), np.nan)


def bp_baselines(s: PatientSeries, as_of: float) -> tuple[float, float, float, float]:
    """The simple forecasts of the next week's mean: (last-week mean systolic, diastolic; linear-trend
    systolic, diastolic). The last-week mean falls back to the last 14, then 28 days when the last week
    has no reading; the linear trend is the least-squares line over the last 14 days evaluated at the
    middle of the coming week, or the last-week mean when the line is undefined."""
    sl = _window(s.times, as_of - 28 * DAY_S, as_of)
    age = (as_of - s.times[sl]) / DAY_S
    out = []
    for y in (s.systolic[sl], s.diastolic[sl]):
        out.append(_anchor(tuple(_mean(y[age <= w]) for w in WINDOWS)))
    for k, y in enumerate((s.systolic[sl], s.diastolic[sl])):
        m = age <= 14
        slope = _slope(-age[m], y[m])
        out.append(out[k] if np.isnan(slope) else float(y[m].mean() + slope * (HORIZON_DAYS / 2 + age[m].mean())))
    return out[0], out[1], out[2], out[3]


def anchors(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The last-week means (with the same fallback as ``bp_baselines``) read back from feature rows:
    the level the models correct, so trees learn the change rather than the level."""
    idx = {n: FEATURES.index(n) for n in FEATURES}
    result = []
    for p in ("sys", "dia"):
        a = x[:, idx[f"{p}_mean_7d"]].astype(np.float64)
        for w in WINDOWS[1:]:
            a = np.where(np.isnan(a), x[:, idx[f"{p}_mean_{w}d"]], a)
        result.append(a)
    return result[0], result[1]
