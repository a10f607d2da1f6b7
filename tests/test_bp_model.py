"""The blood-pressure models in ``ml/``: the synthetic cohort is plausible, features survive missing
days, and training keeps a model only when it beats the better of the simple baselines."""

from __future__ import annotations

import numpy as np
import pytest

from ml.bp_cohort import DAY_S, EPOCH_S, GENERATOR, PatientSeries, describe, generate_cohort
from ml.bp_features import FEATURES, bp_baselines, bp_features, bp_labels
from ml.bp_model import BPForecaster, Dataset, build_dataset, decide, fit, roc_auc, time_split, train_and_report

N, DAYS, SEED = 200, 150, 3


@pytest.fixture(scope="module")
def cohort() -> list[PatientSeries]:
    return generate_cohort(N, DAYS, SEED)


@pytest.fixture(scope="module")
def split(cohort: list[PatientSeries]) -> tuple[Dataset, Dataset, float]:
    return time_split(build_dataset(cohort, step_days=4))


def test_cohort_is_plausible_and_labelled_synthetic(cohort: list[PatientSeries]) -> None:
    assert all(s.synthetic and s.patient.startswith("synthetic-") for s in cohort)
    assert describe(N, DAYS, SEED)["synthetic"] is True and GENERATOR in describe(N, DAYS, SEED)["description"]
    sys_ = np.concatenate([s.systolic for s in cohort])
    dia = np.concatenate([s.diastolic for s in cohort])
    assert np.all(sys_ > dia) and 110 < np.median(sys_) < 150 and 65 < np.median(dia) < 95
    assert sys_.min() >= 75 and sys_.max() <= 260 and dia.min() >= 40
    # Missing days: every patient skips some days, nobody measures every day.
    measured_days = [np.unique((s.times - EPOCH_S) // DAY_S).size / DAYS for s in cohort]
    assert all(0.3 < f < 0.95 for f in measured_days)
    assert all(np.all(np.diff(s.times) > 0) for s in cohort)
    # Morning surge: within a patient, morning readings are higher than evening ones on average.
    diffs = []
    for s in cohort:
        hour = (s.times % DAY_S) / 3600
        diffs.append(s.systolic[hour < 11].mean() - s.systolic[hour >= 17].mean())
    assert np.mean(diffs) > 2
    # Medication lowers pressure: the month after the first dose is lower than the month before.
    effects = []
    for s in cohort:
        if s.adherence_days is not None:
            start = s.adherence_days[0]
            before = s.systolic[(s.times < start) & (s.times > start - 28 * DAY_S)]
            after = s.systolic[(s.times > start + 14 * DAY_S) & (s.times < start + 42 * DAY_S)]
            if before.size > 5 and after.size > 5:
                effects.append(after.mean() - before.mean())
    assert len(effects) > 10 and np.median(effects) < -4
    assert any(s.hr is not None for s in cohort) and any(s.hr is None for s in cohort)
    # Reproducible from the seed.
    again = generate_cohort(3, DAYS, SEED)
    assert all(np.array_equal(a.systolic, b.systolic) for a, b in zip(again, cohort[:3], strict=True))


def _series(days: np.ndarray, sys_: np.ndarray, dia: np.ndarray, **extra: object) -> PatientSeries:
    t = EPOCH_S + days * DAY_S
    return PatientSeries("t", t, np.asarray(sys_, float), np.asarray(dia, float), np.full(t.size, 70.0), **extra)


def test_features_with_missing_days() -> None:
    # Readings on days 0-9 only, then nothing: at day 30 the last 7 and 14 days are empty.
    days = np.arange(10) + 0.3
    s = _series(days, 130 + np.arange(10), 85 + np.zeros(10),
                adherence_days=EPOCH_S + np.arange(31) * DAY_S, adherence=np.r_[np.zeros(23), np.ones(8)])
    f = dict(zip(FEATURES, bp_features(s, EPOCH_S + 30 * DAY_S), strict=True))
    assert len(f) == len(FEATURES)
    assert f["count_7d"] == 0 and f["count_14d"] == 0 and f["count_28d"] == 8  # days 2.3 .. 9.3
    assert np.isnan(f["sys_mean_7d"]) and np.isnan(f["sys_slope_14d"]) and np.isnan(f["sys_morning_14d"])
    assert f["sys_mean_28d"] == pytest.approx(np.mean(130 + np.arange(2, 10)))
    assert f["sys_slope_28d"] == pytest.approx(1.0, abs=1e-4)
    assert f["days_since_last"] == pytest.approx(30 - 9.3, abs=1e-3) and f["last_sys"] == 139
    assert np.isnan(f["hr_mean_7d"]) and np.isnan(f["rmssd_mean_28d"])  # no wearable
    assert f["adherence_7d"] == 1.0 and f["adherence_28d"] == pytest.approx(7 / 28)
    # Nothing after as_of leaks in: the same features whatever comes later.
    later = _series(np.r_[days, 30.5, 31.5], np.r_[130 + np.arange(10), 200, 210], np.r_[np.full(10, 85.0), 120, 125],
                    adherence_days=s.adherence_days, adherence=s.adherence)
    assert np.array_equal(bp_features(later, EPOCH_S + 30 * DAY_S), bp_features(s, EPOCH_S + 30 * DAY_S),
                          equal_nan=True)
    assert bp_labels(later, EPOCH_S + 30 * DAY_S) is None  # two readings do not make a week
    # The last-week baseline falls back to older windows; the trend extrapolates a straight line.
    lw_sys, _, lt_sys, _ = bp_baselines(s, EPOCH_S + 30 * DAY_S)
    assert lw_sys == pytest.approx(f["sys_mean_28d"]) and lt_sys == lw_sys  # the 14-day line is undefined
    line = _series(np.arange(20) + 0.5, 120 + 0.5 * np.arange(20), np.full(20, 80.0))
    _, _, lt_sys, lt_dia = bp_baselines(line, EPOCH_S + 20 * DAY_S)
    assert lt_sys == pytest.approx(120 + 0.5 * (20 + 3.5 - 0.5)) and lt_dia == pytest.approx(80)


def test_roc_auc_and_decision() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.9])) == 1.0
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    best = {"mae_sys": 5.0, "mae_dia": 3.0, "auc": 0.9, "brier": 0.1}
    assert decide({"mae_sys": 4.9, "mae_dia": 2.9, "auc": 0.91, "brier": 0.09}, best) == (True, [])
    kept, reasons = decide({"mae_sys": 4.9, "mae_dia": 3.0, "auc": 0.95, "brier": 0.09}, best)
    assert not kept and len(reasons) == 1 and "mae_dia" in reasons[0]


