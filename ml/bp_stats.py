"""Statistics over a window of blood pressure readings: mean/min/max, time in range,
morning and evening averages, and the trend (slope per day, least squares)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ml.bp_category import bp_in_range

MORNING_HOURS = range(4, 12)  # local time, 04:00-11:59
EVENING_HOURS = range(18, 24)  # local time, 18:00-23:59
DAY_S = 86400.0


@dataclass(frozen=True)
class Reading:
    t: float  # seconds since the epoch
    local_hour: int
    systolic: float
    diastolic: float
    pulse: float | None = None


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "min": None, "max": None}
    arr = np.asarray(values, dtype=float)
    return {"mean": round(float(arr.mean()), 1), "min": float(arr.min()), "max": float(arr.max())}


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 1) if values else None


def _slope_per_day(times: Sequence[float], values: Sequence[float]) -> float | None:
    if len(times) < 2 or max(times) - min(times) < 1.0:
        return None
    days = (np.asarray(times) - times[0]) / DAY_S
    return round(float(np.polyfit(days, np.asarray(values, dtype=float), 1)[0]), 2)


def bp_stats(readings: Sequence[Reading]) -> dict[str, object]:
    sys_ = [r.systolic for r in readings]
    dia = [r.diastolic for r in readings]
    pulses = [r.pulse for r in readings if r.pulse is not None]
    times = [r.t for r in readings]
    morning = [r for r in readings if r.local_hour in MORNING_HOURS]
    evening = [r for r in readings if r.local_hour in EVENING_HOURS]
    in_range = sum(bp_in_range(r.systolic, r.diastolic) for r in readings)
    return {
        "count": len(readings),
        "systolic": _summary(sys_),
        "diastolic": _summary(dia),
        "pulse": _summary(pulses),
        "time_in_range": round(in_range / len(readings), 3) if readings else None,
        "morning": {"count": len(morning), "systolic": _mean([r.systolic for r in morning]),
                    "diastolic": _mean([r.diastolic for r in morning])},
        "evening": {"count": len(evening), "systolic": _mean([r.systolic for r in evening]),
                    "diastolic": _mean([r.diastolic for r in evening])},
        "trend_per_day": {"systolic": _slope_per_day(times, sys_), "diastolic": _slope_per_day(times, dia)},
    }
