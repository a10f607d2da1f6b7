"""Blood-pressure forecasts: asked for (``ml:bp-forecast {patient_id}``, access-checked, audited) and,
after each new reading, ``bp:forecast`` pushed to the patient's room.

The active ``bp`` model of the registry makes the prediction in-process (features over the last 28
days, vectorised; boosters loaded once per version); each prediction is stored with the model version
that made it, and a synthetic-trained model's answer says so in ``synthetic`` and ``label``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

from beanie import PydanticObjectId

from ml.bp_features import FEATURES, HORIZON_DAYS, MIN_READINGS, bp_features, enough_history
from server.care.access import require_patient
from server.core.background import cancel_and_wait
from server.core.documents import aware, iso, utcnow
from server.core.errors import ApiError
from server.core.identity import Client, Principal
from server.core.ports import Broadcaster
from server.core.urgency import URGENCY
from server.vitals.bp_history import FEATURE_DAYS, BPHistory
from server.vitals.model_registry import ModelRegistry

log = logging.getLogger(__name__)
MODEL = "bp"
UNAVAILABLE = frozenset({"model_unavailable", "not_enough_data"})
MAX_PENDING = 1_000  # forecasts after new readings being computed at once; more are skipped
DISCLAIMER = ("A statistical forecast from past home readings, not a diagnosis or medical advice. "
              "Talk to your clinician about your blood pressure; call emergency services for severe symptoms.")
_DAYS_SINCE_LAST = FEATURES.index("days_since_last")
_COUNT_28D = FEATURES.index("count_28d")


class BPForecasts:
    def __init__(self, broadcaster: Broadcaster, registry: ModelRegistry, history: BPHistory) -> None:
        self.broadcaster = broadcaster
        self.registry = registry
        self.history = history
        self._pending: dict[PydanticObjectId, asyncio.Task[None]] = {}

    async def forecast(self, patient_id: PydanticObjectId, as_of: datetime, trigger: str,
                       requested_by: PydanticObjectId | None = None) -> dict[str, Any]:
        mv, model = await self.registry.active(MODEL)
        series = await self.history.patient_series(patient_id, as_of)
        ts = as_of.timestamp()
        if not enough_history(series, ts):
            raise ApiError("not_enough_data", f"A forecast needs at least {MIN_READINGS} readings in the last "
                                              f"{FEATURE_DAYS} days", 409, {"readings": int(series.times.size)})
        x = bp_features(series, ts)
        out = model.predict(x)
        output = {"systolic": round(float(out["systolic"][0]), 1), "diastolic": round(float(out["diastolic"][0]), 1),
                  "p_stage2_week": round(float(out["p_stage2"][0]), 3)}
        prediction = await self.registry.record(mv, patient_id, as_of, output, trigger, requested_by)
        return {"id": str(prediction.id), "patient_id": str(patient_id), "available": True, "as_of": iso(as_of),
                "horizon_days": HORIZON_DAYS,
                "next_7d_mean": {"systolic": output["systolic"], "diastolic": output["diastolic"]},
                "p_stage2_week": output["p_stage2_week"],
                "based_on": {"readings_28d": int(x[_COUNT_28D]),
                             "days_since_last": round(float(x[_DAYS_SINCE_LAST]), 2)},
                "model": {"name": mv.name, "version": mv.version, "synthetic": mv.synthetic},
                "synthetic": mv.synthetic, "label": mv.card.get("label"), "disclaimer": DISCLAIMER}

    async def request(self, principal: Principal, patient_id: str, client: Client) -> dict[str, Any]:
        """The forecast (``available: true``), or why there is none yet (``available: false``: no active
        model, too few readings) — a normal state the app shows, not a failure."""
        pid = await require_patient(principal, patient_id, "ml.bp_forecast", client)
        try:
            return await self.forecast(pid, utcnow(), "request", principal.user_id)
        except ApiError as err:
            if err.code not in UNAVAILABLE:
                raise
            return {"patient_id": str(pid), "available": False,
                    "reason": {"code": err.code, "message": err.message, "details": err.details},
                    "disclaimer": DISCLAIMER}

    # --- after each new reading --------------------------------------------------------------------

    async def on_reading(self, reading: Any) -> None:
        """Forecast in the background and push ``bp:forecast``; one at a time per patient (a burst of
        readings gives one forecast that includes them all), never delaying the reading's ack."""
        pid = reading.patient_id
        if pid in self._pending or len(self._pending) >= MAX_PENDING:
            return
        task = asyncio.create_task(self._push(pid, aware(reading.measured_at), str(reading.id)),
                                   name=f"bp-forecast-{pid}")
        self._pending[pid] = task
        task.add_done_callback(lambda _: self._pending.pop(pid, None))

    async def _push(self, pid: PydanticObjectId, measured_at: datetime, reading_id: str) -> None:
        await asyncio.sleep(0.05)  # let a burst of readings land
        await URGENCY.until_clear()  # bulk work: an alert being raised goes first
        try:
            # A cuff's clock may run a little ahead: the forecast includes the reading that triggered it.
            result = await self.forecast(pid, max(utcnow(), measured_at + timedelta(seconds=1)), "reading")
        except ApiError as err:  # no active model, too few readings: nothing to show
            log.debug("no forecast after reading %s: %s", reading_id, err.code)
            return
        except Exception:
            log.exception("forecast after reading %s failed", reading_id)
            return
        await self.broadcaster.to_patient(pid, "bp:forecast", {**result, "reading_id": reading_id})

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await cancel_and_wait(*self._pending.values())