def test_training_report_keeps_a_useful_model(split: tuple[Dataset, Dataset, float]) -> None:
    train, test, cut = split
    assert train.as_of.max() + 7 * DAY_S <= cut <= test.as_of.min()  # no labelled day on both sides
    forecaster, report = train_and_report(train, test, cut, describe(N, DAYS, SEED), lambda d: fit(d, rounds=150))
    text = report.to_text()
    assert report.kept, text
    for figure in ("last-week", "lin-trend", "MAE systolic", "ROC AUC", "Brier", "reliability", "KEPT"):
        assert figure in text
    assert text.startswith("BP model training report - SYNTHETIC data")
    assert report.model["mae_sys"] < min(report.baselines[b]["mae_sys"] for b in report.baselines)
    assert sum(r["n"] for r in report.model["reliability"]) == report.n_test
    card = forecaster.card
    assert card["synthetic"] is True and card["training_data"]["patients"] == N
    assert card["training_data"]["seed"] == SEED
    assert "SYNTHETIC" in card["label"] and card["features"] == FEATURES and card["kept"] is True
    # The stored form predicts exactly what the trained one does.
    loaded = BPForecaster.from_bytes(forecaster.to_bytes())
    a, b = forecaster.predict(test.x[:50]), loaded.predict(test.x[:50])
    assert all(np.allclose(a[k], b[k]) for k in a) and loaded.card == card


def test_a_useless_model_is_rejected(split: tuple[Dataset, Dataset, float]) -> None:
    train, test, cut = split
    rng = np.random.default_rng(0)
    shuffled = Dataset(train.x, train.y[rng.permutation(len(train))], train.base, train.as_of, train.patient)
    _, report = train_and_report(shuffled, test, cut, describe(N, DAYS, SEED), lambda d: fit(d, rounds=60))
    assert not report.kept and len(report.reasons) >= 3
    assert "REJECTED" in report.to_text()
