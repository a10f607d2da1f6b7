"""Planning: each active, scheduled medication has its doses written ahead (``HORIZON``) from its schedule
and the patient's time zone (``server.meds.dose_times``); a dose's slot (medication + local date and time)
is unique in the store, so any number of processes may plan the same doses. After downtime, doses are
planned back to ``LOOKBACK`` before now. A change to what a dose carries, or to the patient's time zone,
plans the doses not yet claimed again."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from beanie import PydanticObjectId

from server.care.documents import User
from server.core.documents import aware, utcnow
from server.infra.bulk import insert_new
from server.meds.claims import DoseClaims
from server.meds.documents import DoseEvent, Medication
from server.meds.dose_times import dose_times, parse_hhmm, zone

log = logging.getLogger(__name__)
HORIZON = timedelta(hours=36)  # doses are planned this far ahead
LOOKBACK = timedelta(hours=24)  # after downtime, doses are planned back this far
PLAN_EVERY = timedelta(minutes=10)
REPLAN_ON = frozenset({"schedule", "drawer", "name", "dose"})  # what a planned dose carries


class Planner:
    def __init__(self, claims: DoseClaims, planned: Callable[[], None]) -> None:
        self.claims = claims
        self.planned = planned  # new doses were written: the scheduler looks at them now

    async def plan(self, med: Medication, now: datetime, start: datetime | None = None) -> int:
        """Write the medication's doses due from ``start`` (or where planning stopped) to now + HORIZON."""
        schedule = med.plan()
        if med.archived_at is not None or schedule.as_needed or not schedule.times:
            return 0
        user = await User.get(med.patient_id)
        tzname = user.timezone if user else "UTC"
        begin = start or max(aware(med.planned_until or med.created_at), now - LOOKBACK)
        end = now + HORIZON
        rows = [DoseEvent(patient_id=med.patient_id, medication_id=med.id, slot=p.key, timezone=tzname,  # type: ignore[arg-type]
                          due_at=p.due, medication_name=med.name, dose=med.dose, drawer=med.drawer).model_dump(
                              by_alias=True, exclude={"id"})
                for p in dose_times([parse_hhmm(t) for t in schedule.times], zone(tzname), begin, end,
                                    days=schedule.days, first_day=schedule.start_date, last_day=schedule.end_date)]
        inserted = await insert_new(self.claims.doses, rows)  # a slot already planned (by us, or another) is kept
        await Medication.get_pymongo_collection().update_one({"_id": med.id}, {"$max": {"planned_until": end}})
        if inserted:
            self.planned()
        return inserted

    async def replan(self, med: Medication, change: str, changes: dict[str, Any]) -> None:
        """What a dose carries changed: the doses not yet claimed are planned again from now."""
        if change not in ("created", "archived") and not REPLAN_ON & changes.keys():
            return
        await self._plan_again(med)

    async def replan_patient(self, patient_id: PydanticObjectId) -> None:
        """The patient's time zone changed: doses not yet claimed are planned again in the new zone."""
        async for med in Medication.find(Medication.patient_id == patient_id, Medication.archived_at == None):  # noqa: E711
            await self._plan_again(med)

    async def _plan_again(self, med: Medication) -> None:
        now = utcnow()
        await self.claims.doses.delete_many({"medication_id": med.id, "state": "scheduled", "due_at": {"$gte": now},
                                             "lease_owner": None})
        await self.plan(med, now, start=now)

    async def plan_all(self, now: datetime) -> None:
        """Every active medication whose planned doses end before the horizon (less ``PLAN_EVERY``)."""
        # Never planned, then planned not far enough: each on plan_due (an $or would read every medication).
        for stale in (None, {"$lt": now + HORIZON - PLAN_EVERY}):
            async for med in Medication.find({"archived_at": None, "planned_until": stale}):
                try:
                    await self.plan(med, now)
                except Exception:
                    log.exception("planning %s failed", med.id)
