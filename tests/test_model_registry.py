"""The model registry and BP forecasts: versions stored in GridFS, activation and rollback reaching a
second server process through Redis without a restart, every prediction recording the version that
made it and its synthetic label, forecasts pushed after new readings, and the training CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from beanie import PydanticObjectId

from ml.bp_cohort import describe, generate_cohort
from ml.bp_model import build_dataset, fit, time_split, train_and_report
from server.app import SERVER, create_app
from server.infra.embedded_store import EmbeddedStore
from server.streaming.history import AnalysisChunk
from server.vitals.bp_history import BPHistory
from server.vitals.documents import ModelVersion, Prediction
from tests.conftest import TEST_SECRET, make_settings
from tests.helpers import Api, Sock


@pytest.fixture(scope="module")
def blobs() -> list[tuple[bytes, dict[str, Any]]]:
    """Two different small models (their quality does not matter here)."""
    train, test, cut = time_split(build_dataset(generate_cohort(30, 90, 11), step_days=4))
    out = []
    for rounds in (10, 40):
        forecaster, _ = train_and_report(train, test, cut, describe(30, 90, 11), lambda d, r=rounds: fit(d, rounds=r))
        out.append((forecaster.to_bytes(), forecaster.card))
    return out


async def _readings(sock: Sock, patient_id: str, n: int = 8) -> None:
    now = datetime.now(UTC)
    for i in range(n):
        at = (now - timedelta(days=n - i, hours=3)).isoformat()
        await sock.ok("bp:add", {"patient_id": patient_id, "systolic": 138 + i, "diastolic": 86, "pulse": 70,
                                 "measured_at": at})


async def _version_seen(sock: Sock, patient_id: str, version: int) -> dict[str, Any]:
    for _ in range(100):
        reply = await sock.ok("ml:bp-forecast", {"patient_id": patient_id})
        if reply["available"] and reply["model"]["version"] == version:
            return reply
        await asyncio.sleep(0.05)
    raise AssertionError(f"version {version} never reached the second process: {reply}")


async def test_activate_and_rollback_reach_a_second_process(store: EmbeddedStore, redis_url: str, tmp_path: Path,
                                                            aiohttp_server: Any, blobs: list[Any]) -> None:
    settings = make_settings(store.url, tmp_path, redis_url=redis_url)
    one, two = await aiohttp_server(create_app(settings)), await aiohttp_server(create_app(settings))
    registry = one.app[SERVER].models
    async with Api.of(one) as api1, Api.of(two) as api2:
        patient = await api1.register("patient")
        carer = await api1.register("caregiver")
        stranger = await api1.register("clinician")
        await api1.link(patient, carer)
        on_one, carer_two = await api1.socket(patient), await api2.socket(carer)
        # No model yet: the answer says so (a normal state), it does not fail.
        none = await carer_two.ok("ml:bp-forecast", {"patient_id": patient.id})
        assert none["available"] is False and none["reason"]["code"] == "model_unavailable" and none["disclaimer"]
        await _readings(on_one, patient.id)

        v1 = await registry.register("bp", blobs[0][0], blobs[0][1], "test")
        v2 = await registry.register("bp", blobs[1][0], blobs[1][1], "test")
        assert (v1.version, v2.version) == (1, 2) and v1.size == len(blobs[0][0]) and v1.synthetic
        assert v1.training_data["generator"] and v1.features == blobs[0][1]["features"] and not v1.active

        await registry.activate("bp", 1, "test")
        first = await _version_seen(carer_two, patient.id, 1)
        await registry.activate("bp", 2, "test")
        second = await _version_seen(carer_two, patient.id, 2)
        assert second["next_7d_mean"] != first["next_7d_mean"]  # a different model answered
        await registry.rollback("bp", "test")
        back = await _version_seen(carer_two, patient.id, 1)
        assert back["next_7d_mean"] == first["next_7d_mean"]
        assert [mv.version for mv in await ModelVersion.find(ModelVersion.active == True).to_list()] == [1]  # noqa: E712

        # Every answer is labelled synthetic, and the stored prediction names the version that made it.
        for reply in (first, second, back):
            assert reply["synthetic"] is True and "SYNTHETIC" in reply["label"] and reply["disclaimer"]
            assert 0 <= reply["p_stage2_week"] <= 1 and reply["based_on"]["readings_28d"] == 8
            stored = await Prediction.get(PydanticObjectId(reply["id"]))
            assert stored is not None and stored.model_version == reply["model"]["version"]
            assert stored.synthetic is True and "SYNTHETIC" in (stored.label or "")
            assert stored.requested_by == PydanticObjectId(carer.id) and stored.trigger == "request"

        # A new reading on process one: its forecast is pushed to the care team on process two.
        await _readings(on_one, patient.id, 1)
        (pushed,) = await carer_two.events.wait("bp:forecast", timeout=10)
        assert pushed["model"]["version"] == 1 and pushed["reading_id"] and pushed["synthetic"] is True
        assert (await Prediction.find(Prediction.trigger == "reading").count()) >= 1

        # What training from the store reads: the patient's readings, soft-deleted ones left out.
        (last,) = (await on_one.ok("bp:list", {"patient_id": patient.id, "limit": 1}))["items"]
        await on_one.ok("bp:delete", {"reading_id": last["id"]})
        history = BPHistory(AnalysisChunk.get_pymongo_collection)
        (series,) = [s async for s in history.store_cohort(min_readings=5)]
        assert series.patient == patient.id and series.times.size == 8 and series.hr is None
        assert list(series.systolic) == [138 + i for i in range(8)] and list(np.diff(series.times) > 0) == [True] * 7

        # Streamed analyses become daily heart-rate / RMSSD summaries.
        pid = PydanticObjectId(patient.id)
        await AnalysisChunk(stream_id=PydanticObjectId(), patient_id=pid, start=datetime.now(UTC) - timedelta(days=1),
                            items=[{"at": 0, "hr": 70.0, "rmssd": 40.0}, {"at": 1, "hr": 74.0, "rmssd": None}]).insert()
        series = await history.patient_series(pid, datetime.now(UTC))
        assert series.hr is not None and list(series.hr) == [72.0] and list(series.rmssd) == [40.0]
        # Doses decided by the medication scheduler (its dose_events collection) become daily adherence.
        yesterday = datetime.now(UTC).replace(hour=8, minute=0) - timedelta(days=1)
        med = PydanticObjectId()
        await Prediction.get_pymongo_collection().database["dose_events"].insert_many([
            {"patient_id": pid, "medication_id": med, "slot": f"slot-{i}", "due_at": yesterday + timedelta(hours=h),
             "state": state}
            for i, (h, state) in enumerate(((0, "confirmed"), (12, "missed"), (13, "scheduled")))])
        series = await history.patient_series(pid, datetime.now(UTC))
        assert series.adherence is not None and list(series.adherence) == [0.5]

        # A stranger is refused, and the refusal is audited.
        reply = await (await api2.socket(stranger)).call("ml:bp-forecast", {"patient_id": patient.id})
        assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
        await registry.rollback("bp", "test")  # rolling back again returns to the version rolled back from
        await _version_seen(carer_two, patient.id, 2)


async def test_training_cli_prints_the_report_and_registers(store: EmbeddedStore, redis_url: str,
                                                            tmp_path: Path) -> None:
    db = f"hm_cli_{os.getpid()}"
    env = {**os.environ, "HEALTHMATE_MONGODB_URL": store.url, "HEALTHMATE_MONGODB_DB": db,
           "HEALTHMATE_REDIS_URL": redis_url, "HEALTHMATE_JWT_SECRET": TEST_SECRET,
           "HEALTHMATE_DATA_DIR": str(tmp_path), "HEALTHMATE_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "server.cli", "train", "bp", "--synthetic", "150", "--days", "120", "--seed", "5",
           "--activate"]
    done = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("BP model training report - SYNTHETIC data: SYNTHETIC cohort of 150 patients")
    for line in ("MAE systolic (mmHg)", "MAE diastolic (mmHg)", "ROC AUC stage-2 week", "Brier score",
                 "last-week", "lin-trend", "KEPT", "registered bp v1", "activated bp v1"):
        assert line in out, out
    listed = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "server.cli", "models", "list", "bp"],
                                     env=env, capture_output=True, text=True, timeout=60)
    assert "bp v1 ACTIVE  SYNTHETIC" in listed.stdout, listed.stdout + listed.stderr
    rolled = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "server.cli", "models", "rollback", "bp"],
                                     env=env, capture_output=True, text=True, timeout=60)
    assert rolled.returncode == 1 and "No earlier active version" in rolled.stderr
    from_store = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "server.cli", "train", "bp",
                                                          "--from-store"], env=env, capture_output=True, text=True,
                                         timeout=60)
    assert from_store.returncode == 2 and "no labelled weeks" in from_store.stderr, from_store.stderr
