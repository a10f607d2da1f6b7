"""Medications: created, updated and archived by the patient or a linked caregiver acting for them
(audited with who), every change pushed live to everyone linked (``med:changed``) and kept as history
(``MedicationChange``). Stock falling to its low mark notifies the patient and their care team once per
crossing. The events and routes are in ``api.py``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from beanie import PydanticObjectId

from server.care.access import care_team, require_patient
from server.care.uploads import Uploads
from server.core.documents import iso, utcnow
from server.core.errors import ApiError, forbidden, not_found
from server.core.i18n import Text
from server.core.identity import Client, Principal, as_object_id
from server.core.ports import Broadcaster, Notifier, Urgency
from server.meds.documents import MedCreate, Medication, MedicationChange, MedRef, MedUpdate

log = logging.getLogger(__name__)
WRITERS = frozenset({"patient", "caregiver", "clinician"})  # the patient, or anyone linked acting for them
MAX_ACTIVE = 100  # medications per patient


async def notify_quietly(notifier: Notifier, user_ids: list[PydanticObjectId], kind: str, title: str | Text,
                         body: str | Text = "", *, patient_id: PydanticObjectId, data: dict[str, Any] | None = None,
                         urgency: Urgency = "normal") -> None:
    """A failure to notify never undoes the change that caused it."""
    try:
        await notifier.notify(user_ids, kind, title, body, patient_id=patient_id, data=data or {}, urgency=urgency)
    except Exception:
        log.exception("could not notify %s (%s)", kind, title)


async def bounded(jobs: list[Awaitable[Any]], width: int = 32) -> None:
    """Run ``jobs`` (notifications to many) ``width`` at a time."""
    for i in range(0, len(jobs), width):
        await asyncio.gather(*jobs[i:i + width])


async def notify(svc: Any, user_ids: list[PydanticObjectId], kind: str, title: str | Text, body: str | Text = "",
                 **kwargs: Any) -> None:
    """``devices/box_service.py``'s way in (it holds the services registry), until it is handed a Notifier;
    then delete this."""
    await notify_quietly(svc.notifications, user_ids, kind, title, body, **kwargs)


async def list_for(patient_id: PydanticObjectId, include_archived: bool = False) -> list[Medication]:
    query = Medication.find(Medication.patient_id == patient_id)
    if not include_archived:
        query = query.find(Medication.archived_at == None)  # noqa: E711
    return await query.sort(Medication.name).to_list()


async def drawers(patient_id: PydanticObjectId) -> list[dict[str, Any]]:
    """The patient's active medications kept in a drawer of their medicine box."""
    meds = Medication.find(Medication.patient_id == patient_id, Medication.archived_at == None,  # noqa: E711
                           Medication.drawer != None)  # noqa: E711
    return [{"drawer": m.drawer, "medication_id": str(m.id), "name": m.name} async for m in meds]


ChangeHook = Callable[[Medication, str, dict[str, Any]], Awaitable[None]]


