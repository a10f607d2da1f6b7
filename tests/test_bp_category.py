"""The ACC/AHA 2017 table, its boundaries, the higher category winning, implausible input refused;
and the window statistics."""

from __future__ import annotations

import pytest

from ml.bp_category import ImplausibleReading, bp_classify
from ml.bp_stats import DAY_S, Reading, bp_stats


@pytest.mark.parametrize(("systolic", "diastolic", "category"), [
    (110, 70, "normal"), (119, 79, "normal"),
    (120, 79, "elevated"), (129, 70, "elevated"),
    (130, 70, "hypertension_stage_1"), (139, 79, "hypertension_stage_1"), (118, 80, "hypertension_stage_1"),
    (125, 89, "hypertension_stage_1"),  # elevated systolic, stage-1 diastolic: the higher wins
    (140, 70, "hypertension_stage_2"), (180, 85, "hypertension_stage_2"), (120, 90, "hypertension_stage_2"),
    (135, 120, "hypertension_stage_2"),
    (181, 70, "hypertensive_crisis"), (150, 121, "hypertensive_crisis"), (200, 130, "hypertensive_crisis"),
])
def test_table(systolic: float, diastolic: float, category: str) -> None:
    assert bp_classify(systolic, diastolic) == category


@pytest.mark.parametrize(("systolic", "diastolic", "pulse", "field"), [
    (80, 80, None, "systolic"), (70, 90, None, "systolic"), (39, 20, None, "systolic"), (301, 90, None, "systolic"),
    (120, 19, None, "diastolic"), (250, 201, None, "diastolic"), (120, 80, 19, "pulse"), (120, 80, 251, "pulse"),
])
def test_implausible_rejected(systolic: float, diastolic: float, pulse: float | None, field: str) -> None:
    with pytest.raises(ImplausibleReading) as exc:
        bp_classify(systolic, diastolic, pulse)
    assert exc.value.field == field


def test_stats() -> None:
    t0 = 1_700_000_000.0
    readings = [Reading(t0 + i * DAY_S, 8, 120 + 2 * i, 80, 60 + i) for i in range(5)]  # mornings, rising 2/day
    readings += [Reading(t0 + i * DAY_S + 12 * 3600, 20, 125, 75) for i in range(5)]  # evenings, flat
    readings.sort(key=lambda r: r.t)
    s = bp_stats(readings)
    assert s["count"] == 10
    assert s["systolic"] == {"mean": 124.5, "min": 120.0, "max": 128.0}
    assert s["pulse"] == {"mean": 62.0, "min": 60.0, "max": 64.0}
    assert s["morning"] == {"count": 5, "systolic": 124.0, "diastolic": 80.0}
    assert s["evening"] == {"count": 5, "systolic": 125.0, "diastolic": 75.0}
    assert s["time_in_range"] == 0.5  # evenings in range; mornings have diastolic 80
    assert 0.5 < s["trend_per_day"]["systolic"] < 1.5
    assert bp_stats([])["systolic"]["mean"] is None and bp_stats([])["trend_per_day"]["systolic"] is None
