"""Missed doses: a dose not confirmed within the grace window (``HEALTHMATE_DOSE_GRACE_S``, 30 min) is marked
missed (a conditional update, so once), pushed (``dose:missed``) and the patient's caregivers are notified;
that notification is claimed with a lease (``LEASE``) and sent again if its process died before finishing.
After downtime the same rules apply to whatever the sweep finds."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from beanie import PydanticObjectId

from server.care.access import care_team
from server.core.documents import passed
from server.core.i18n import Text
from server.core.ports import Broadcaster, Notifier
from server.meds.claims import DoseClaims
from server.meds.delivery import LEASE
from server.meds.documents import dose_json
from server.meds.medications import bounded, notify_quietly


class MissedDoses:
    def __init__(self, claims: DoseClaims, broadcaster: Broadcaster, notifier: Notifier, grace: timedelta) -> None:
        self.claims = claims
        self.out = broadcaster
        self.notifier = notifier
        self.grace = grace

    async def recover(self, now: datetime) -> None:
        """Claims whose process died (the lease ran out) go back to be taken again."""
        await self.claims.update_where({"state": "missed", "lease_until": passed(now)},
                                       {"$set": {"missed_notified_at": None, "lease_owner": None, "lease_until": None}})

    async def mark(self, now: datetime) -> None:
        """Unconfirmed past the grace window: missed. A conditional update: once per dose."""
        for state in ("scheduled", "reminded"):
            await self.claims.update_where({"state": state, "due_at": {"$lte": now - self.grace}},
                                           {"$set": {"state": "missed", "missed_at": now, "box_next_at": None}})

    async def notify(self, now: datetime) -> None:
        token, claimed = await self.claims.claim({"state": "missed", "missed_notified_at": None},
                                                 {"$set": {"missed_notified_at": now, "lease_until": now + LEASE}})
        if not claimed:
            return
        teams: dict[Any, list[PydanticObjectId]] = {}
        for d in claimed:
            if d["patient_id"] not in teams:
                teams[d["patient_id"]] = [lk.member_id for lk in await care_team(d["patient_id"], ("caregiver",))]
            await self.out.to_patient(d["patient_id"], "dose:missed", dose_json(d))
        await bounded([
            notify_quietly(self.notifier, teams[d["patient_id"]], "dose_missed",
                           Text("dose.missed.title", medication=d["medication_name"]),
                           Text("dose.missed.body", due=d["slot"].replace("T", " "), timezone=d["timezone"]),
                           patient_id=d["patient_id"], urgency="high",
                           data={"dose_id": str(d["_id"]), "medication_id": str(d["medication_id"])})
            for d in claimed])
        await self.claims.release("lease_owner", token, claimed, {"lease_until": None})
