"""Every benchmark still runs: ``python -m bench --smoke NAME`` (a few seconds of tiny load, through the
same runner as ``make bench``) produces its JSON line with the common fields and its headline keys,
each with its range, and README's table can show it. And the runner marks a bench it had to end
(over its budget) as failed instead of keeping its previous figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.__main__ import BENCHES
from bench._common import BUDGETS_S, END_S, GRACE_S
from bench._table import table

ROOT = Path(__file__).resolve().parent.parent
# The headline keys each bench must print (each with KEY_min and KEY_max), as issue 17 lists them.
HEADLINES = {
    "accuracy": ["worst_within_5", "worst_coverage", "rates_on_pulseless"],
    "alerts": ["e2e_p99_ms_idle", "e2e_p99_ms_load", "capacity_readings_per_s"],
    "calls": ["setup_p50_ms", "direct_setup_p50_ms"],
    "dashboard": ["fps"],
    "device_transports": ["sio_heartbeat_p50_ms", "mqtt_heartbeat_p50_ms", "sio_frames_per_s", "mqtt_frames_per_s"],
    "events": ["rt_per_s_1", "rt_per_s_2", "bare_python_rt_per_s", "node_rt_per_s", "cpu_us_per_rt"],
    "ml": ["predict_p50_ms", "predict_p99_ms"],
    "push": ["alert_to_push_p50_ms", "alert_to_push_p99_ms", "pushes_per_s", "outbox_depth_max",
             "baseline_pushes_per_s", "pushes_per_s_ratio"],
    "reminders": ["lag_p99_ms", "notifications_stored", "doses_per_s", "store_commands_per_dose"],
    "rooms": ["socketio_us_per_disconnect", "indexed_us_per_disconnect"],
    "rush": ["patients", "patients_off"],
    "scale": ["scale_efficiency", "store_commands_per_op"],
    "startup": ["cold_start_s", "warm_start_s"],
    "streams": ["streams_per_core", "naive_streams_per_core", "ratio", "analysis_only_ratio", "watcher_p99_ms",
                "delivered_ratio"],
}
OTHER_KEYS = {"accuracy": ["recordings", "all_meet_goals"], "reminders": ["doses"],
              "rooms": ["socketio_growth", "indexed_growth", "sockets"],
              "rush": ["reminder_p99_ms", "bp_ack_p99_ms", "alert_e2e_p99_ms_on", "alert_e2e_ratio",
                       "store_cmds_per_patient", "server_cpu_s", "store_cpu_s", "steps", "window_s"],
              "streams": ["top_reached"],
              "push": ["devices", "workers"],
              "calls": ["max_relayed_calls", "top_reached"],
              "alerts": ["cpu_us_per_reading", "store_commands_per_reading"], "scale": ["cpu_us_per_op"]}
COMMON = ["bench", "machine", "repeats", "budget_s", "elapsed_s", "stopped_on_budget", "cut_for_budget", "smoke",
          "seconds", "when"]


def run_bench(folder: Path, name: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = folder / f"{name}.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out), name], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    return proc, json.loads(out.read_text())


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess[str], dict]]:
    """Every bench's smoke run, two at a time (much of a run is waiting: process start-ups, windows)."""
    folder = tmp_path_factory.mktemp("bench")
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(BENCHES, pool.map(lambda name: run_bench(folder, name), BENCHES), strict=True))


def test_every_bench_has_a_smoke_check() -> None:
    assert set(HEADLINES) == set(BENCHES)


@pytest.mark.timeout(900)  # the first one waits for all the runs
@pytest.mark.parametrize("name", BENCHES)
def test_bench_smoke_run_prints_its_line(smoke_runs: dict[str, tuple[subprocess.CompletedProcess[str], dict]],
                                         name: str) -> None:
    proc, doc = smoke_runs[name]
    entry = doc["results"][name]
    assert proc.returncode == 0 and "run_failed" not in entry, (entry, proc.stdout[-3000:], proc.stderr[-3000:])
    assert entry["smoke"] is True and entry["bench"] == name
    for key in COMMON + OTHER_KEYS.get(name, []):
        assert key in entry, key
    assert {"cpu", "cores", "calibration"} <= entry["machine"].keys()
    calibration = entry["machine"]["calibration"]
    assert calibration["python_loop_ms"] > 0 and calibration["numpy_kernel_ms"] > 0
    assert entry["repeats"] >= 1
    for key in HEADLINES[name]:
        values = [entry[key], entry[f"{key}_min"], entry[f"{key}_max"]]
        for v in values:  # a number, or one per server / configuration
            assert isinstance(v, int | float) or (isinstance(v, dict) and v and all(
                isinstance(x, int | float) for x in v.values())), (key, values)
    row = next(line for line in table(doc).splitlines() if line.startswith(f"| {name} |"))
    assert "FAILED" not in row and "not run" not in row


def test_a_bench_over_its_budget_is_ended_and_marked_failed(tmp_path: Path) -> None:
    """The old entry is replaced by one saying why there are no figures."""
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"when": "2026-01-01T00:00:00+00:00", "results": {
        "ml": {"bench": "ml", "predict_p50_ms": 0.8}, "startup": {"bench": "startup", "cold_start_s": 2.2}}}))
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out), "startup"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "BENCH_BUDGET_SCALE": "0.002"})  # ended after a fraction of a second
    doc = json.loads(out.read_text())
    assert proc.returncode == 1
    assert doc["results"]["startup"]["run_failed"].startswith("ended: still running"), doc["results"]["startup"]
    assert "cold_start_s" not in doc["results"]["startup"]
    assert doc["results"]["ml"] == {"bench": "ml", "predict_p50_ms": 0.8}  # the others are kept
    assert "| startup | FAILED" in table(doc)


def test_the_budgets_keep_make_bench_under_25_minutes() -> None:
    """Even if every bench were ended after its budget, with a minute left for the runner and npm."""
    assert sum(BUDGETS_S.values()) + len(BUDGETS_S) * (GRACE_S + END_S) <= 24 * 60
