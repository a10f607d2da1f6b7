"""Blood-pressure forecasting and risk with XGBoost: dataset, time-based split, training, evaluation
against simple baselines, the keep/reject decision, the model card, and the loaded forecaster.

Three boosters: next-7-day mean systolic and diastolic (regressors that correct the last-week mean,
given as base margin) and the probability that the next week is stage 2 or worse (a classifier,
averaged with the probability the regressors' forecasts imply; see ``fit``).
The baselines are the last-week mean and the 14-day linear trend, their stage-2 probability being
the normal probability of the forecast exceeding 140/90 given the baseline's error spread on the
training part. A model is kept only if it beats the better baseline on every headline figure
(MAE systolic, MAE diastolic, ROC AUC and Brier score) on the same held-out later weeks.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import ndtr

from ml.bp_cohort import DAY_S, PatientSeries
from ml.bp_features import (
    FEATURES,
    HORIZON_DAYS,
    STAGE2_DIA,
    STAGE2_SYS,
    anchors,
    bp_baselines,
    bp_features,
    bp_labels,
    enough_history,
)

if TYPE_CHECKING:
    import xgboost as xgb


def _xgb() -> Any:
    """xgboost, imported on first use: with the scikit-learn it loads it costs a server that never
    forecasts ~150 MB and 0.3 s of start-up."""
    import xgboost

    return xgboost

MODEL_NAME = "bp"
BASELINES = ("last_week_mean", "linear_trend")
HEADLINE = ("mae_sys", "mae_dia", "auc", "brier")
HIGHER_IS_BETTER = {"auc"}
SYNTHETIC_LABEL = ("Made by a model trained on SYNTHETIC data (generated, not real patients): "
                   "for demonstration, not for clinical decisions.")
PARAMS: dict[str, Any] = {"max_depth": 4, "eta": 0.05, "subsample": 0.8, "colsample_bytree": 0.8,
                          "min_child_weight": 5, "lambda": 2.0, "nthread": 2, "seed": 0}
ROUNDS = 300
IN_SAMPLE_INFLATION = 1.3


@dataclass
class Dataset:
    """Rows of (patient, as-of time): features, labels and the baselines' forecasts."""

    x: np.ndarray  # (n, len(FEATURES)) float32
    y: np.ndarray  # (n, 3): mean systolic, mean diastolic, stage-2 week 0/1
    base: np.ndarray  # (n, 4): last-week sys, dia; linear-trend sys, dia
    as_of: np.ndarray  # (n,) POSIX seconds
    patient: np.ndarray  # (n,) index of the patient in the input list

    def take(self, mask: np.ndarray) -> Dataset:
        return Dataset(self.x[mask], self.y[mask], self.base[mask], self.as_of[mask], self.patient[mask])

    def __len__(self) -> int:
        return int(self.as_of.size)


def build_dataset(cohort: Sequence[PatientSeries], step_days: float = 2.0) -> Dataset:
    """A row every ``step_days`` (at the patient's local midnight) where 28 days of history and a
    labelled next week exist."""
    xs, ys, bs, ts, ps = [], [], [], [], []
    for k, s in enumerate(cohort):
        if s.times.size < 2:
            continue
        first = np.floor((s.times[0] + s.utc_offset_s) / DAY_S) * DAY_S - s.utc_offset_s + 7 * DAY_S
        for as_of in np.arange(first, s.times[-1] - HORIZON_DAYS * DAY_S + 1, step_days * DAY_S):
            labels = bp_labels(s, as_of)
            if labels is None or not enough_history(s, as_of):
                continue
            xs.append(bp_features(s, as_of))
            ys.append(labels)
            bs.append(bp_baselines(s, as_of))
            ts.append(as_of)
            ps.append(k)
    n = len(ts)
    return Dataset(np.asarray(xs, np.float32).reshape(n, len(FEATURES)), np.asarray(ys, float).reshape(n, 3),
                   np.asarray(bs, float).reshape(n, 4), np.asarray(ts, float), np.asarray(ps, int))


