"""A SYNTHETIC cohort of home blood-pressure series, for training and testing the forecasting models.

There is no public dataset of home BP series with medication and wearable data here, so models are
trained on this generator. Everything it makes is synthetic and says so (``SYNTHETIC``, ``GENERATOR``);
a model trained on it is labelled synthetic in its model card and in each of its predictions.

Per patient, the true (unmeasured) pressure is the sum of
- a baseline drawn from an adult home-monitoring population (systolic ~ N(132, 14) mmHg, diastolic
  tracking it at about half the slope), with a pulse baseline;
- a slow trend: a small linear drift plus a mean-reverting day-to-day wander (Ornstein-Uhlenbeck);
- occasional stress episodes of 1-3 weeks that raise the pressure by 5-15 mmHg;
- a circadian rhythm: nocturnal dip, afternoon plateau and a morning surge around 06:00-09:00;
- for about half the patients (more often the hypertensive ones) an antihypertensive started on a given
  day whose effect builds up over about a week and scales with recent adherence (doses taken);
and what is measured adds cuff/measurement noise, at morning and evening readings on the days the
patient measures (random missing days and multi-day gaps). Optional daily wearable summaries (mean
heart rate, RMSSD) and a daily adherence series (1 = dose taken) come with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GENERATOR = "bp-cohort/1"
SYNTHETIC = True
DAY_S = 86_400.0
EPOCH_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z: day 0 of every synthetic series


@dataclass
class PatientSeries:
    """One patient's data as plain arrays. Times are POSIX seconds (UTC); daily series are indexed by
    the start of their day. ``hr``/``rmssd``/``adherence`` are None when the patient has no such data."""

    patient: str
    times: np.ndarray
    systolic: np.ndarray
    diastolic: np.ndarray
    pulse: np.ndarray
    day_times: np.ndarray | None = None
    hr: np.ndarray | None = None
    rmssd: np.ndarray | None = None
    adherence_days: np.ndarray | None = None
    adherence: np.ndarray | None = None
    utc_offset_s: float = 0.0
    synthetic: bool = False


def _circadian(hour: np.ndarray, amplitude: float, surge: float) -> np.ndarray:
    """Offset (mmHg) by hour of day: a ~24 h cosine peaking mid-afternoon, dipping at night, and a
    Gaussian morning surge centred at 07:30."""
    return amplitude * np.cos(2 * np.pi * (hour - 15.0) / 24.0) + surge * np.exp(-(((hour - 7.5) / 1.5) ** 2))


def _wander(rng: np.random.Generator, days: int, sd: float, theta: float = 0.08) -> np.ndarray:
    x = np.zeros(days)
    steps = rng.normal(0.0, sd, days)
    for d in range(1, days):
        x[d] = x[d - 1] * (1 - theta) + steps[d]
    return x


def generate_patient(rng: np.random.Generator, index: int, days: int = 180,
                     with_wearable: bool | None = None, with_medication: bool | None = None) -> PatientSeries:
    base_sys = float(np.clip(rng.normal(132, 14), 100, 185))
    base_dia = float(np.clip(0.5 * base_sys + 14 + rng.normal(0, 5), 55, 115))
    base_pulse = float(np.clip(rng.normal(72, 9), 50, 105))
    day = np.arange(days, dtype=float)

    level = base_sys + rng.normal(0, 0.04) * day + _wander(rng, days, 1.2)
    stress = np.zeros(days)
    for _ in range(rng.poisson(days / 90)):
        start, length = int(rng.integers(0, days)), int(rng.integers(7, 22))
        stress[start:start + length] += rng.uniform(5, 15)
    level += stress

    if with_medication is None:
        with_medication = bool(rng.random() < (0.75 if base_sys >= 140 else 0.3))
    adherence = None
    med = np.zeros(days)
    if with_medication:
        start_day = int(rng.integers(min(20, days // 3), max(days - 30, days // 3 + 1)))
        adherence = (rng.random(days) < rng.beta(8, 2)).astype(float)
        adherence[:start_day] = 0.0
        recent = np.convolve(adherence, np.ones(3) / 3)[:days]  # doses over the last 3 days
        build_up = np.where(day >= start_day, 1 - np.exp(-(day - start_day) / 7.0), 0.0)
        med = -rng.normal(12, 4) * build_up * (0.3 + 0.7 * recent)
        adherence = adherence[start_day:]
        adherence_days = EPOCH_S + DAY_S * day[start_day:]
    level += med
    dia_level = base_dia + 0.5 * (level - base_sys) + _wander(rng, days, 0.6)

    # Measurement days and times.
    missing = rng.random(days) < rng.uniform(0.1, 0.4)
    for _ in range(rng.poisson(days / 60)):
        start = int(rng.integers(0, days))
        missing[start:start + int(rng.integers(3, 11))] = True
    amp, surge = rng.normal(7, 2), max(0.0, rng.normal(8, 3))
    p_morning, p_evening = rng.uniform(0.7, 0.95), rng.uniform(0.35, 0.8)
    measured = np.flatnonzero(~missing)
    morning = measured[rng.random(measured.size) < p_morning]
    evening = measured[rng.random(measured.size) < p_evening]
    m_hour = np.clip(rng.normal(7.3, 0.8, morning.size), 5, 11)
    e_hour = np.clip(rng.normal(20.5, 1.0, evening.size), 17, 23.5)
    reading_day = np.concatenate([morning, evening])
    hour = np.concatenate([m_hour, e_hour])
    order = np.argsort(reading_day * 24 + hour)
    reading_day, hour = reading_day[order], hour[order]

    circ = _circadian(hour, amp, surge)
    sys_true = level[reading_day] + circ
    dia_true = dia_level[reading_day] + 0.6 * circ
    systolic = np.clip(sys_true + rng.normal(0, 6, hour.size), 75, 260)
    diastolic = np.clip(dia_true + rng.normal(0, 4, hour.size), 40, 150)
    diastolic = np.minimum(diastolic, systolic - 15)
    pulse = np.clip(base_pulse + 3 * np.cos(2 * np.pi * (hour - 15) / 24) + rng.normal(0, 5, hour.size), 40, 160)
    times = EPOCH_S + DAY_S * reading_day + 3600.0 * hour

    series = PatientSeries(f"synthetic-{index}", times, np.round(systolic), np.round(diastolic), np.round(pulse),
                           synthetic=True)
    if adherence is not None:
        series.adherence_days, series.adherence = adherence_days, adherence
    if with_wearable if with_wearable is not None else rng.random() < 0.5:
        worn = rng.random(days) < rng.uniform(0.5, 0.95)
        series.day_times = EPOCH_S + DAY_S * day[worn]
        series.hr = np.clip(base_pulse + 0.15 * (level - base_sys) + rng.normal(0, 3, days), 40, 160)[worn]
        series.rmssd = np.clip(np.exp(rng.normal(np.log(38), 0.25) - 0.006 * (level - 120)
                                      + rng.normal(0, 0.12, days)), 5, 200)[worn]
    return series


def generate_cohort(n: int, days: int = 180, seed: int = 0) -> list[PatientSeries]:
    """``n`` synthetic patients over ``days`` days starting 2026-01-01, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [generate_patient(rng, i, days) for i in range(n)]


def describe(n: int, days: int, seed: int) -> dict[str, object]:
    """What a model trained on ``generate_cohort(n, days, seed)`` was trained on, for its model card."""
    return {"kind": "synthetic", "synthetic": True, "generator": GENERATOR, "patients": n, "days": days,
            "seed": seed, "description": f"SYNTHETIC cohort of {n} patients x {days} days from {GENERATOR} "
                                         f"(seed {seed}); not real patient data"}
