"""Confirming a dose: from the app (``dose:confirm``, by the patient or their care team) or by the medicine
box (opening the dose's drawer). A dose goes scheduled/reminded → confirmed once, up to ``EARLY`` before it
is due; one fewer is then in stock, and ``on_confirmed`` hooks run (the box turns the drawer's light off)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from beanie import PydanticObjectId

from server.care.access import require_patient
from server.core.documents import aware, iso, utcnow
from server.core.errors import ApiError, forbidden, not_found
from server.core.identity import Client, Principal, as_object_id
from server.core.ports import Broadcaster
from server.meds.claims import DoseClaims
from server.meds.documents import dose_json
from server.meds.medications import WRITERS, Medications

log = logging.getLogger(__name__)
EARLY = timedelta(hours=1)  # a dose may be confirmed this long before it is due
ConfirmHook = Callable[[dict[str, Any]], Awaitable[None]]


class Confirmations:
    def __init__(self, claims: DoseClaims, broadcaster: Broadcaster, meds: Medications) -> None:
        self.claims = claims
        self.out = broadcaster
        self.meds = meds
        self.on_confirmed: list[ConfirmHook] = []

    async def confirm(self, dose_id: Any, patient_id: PydanticObjectId, via: str,
                      by: PydanticObjectId | None) -> dict[str, Any] | None:
        """scheduled/reminded → confirmed (once); None if this dose is not open for confirming."""
        now = utcnow()
        d = await self.claims.doses.find_one_and_update(
            {"_id": dose_id, "patient_id": patient_id, "state": {"$in": ["scheduled", "reminded"]},
             "due_at": {"$lte": now + EARLY}},
            {"$set": {"state": "confirmed", "confirmed_at": now, "confirmed_via": via, "confirmed_by": by,
                      "box_next_at": None}}, return_document=True)
        if d is None:
            return None
        dose = dose_json(d)
        await self.out.to_patient(patient_id, "dose:confirmed", dose)
        await self.meds.use_stock(d["medication_id"], None)
        for hook in self.on_confirmed:
            try:
                await hook(d)
            except Exception:
                log.exception("confirm hook failed")
        return dose

    async def from_app(self, principal: Principal, client: Client, patient_id: str, dose_id: str) -> dict[str, Any]:
        """Confirmed by the patient or their care team; why not, if it cannot be (confirming twice is harmless)."""
        pid = await require_patient(principal, patient_id, "dose.confirm", client, dose_id=dose_id)
        if principal.role not in WRITERS:
            raise forbidden("Only the patient or their care team confirms a dose")
        oid = as_object_id(dose_id, "dose_id")
        dose = await self.confirm(oid, pid, "app", principal.user_id)
        if dose is not None:
            return dose
        current = await self.claims.doses.find_one({"_id": oid, "patient_id": pid})
        if current is None:
            raise not_found("dose")
        if current["state"] == "confirmed":
            return dose_json(current)
        if current["state"] == "missed":
            raise ApiError("dose_missed", "This dose was marked missed", 409)
        raise ApiError("not_due_yet", "This dose is not due within the hour", 409,
                       {"due_at": iso(aware(current["due_at"]))})
