"""BP forecasting model: training quality against the baselines and in-process prediction latency.

Trains on a SYNTHETIC cohort (``ml.bp_cohort``, 150 patients x 150 days, seed 1) with the time-based
split, then times one prediction as the server makes it (features over the patient's last 28 days, then
the three boosters, loaded from their stored bytes as the registry loads them) for 2,000 (patient,
time) pairs. ``baseline_*`` is the better of the two baselines (last-week mean, linear trend). Not
store-bound (the store read before a prediction is not included)."""

from __future__ import annotations

import json
import os
import time

# Idle OpenMP threads left by training must sleep, not spin, or they steal the core the timed
# single-row predictions run on (a server process never trains, so it has none).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from ml.bp_cohort import DAY_S, describe, generate_cohort
from ml.bp_features import bp_features, enough_history
from ml.bp_model import BPForecaster, train_bp

N, DAYS, SEED, CALLS = 150, 150, 1, 2_000


def main() -> None:
    t0 = time.perf_counter()
    cohort = generate_cohort(N, DAYS, SEED)
    forecaster, report = train_bp(cohort, describe(N, DAYS, SEED), step_days=4)
    train_s = time.perf_counter() - t0
    print(report.to_text(), flush=True)
    model = BPForecaster.from_bytes(forecaster.to_bytes())
    rng = np.random.default_rng(0)
    times = []
    while len(times) < CALLS:
        s = cohort[int(rng.integers(len(cohort)))]
        as_of = float(s.times[0] + rng.uniform(28, DAYS) * DAY_S)
        if not enough_history(s, as_of):
            continue
        start = time.perf_counter()
        model.predict(bp_features(s, as_of))
        times.append((time.perf_counter() - start) * 1000)
    lat = np.asarray(times)
    best = report.best_baseline
    print(json.dumps({
        "bench": "ml", "predict_p50_ms": round(float(np.percentile(lat, 50)), 3),
        "predict_p99_ms": round(float(np.percentile(lat, 99)), 3),
        "mae_sys": round(report.model["mae_sys"], 3), "baseline_mae_sys": round(best["mae_sys"], 3),
        "mae_dia": round(report.model["mae_dia"], 3), "baseline_mae_dia": round(best["mae_dia"], 3),
        "auc": round(report.model["auc"], 4), "baseline_auc": round(best["auc"], 4),
        "brier": round(report.model["brier"], 4), "baseline_brier": round(best["brier"], 4),
        "kept": report.kept, "train_s": round(train_s, 1), "n_train": report.n_train, "n_test": report.n_test,
        "data": f"synthetic {N} patients x {DAYS} days, seed {SEED}", "store": "none (in-process)"}))


if __name__ == "__main__":
    main()
