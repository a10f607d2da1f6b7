"""BP forecasting model: training quality against the baselines and in-process prediction latency.

Trains on a SYNTHETIC cohort (``ml.bp_cohort``, N patients x DAYS days, seed 1) with the time-based
split, then times one prediction as the server makes it (features over the patient's last 28 days, then
the three boosters, loaded from their stored bytes as the registry loads them) for CALLS (patient,
time) pairs, REPEATS times over (the latency headline's median and range). ``baseline_*`` is the better
of the two baselines (last-week mean, linear trend), evaluated on the same test split. Not store-bound
(the store read before a prediction is not included)."""

from __future__ import annotations

import os
import time

# Idle OpenMP threads left by training must sleep, not spin, or they steal the core the timed
# single-row predictions run on (a server process never trains, so it has none).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from bench._common import REPEATS, SMOKE, emit, pct, rounded, start
from ml.bp_cohort import DAY_S, describe, generate_cohort
from ml.bp_features import bp_features, enough_history
from ml.bp_model import BPForecaster, train_bp

N, DAYS, SEED = (40, 90, 1) if SMOKE else (150, 150, 1)
CALLS = 100 if SMOKE else 2_000


def latencies_ms(model: BPForecaster, cohort: list, rng: np.random.Generator) -> list[float]:
    times: list[float] = []
    while len(times) < CALLS:
        s = cohort[int(rng.integers(len(cohort)))]
        as_of = float(s.times[0] + rng.uniform(28, DAYS) * DAY_S)
        if not enough_history(s, as_of):
            continue
        t = time.perf_counter()
        model.predict(bp_features(s, as_of))
        times.append((time.perf_counter() - t) * 1000)
    return times


def main() -> None:
    budget = start("ml")
    t0 = time.perf_counter()
    cohort = generate_cohort(N, DAYS, SEED)
    forecaster, report = train_bp(cohort, describe(N, DAYS, SEED), step_days=4)
    train_s = time.perf_counter() - t0
    print(report.to_text(), flush=True)
    model = BPForecaster.from_bytes(forecaster.to_bytes())
    rng = np.random.default_rng(0)
    p50, p99 = [], []
    for _ in budget.rounds(REPEATS, "latency repeat", reserve=2):
        lat = latencies_ms(model, cohort, rng)
        p50.append(pct(lat, 50))
        p99.append(pct(lat, 99))
    best = report.best_baseline
    emit(budget, {"predict_p50_ms": p50, "predict_p99_ms": p99},
         mae_sys=rounded(report.model["mae_sys"]), baseline_mae_sys=rounded(best["mae_sys"]),
         mae_dia=rounded(report.model["mae_dia"]), baseline_mae_dia=rounded(best["mae_dia"]),
         auc=round(report.model["auc"], 4), baseline_auc=round(best["auc"], 4),
         brier=round(report.model["brier"], 4), baseline_brier=round(best["brier"], 4),
         kept=report.kept, train_s=round(train_s, 1), n_train=report.n_train, n_test=report.n_test,
         calls_per_repeat=CALLS, data=f"synthetic {N} patients x {DAYS} days, seed {SEED}", store="none (in-process)")


if __name__ == "__main__":
    main()
