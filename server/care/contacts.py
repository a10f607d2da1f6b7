"""A patient's medical contacts (doctors, clinics, pharmacies, emergency contacts): CRUD by the patient
and linked users, every change audited and pushed to the patient's room. Emergency contacts are listed in
emergency alerts and reached through the escalation webhook."""

from __future__ import annotations

from typing import Any

from beanie import PydanticObjectId

from server.care import audit
from server.care.access import require_patient
from server.care.documents import ContactIn, ContactUpdate, MedicalContact, check_reachable
from server.core.documents import utcnow
from server.core.errors import ApiError, not_found
from server.core.identity import Client, Principal, as_object_id
from server.core.ports import Broadcaster
from server.infra.store import URGENT_LANE

MAX_CONTACTS = 100
MAX_EMERGENCY_CONTACTS = 5  # each is told by the escalation webhook: more would make it a broadcast channel


async def emergency_contacts(patient_id: PydanticObjectId) -> list[dict[str, Any]]:
    """The patient's emergency contacts, for an alert: read on the urgent lane."""
    docs = await URGENT_LANE.find(MedicalContact, {"patient_id": patient_id, "kind": "emergency"}, sort=[("_id", 1)])
    return [{"id": str(c.id), "name": c.name, "phone": c.phone, "email": c.email, "relationship": c.relationship}
            for c in docs]


def too_many_emergency_contacts() -> ApiError:
    return ApiError("too_many_emergency_contacts",
                    f"A patient has at most {MAX_EMERGENCY_CONTACTS} emergency contacts", 409,
                    {"max": MAX_EMERGENCY_CONTACTS})


class Contacts:
    def __init__(self, broadcaster: Broadcaster) -> None:
        self.broadcaster = broadcaster

    async def list(self, principal: Principal, patient_id: Any, client: Client | None) -> list[dict[str, Any]]:
        pid = await require_patient(principal, patient_id, "contacts.read", client)
        docs = await MedicalContact.find(MedicalContact.patient_id == pid).sort(+MedicalContact.id).to_list()
        return [c.public() for c in docs]

    async def add(self, principal: Principal, patient_id: Any, body: ContactIn, client: Client | None
                  ) -> dict[str, Any]:
        pid = await require_patient(principal, patient_id, "contacts.add", client, kind=body.kind)
        if await MedicalContact.find(MedicalContact.patient_id == pid).count() >= MAX_CONTACTS:
            raise ApiError("too_many_contacts", f"A patient keeps at most {MAX_CONTACTS} contacts", 409)
        contact = MedicalContact(patient_id=pid, created_by=principal.user_id,
                                 **body.model_dump(exclude={"patient_id"}))
        if contact.kind == "emergency":
            await self._emergency_room(pid)
        await contact.insert()
        if contact.kind == "emergency" and await self._emergency_count(pid) > MAX_EMERGENCY_CONTACTS:
            await contact.delete()  # another add won the last place meanwhile
            raise too_many_emergency_contacts()
        return await self._changed("added", contact)

    @staticmethod
    async def _emergency_count(patient_id: PydanticObjectId) -> int:
        return await MedicalContact.find(MedicalContact.patient_id == patient_id,
                                         MedicalContact.kind == "emergency").count()

    async def _emergency_room(self, patient_id: PydanticObjectId) -> None:
        """Refuse one more emergency contact where there are as many as allowed. Checked again once stored:
        of parallel additions past the cap none is kept (each sees the others), never more than the cap."""
        if await self._emergency_count(patient_id) >= MAX_EMERGENCY_CONTACTS:
            raise too_many_emergency_contacts()

    async def _find(self, principal: Principal, contact_id: str, action: str, client: Client | None,
                    patient_id: Any = None) -> MedicalContact:
        contact = await MedicalContact.get(as_object_id(contact_id, "contact_id"))
        if contact is None:
            raise not_found("contact")
        pid = await require_patient(principal, contact.patient_id, action, client, contact_id=contact_id)
        if patient_id is not None and as_object_id(patient_id, "patient_id") != pid:
            raise not_found("contact")
        return contact

    async def update(self, principal: Principal, body: ContactUpdate, client: Client | None,
                     patient_id: Any = None) -> dict[str, Any]:
        changes = body.model_dump(exclude_unset=True, exclude={"contact_id"})
        if not changes:
            raise ApiError("invalid_payload", "Nothing to change", 422)
        contact = await self._find(principal, body.contact_id, "contacts.update", client, patient_id)
        merged = {**contact.model_dump(include={"kind", "phone", "email"}), **changes}
        try:
            check_reachable(merged["kind"], merged["phone"], merged["email"])
        except ValueError as exc:
            raise ApiError("invalid_payload", str(exc), 422, {"problems": [{"field": "(body)",
                                                                           "problem": str(exc)}]}) from None
        becomes_emergency = merged["kind"] == "emergency" and contact.kind != "emergency"
        if becomes_emergency:
            await self._emergency_room(contact.patient_id)
        before = contact.model_copy()
        for key, value in changes.items():
            setattr(contact, key, value)
        contact.updated_at = utcnow()
        await contact.save()
        if becomes_emergency and await self._emergency_count(contact.patient_id) > MAX_EMERGENCY_CONTACTS:
            await before.save()
            raise too_many_emergency_contacts()
        return await self._changed("updated", contact)

    async def delete(self, principal: Principal, contact_id: str, client: Client | None,
                     patient_id: Any = None) -> dict[str, Any]:
        contact = await self._find(principal, contact_id, "contacts.delete", client, patient_id)
        await contact.delete()
        await audit.record("contacts.deleted", principal=principal, patient_id=contact.patient_id, client=client,
                           contact=contact.public())
        return await self._changed("deleted", contact)

    async def _changed(self, change: str, contact: MedicalContact) -> dict[str, Any]:
        data = contact.public()
        await self.broadcaster.to_patient(contact.patient_id, "contacts:changed", {"change": change, "contact": data})
        return data
