"""A patient's medical contacts (doctors, clinics, pharmacies, emergency contacts): CRUD over
Socket.IO and REST by the patient and linked users, every change audited and pushed to the patient's
room. Emergency contacts are listed in emergency alerts and reached through the escalation webhook."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from beanie import PydanticObjectId
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pymongo import ASCENDING, IndexModel

from server.care import audit
from server.care.access import require_patient
from server.care.patients import PatientRef
from server.care.security import normalise_email
from server.core.documents import VersionedDocument, iso, utcnow
from server.core.errors import ApiError, not_found
from server.core.identity import Client, Principal, as_object_id
from server.core.patch import Patch
from server.transport.http import client_of, read_json, require_principal
from server.transport.realtime import EventContext, Realtime

Kind = Literal["doctor", "clinic", "pharmacy", "emergency"]
MAX_CONTACTS = 100
_PHONE_NOISE = re.compile(r"[\s().\-/]")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def normalise_phone(value: str) -> str:
    """E.164: ``+`` and 7 to 15 digits; spaces, dots, dashes and brackets are dropped, ``00`` becomes ``+``."""
    phone = _PHONE_NOISE.sub("", value)
    if phone.startswith("00"):
        phone = "+" + phone[2:]
    if not _E164.match(phone):
        raise ValueError("phone must be an international number like +44 20 7946 0958 (E.164)")
    return phone


Phone = Annotated[str, Field(max_length=40), AfterValidator(normalise_phone)]
Email = Annotated[str, Field(max_length=254), AfterValidator(normalise_email)]
Text = Annotated[str, Field(min_length=1, max_length=200)]


class MedicalContact(VersionedDocument):
    patient_id: PydanticObjectId
    kind: Kind
    name: str
    phone: str | None = None
    email: str | None = None
    organization: str | None = None
    relationship: str | None = None
    address: str | None = None
    notes: str | None = None
    created_by: PydanticObjectId
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime | None = None

    class Settings:
        name = "medical_contacts"
        indexes = [IndexModel([("patient_id", ASCENDING), ("kind", ASCENDING)], name="patient_kind")]

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "patient_id": str(self.patient_id), "kind": self.kind, "name": self.name,
                "phone": self.phone, "email": self.email, "organization": self.organization,
                "relationship": self.relationship, "address": self.address, "notes": self.notes,
                "created_by": str(self.created_by), "created_at": iso(self.created_at),
                "updated_at": iso(self.updated_at)}


class ContactFields(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    kind: Kind | None = None
    name: Text | None = None
    phone: Phone | None = None
    email: Email | None = None
    organization: Text | None = None
    relationship: Annotated[str, Field(min_length=1, max_length=60)] | None = None
    address: Annotated[str, Field(min_length=1, max_length=300)] | None = None
    notes: Annotated[str, Field(max_length=1000)] | None = None


class ContactIn(ContactFields):
    kind: Kind
    name: Text

    @model_validator(mode="after")
    def reachable(self) -> ContactIn:
        check_reachable(self.kind, self.phone, self.email)
        return self


class ContactAdd(ContactIn):
    patient_id: str = Field(max_length=64)


class ContactPatch(ContactFields, Patch):
    keep = frozenset({"kind", "name"})


class ContactUpdate(ContactPatch):
    contact_id: str = Field(max_length=64)


class ContactRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contact_id: str = Field(max_length=64)


def check_reachable(kind: str, phone: str | None, email: str | None) -> None:
    if kind == "emergency" and not phone:
        raise ValueError("an emergency contact needs a phone number")
    if not phone and not email:
        raise ValueError("give a phone number or an email")


async def emergency_contacts(patient_id: PydanticObjectId) -> list[dict[str, Any]]:
    docs = await MedicalContact.find(MedicalContact.patient_id == patient_id, MedicalContact.kind == "emergency") \
        .sort(+MedicalContact.id).to_list()
    return [{"id": str(c.id), "name": c.name, "phone": c.phone, "email": c.email, "relationship": c.relationship}
            for c in docs]


class Contacts:
    def __init__(self, realtime: Realtime) -> None:
        self.rt = realtime
        realtime.event("contacts:list", PatientRef)(self._list)
        realtime.event("contact:add", ContactAdd)(self._add)
        realtime.event("contact:update", ContactUpdate)(self._update)
        realtime.event("contact:delete", ContactRef)(self._delete)

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
        await contact.insert()
        return await self._changed("added", contact)

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
        for key, value in changes.items():
            setattr(contact, key, value)
        contact.updated_at = utcnow()
        await contact.save()
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
        await self.rt.to_patient(contact.patient_id, "contacts:changed", {"change": change, "contact": data})
        return data

    async def _list(self, ctx: EventContext, body: PatientRef) -> list[dict[str, Any]]:
        return await self.list(ctx.principal, body.patient_id, ctx.client)

    async def _add(self, ctx: EventContext, body: ContactAdd) -> dict[str, Any]:
        return await self.add(ctx.principal, body.patient_id, body, ctx.client)

    async def _update(self, ctx: EventContext, body: ContactUpdate) -> dict[str, Any]:
        return await self.update(ctx.principal, body, ctx.client)

    async def _delete(self, ctx: EventContext, body: ContactRef) -> dict[str, Any]:
        return await self.delete(ctx.principal, body.contact_id, ctx.client)


def _contacts(request: web.Request) -> Contacts:
    from server.transport.http import services

    contacts = services(request).contacts
    assert contacts is not None
    return contacts


async def rest_list(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    items = await _contacts(request).list(principal, request.match_info["patient_id"], client_of(request))
    return web.json_response({"items": items})


async def rest_add(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    body = await read_json(request, ContactIn)
    data = await _contacts(request).add(principal, request.match_info["patient_id"], body, client_of(request))
    return web.json_response(data, status=201)


async def rest_update(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    fields = await read_json(request, ContactPatch)  # validated; the id is checked where it is looked up
    body = ContactUpdate.model_construct(contact_id=request.match_info["contact_id"],
                                         **fields.model_dump(exclude_unset=True))
    data = await _contacts(request).update(principal, body, client_of(request), request.match_info["patient_id"])
    return web.json_response(data)


async def rest_delete(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    data = await _contacts(request).delete(principal, request.match_info["contact_id"], client_of(request),
                                           request.match_info["patient_id"])
    return web.json_response(data)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/patients/{patient_id}/contacts", rest_list)
    app.router.add_post("/api/patients/{patient_id}/contacts", rest_add)
    app.router.add_patch("/api/patients/{patient_id}/contacts/{contact_id}", rest_update)
    app.router.add_delete("/api/patients/{patient_id}/contacts/{contact_id}", rest_delete)