class Medications:
    def __init__(self, broadcaster: Broadcaster, notifier: Notifier, uploads: Uploads) -> None:
        self.out = broadcaster
        self.notifier = notifier
        self.uploads = uploads  # a medication's image must be the caller's upload for its patient
        self.on_change: list[ChangeHook] = []  # the scheduler re-plans the medication's doses

    async def _writer(self, principal: Principal, client: Client, patient_id: str, action: str,
                      **details: Any) -> PydanticObjectId:
        pid = await require_patient(principal, patient_id, action, client, **details)
        if principal.role not in WRITERS:
            raise forbidden("Only the patient or their care team changes the patient's medications")
        return pid

    async def _check_image(self, principal: Principal, pid: PydanticObjectId, image_id: str | None) -> None:
        """Refuse another patient's picture, or anyone else's upload, as this medication's image."""
        if image_id is not None:
            await self.uploads.require_own(principal.user_id, image_id, "medication", pid)

    async def create(self, principal: Principal, client: Client, body: MedCreate) -> dict[str, Any]:
        pid = await self._writer(principal, client, body.patient_id, "medication.create", name=body.name)
        await self._check_image(principal, pid, body.image_id)
        active = await Medication.find(Medication.patient_id == pid, Medication.archived_at == None).count()  # noqa: E711
        if active >= MAX_ACTIVE:
            raise ApiError("too_many_medications", f"A patient has at most {MAX_ACTIVE} active medications", 409)
        values = body.model_dump(mode="json", exclude={"patient_id"})
        med = Medication(patient_id=pid, **values)
        await med.insert()
        await self._changed(principal, med, "created", {k: {"from": None, "to": v} for k, v in values.items()},
                            was_low=False)
        return med.public()

    @staticmethod
    async def _load(pid: PydanticObjectId, medication_id: str) -> Medication:
        med = await Medication.get(as_object_id(medication_id, "medication_id"))
        if med is None or med.patient_id != pid:
            raise not_found("medication")
        return med

    async def update(self, principal: Principal, client: Client, body: MedUpdate) -> dict[str, Any]:
        fields = body.model_fields_set - {"patient_id", "medication_id"}
        pid = await self._writer(principal, client, body.patient_id, "medication.update",
                                 medication_id=body.medication_id, fields=sorted(fields))
        med = await self._load(pid, body.medication_id)
        if med.archived_at is not None:
            raise ApiError("archived", "This medication is archived", 409)
        if "image_id" in fields and body.image_id != med.image_id:
            await self._check_image(principal, pid, body.image_id)
        new = body.model_dump(mode="json", include=fields)
        changes = {k: {"from": getattr(med, k), "to": v} for k, v in new.items() if getattr(med, k) != v}
        if not changes:
            return med.public()
        was_low = med.low_stock
        for key, change in changes.items():
            setattr(med, key, change["to"])
        med.revision += 1
        med.updated_at = utcnow()
        await med.save()
        await self._changed(principal, med, "updated", changes, was_low=was_low)
        return med.public()

    async def archive(self, principal: Principal, client: Client, body: MedRef) -> dict[str, Any]:
        pid = await self._writer(principal, client, body.patient_id, "medication.archive",
                                 medication_id=body.medication_id)
        med = await self._load(pid, body.medication_id)
        if med.archived_at is not None:
            return med.public()
        med.archived_at = med.updated_at = utcnow()
        med.revision += 1
        await med.save()
        await self._changed(principal, med, "archived", {"archived_at": {"from": None, "to": iso(med.archived_at)}},
                            was_low=True)
        return med.public()

    @staticmethod
    async def listed(principal: Principal, client: Client, patient_id: str,
                     include_archived: bool) -> list[dict[str, Any]]:
        pid = await require_patient(principal, patient_id, "medication.list", client)
        return [m.public() for m in await list_for(pid, include_archived)]

    @staticmethod
    async def history(principal: Principal, client: Client, patient_id: str,
                      medication_id: str | None) -> tuple[dict[str, Any], Callable[[Any], bool] | None]:
        """The query of the patient's change history (access checked), on ``patient_recent`` (a span of ``_id``:
        ``cursor_page``), and what is kept of what it finds: one medication's changes if given."""
        pid = await require_patient(principal, patient_id, "medication.history", client)
        if medication_id:
            med = as_object_id(medication_id, "medication_id")
            return {"patient_id": pid}, lambda change: change.medication_id == med
        return {"patient_id": pid}, None

    async def _changed(self, principal: Principal | None, med: Medication, change: str,
                       changes: dict[str, dict[str, Any]], *, was_low: bool) -> None:
        """Record the change, tell everyone linked, re-plan doses, and warn once when stock runs low."""
        assert med.id is not None
        await MedicationChange(patient_id=med.patient_id, medication_id=med.id, change=change, changes=changes,
                               actor_id=principal.user_id if principal else None,
                               actor_role=principal.role if principal else "system").insert()
        by = {"id": principal.id, "role": principal.role} if principal else None
        await self.out.to_patient(med.patient_id, "med:changed",
                                  {"change": change, "medication": med.public(), "by": by})
        for hook in self.on_change:
            await hook(med, change, changes)
        if med.low_stock and not was_low and med.archived_at is None:
            team = [med.patient_id, *[lk.member_id for lk in await care_team(med.patient_id, ("caregiver",))]]
            await notify_quietly(self.notifier, team, "low_stock", Text("med.low_stock.title", medication=med.name),
                                 Text("med.low_stock.body", stock=med.stock), patient_id=med.patient_id,
                                 data={"medication_id": str(med.id), "stock": med.stock})

    async def use_stock(self, med_id: PydanticObjectId, principal: Principal | None) -> None:
        """One dose taken: one fewer in stock (never below zero), recorded and pushed like any change."""
        collection = Medication.get_pymongo_collection()
        before = await collection.find_one_and_update({"_id": med_id, "stock": {"$gt": 0}},
                                                      {"$inc": {"stock": -1, "revision": 1}})
        if before is None:
            return
        med = await Medication.get(med_id)
        if med is None:
            return
        await self._changed(principal, med, "stock", {"stock": {"from": before["stock"], "to": med.stock}},
                            was_low=before["stock"] <= med.low_stock_at)