def time_split(ds: Dataset, test_fraction: float = 0.3) -> tuple[Dataset, Dataset, float]:
    """Train on weeks that end before the cut, test on weeks that start after it: no labelled day is on
    both sides. The cut is the as-of time leaving ``test_fraction`` of the rows after it."""
    if len(ds) == 0:
        raise ValueError("no labelled weeks to train on (a week needs 28 days of history and 3 readings after)")
    cut = float(np.quantile(ds.as_of, 1 - test_fraction))
    train = ds.take(ds.as_of + HORIZON_DAYS * DAY_S <= cut)
    test = ds.take(ds.as_of >= cut)
    return train, test, cut


# --- metrics ---------------------------------------------------------------------------------------


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney ROC AUC (ties count half); NaN when only one class is present."""
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # on first use, like xgboost

    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Calibration table: per probability bin, the rows in it, mean predicted and observed frequency."""
    idx = np.minimum((p * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        m = idx == b
        if m.any():
            table.append({"bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}", "n": int(m.sum()),
                          "mean_p": round(float(p[m].mean()), 3), "observed": round(float(y[m].mean()), 3)})
    return table


def evaluate(y: np.ndarray, sys_: np.ndarray, dia: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    return {"mae_sys": float(np.abs(sys_ - y[:, 0]).mean()), "mae_dia": float(np.abs(dia - y[:, 1]).mean()),
            "auc": roc_auc(y[:, 2], p), "brier": float(((p - y[:, 2]) ** 2).mean()),
            "reliability": reliability(y[:, 2], p)}


def stage2_probability(sys_: np.ndarray, dia: np.ndarray, sd_sys: float, sd_dia: float) -> np.ndarray:
    """P(week mean >= 140 or >= 90) if the forecast errs normally with the given spreads (the larger
    of the two exceedances)."""
    return ndtr(np.maximum((sys_ - STAGE2_SYS) / sd_sys, (dia - STAGE2_DIA) / sd_dia))


def risk_margin(a_sys: np.ndarray, a_dia: np.ndarray, sd_sys: float, sd_dia: float) -> np.ndarray:
    """The classifier's starting point: the log-odds of the last-week baseline's stage-2 probability,
    so the trees learn how far the coming week departs from the simple answer."""
    p = np.clip(stage2_probability(a_sys, a_dia, sd_sys, sd_dia), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


# --- the forecaster --------------------------------------------------------------------------------


class BPForecaster:
    """Three loaded boosters and their card; ``predict`` takes feature rows (``FEATURES`` order)."""

    def __init__(self, boosters: dict[str, xgb.Booster], card: dict[str, Any]) -> None:
        self.boosters = boosters
        self.card = card
        self.synthetic = bool(card.get("synthetic", True))
        for b in boosters.values():
            b.set_param({"nthread": 1})  # one row at a time: threads only add overhead

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(x, np.float32).reshape(-1, len(FEATURES))
        a_sys, a_dia = anchors(x)
        risk = self.boosters["risk"]
        sys_ = self.boosters["sys"].inplace_predict(x, base_margin=a_sys)
        dia = self.boosters["dia"].inplace_predict(x, base_margin=a_dia)
        prior = risk_margin(a_sys, a_dia, _attr(risk, "sd_sys"), _attr(risk, "sd_dia"))
        from_forecast = stage2_probability(sys_, dia, _attr(risk, "model_sd_sys"), _attr(risk, "model_sd_dia"))
        return {"systolic": sys_, "diastolic": dia,
                "p_stage2": (0.5 * risk.inplace_predict(x, base_margin=prior) + 0.5 * from_forecast)}

    def to_bytes(self) -> bytes:
        """A zip: ``card.json`` and one UBJSON booster per target."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("card.json", json.dumps(self.card, indent=2))
            for name, booster in self.boosters.items():
                z.writestr(f"{name}.ubj", bytes(booster.save_raw("ubj")))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> BPForecaster:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            card = json.loads(z.read("card.json"))
            boosters = {}
            for name in ("sys", "dia", "risk"):
                b = _xgb().Booster()
                b.load_model(bytearray(z.read(f"{name}.ubj")))
                boosters[name] = b
        if card.get("features") != FEATURES:
            raise ValueError("model features do not match this code's feature list")
        return cls(boosters, card)


# --- training --------------------------------------------------------------------------------------


@dataclass
class TrainingReport:
    training_data: dict[str, Any]
    n_train: int
    n_test: int
    cut: str
    positives_test: float
    model: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    best_baseline: dict[str, float]
    kept: bool
    reasons: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        data = self.training_data
        head = ("SYNTHETIC data: " if data.get("synthetic") else "") + str(data.get("description", data))
        lines = [f"BP model training report - {head}",
                 f"split: time-based at {self.cut}; train {self.n_train} patient-weeks (weeks ending before), "
                 f"test {self.n_test} (weeks starting after); stage-2 weeks in test: {self.positives_test:.1%}",
                 "",
                 f"{'metric':<24}{'model':>10}{'last-week':>12}{'lin-trend':>12}{'better bl':>12}"]
        labels = {"mae_sys": "MAE systolic (mmHg)", "mae_dia": "MAE diastolic (mmHg)",
                  "auc": "ROC AUC stage-2 week", "brier": "Brier score"}
        for key in HEADLINE:
            row = [self.model[key], *(self.baselines[b][key] for b in BASELINES), self.best_baseline[key]]
            lines.append(f"{labels[key]:<24}" + "".join(f"{v:>12.3f}" if i else f"{v:>10.3f}"
                                                        for i, v in enumerate(row)))
        lines += ["", "reliability of the model's stage-2 probability (test):",
                  f"{'bin':<10}{'n':>6}{'mean p':>9}{'observed':>10}"]
        lines += [f"{r['bin']:<10}{r['n']:>6}{r['mean_p']:>9.3f}{r['observed']:>10.3f}"
                  for r in self.model["reliability"]]
        verdict = "KEPT: beats the better baseline on " + ", ".join(HEADLINE) if self.kept else \
            "REJECTED: " + "; ".join(self.reasons)
        lines += ["", verdict]
        return "\n".join(lines)


def decide(model: dict[str, Any], best: dict[str, float]) -> tuple[bool, list[str]]:
    """Keep only a model strictly better than the better baseline on every headline metric."""
    reasons = []
    for key in HEADLINE:
        m, b = model[key], best[key]
        better = m > b if key in HIGHER_IS_BETTER else m < b
        if not (np.isfinite(m) and better):
            reasons.append(f"{key} {m:.3f} does not beat the better baseline's {b:.3f}")
    return not reasons, reasons


def _dmatrix(x: np.ndarray, y: np.ndarray, margin: np.ndarray | None = None) -> xgb.DMatrix:
    d = _xgb().DMatrix(x, label=y, feature_names=FEATURES, missing=np.nan)
    if margin is not None:
        d.set_base_margin(margin)
    return d


def fit(train: Dataset, params: dict[str, Any] | None = None, rounds: int = ROUNDS) -> dict[str, xgb.Booster]:
    """The stage-2 probability is the mean of the classifier's (which starts from the last-week
    baseline's log-odds) and the one implied by the regressors' forecasts and their error spread
    (in-sample spread x ``IN_SAMPLE_INFLATION``, as held-out errors are larger)."""
    p = {**PARAMS, **(params or {})}
    a_sys, a_dia = anchors(train.x)
    reg = {**p, "objective": "reg:pseudohubererror", "huber_slope": 5.0}
    xgb = _xgb()
    boosters = {"sys": xgb.train(reg, _dmatrix(train.x, train.y[:, 0], a_sys), rounds),
                "dia": xgb.train(reg, _dmatrix(train.x, train.y[:, 1], a_dia), rounds)}
    sd_sys, sd_dia = _spread(a_sys, train.y[:, 0]), _spread(a_dia, train.y[:, 1])
    risk = xgb.train({**p, "objective": "binary:logistic", "max_depth": 3, "eta": 0.03},
                     _dmatrix(train.x, train.y[:, 2], risk_margin(a_sys, a_dia, sd_sys, sd_dia)), rounds)
    model_sd = [IN_SAMPLE_INFLATION * _spread(boosters[k].inplace_predict(train.x, base_margin=a), train.y[:, c])
                for c, (k, a) in enumerate((("sys", a_sys), ("dia", a_dia)))]
    risk.set_attr(sd_sys=str(sd_sys), sd_dia=str(sd_dia), model_sd_sys=str(model_sd[0]), model_sd_dia=str(model_sd[1]))
    boosters["risk"] = risk
    return boosters


def _attr(booster: xgb.Booster, name: str) -> float:
    return float(booster.attr(name) or 1.0)


def _spread(forecast: np.ndarray, truth: np.ndarray) -> float:
    """Standard deviation of a forecast's error (at least 1 mmHg)."""
    return max(float(np.abs(forecast - truth).std()), 1.0)


def _baseline_metrics(train: Dataset, test: Dataset) -> dict[str, dict[str, Any]]:
    out = {}
    for k, name in enumerate(BASELINES):
        cols = slice(2 * k, 2 * k + 2)
        sd = [_spread(train.base[:, c], train.y[:, c % 2]) for c in range(cols.start, cols.stop)]
        s, d = test.base[:, 2 * k], test.base[:, 2 * k + 1]
        out[name] = evaluate(test.y, s, d, stage2_probability(s, d, sd[0], sd[1]))
    return out


def train_and_report(train: Dataset, test: Dataset, cut: float, training_data: dict[str, Any],
                     fitter: Callable[[Dataset], dict[str, xgb.Booster]] = fit) -> tuple[BPForecaster, TrainingReport]:
    """Fit on ``train``, score model and baselines on ``test``, decide whether to keep the model."""
    if len(train) < 50 or len(test) < 20:
        raise ValueError(f"not enough labelled weeks to train ({len(train)} train, {len(test)} test)")
    boosters = fitter(train)
    card = {"name": MODEL_NAME, "synthetic": bool(training_data.get("synthetic")), "features": FEATURES}
    forecaster = BPForecaster(boosters, card)
    pred = forecaster.predict(test.x)
    model = evaluate(test.y, pred["systolic"], pred["diastolic"], pred["p_stage2"])
    baselines = _baseline_metrics(train, test)
    best = {k: (max if k in HIGHER_IS_BETTER else min)(baselines[b][k] for b in BASELINES) for k in HEADLINE}
    kept, reasons = decide(model, best)
    report = TrainingReport(training_data, len(train), len(test),
                            datetime.fromtimestamp(cut, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                            float(test.y[:, 2].mean()), model, baselines, best, kept, reasons)
    forecaster.card = model_card(report)
    return forecaster, report


def model_card(report: TrainingReport) -> dict[str, Any]:
    """What the model is, what it was trained on and how it scored; synthetic models say so."""
    synthetic = bool(report.training_data.get("synthetic"))
    return {
        "name": MODEL_NAME,
        "task": "next-7-day mean home systolic/diastolic BP (mmHg) and probability that week is ACC/AHA stage 2 "
                "or worse (mean >= 140 systolic or >= 90 diastolic)",
        "algorithm": f"XGBoost {_xgb().__version__}: 2 pseudo-Huber regressors correcting the last-week mean; "
                     "stage-2 probability = mean of a logistic classifier (from the baseline's log-odds) and the "
                     "probability implied by the regressors' forecasts",
        "synthetic": synthetic,
        "training_data": report.training_data,
        "label": SYNTHETIC_LABEL if synthetic else None,
        "labelling": "every prediction of this model carries synthetic=true and this label" if synthetic else
                     "predictions carry synthetic=false",
        "features": FEATURES,
        "split": {"kind": "time-based", "cut": report.cut, "n_train": report.n_train, "n_test": report.n_test},
        "metrics": {k: report.model[k] for k in HEADLINE},
        "baselines": {b: {k: report.baselines[b][k] for k in HEADLINE} for b in BASELINES},
        "kept": report.kept,
        "intended_use": "trend awareness for patients and their care team; not a diagnosis",
        "limitations": ["trained on generated series; real-world accuracy unknown" if synthetic else
                        "trained on this deployment's readings only",
                        "needs at least 3 readings in the last 28 days"],
    }


def train_bp(cohort: Sequence[PatientSeries], training_data: dict[str, Any], step_days: float = 2.0,
             params: dict[str, Any] | None = None) -> tuple[BPForecaster, TrainingReport]:
    """Dataset, time-based split, fit and report in one call."""
    train, test, cut = time_split(build_dataset(cohort, step_days))
    return train_and_report(train, test, cut, training_data, lambda d: fit(d, params))
