"""Medical contacts over real sockets and REST: CRUD by the patient and linked users, validated phone
numbers and emails, changes pushed live, strangers refused."""

from __future__ import annotations

from server.care.documents import AuditEntry, MedicalContact
from tests.helpers import PASSWORD, Api

DOCTOR = {"kind": "doctor", "name": "Dr. Ana Ruiz", "phone": "+34 (91) 555-01.23", "email": "ana@Clinic.EXAMPLE",
          "organization": "Centro de Salud"}
DAUGHTER = {"kind": "emergency", "name": "Maria", "phone": "0044 20 7946 0958", "relationship": "daughter"}


async def test_crud_over_socket_and_rest(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    await api.link(patient, carer)
    ps, cs = await api.socket(patient), await api.socket(carer)
    doctor = await ps.ok("contact:add", {"patient_id": patient.id, **DOCTOR})
    assert doctor["phone"] == "+34915550123" and doctor["email"] == "ana@clinic.example"
    status, daughter = await api.request("POST", f"/api/patients/{patient.id}/contacts", carer, json=DAUGHTER)
    assert status == 201 and daughter["phone"] == "+442079460958" and daughter["created_by"] == carer.id
    # Visible to linked users, over both transports; every change pushed to the patient's room.
    listed = await cs.ok("contacts:list", {"patient_id": patient.id})
    assert [c["name"] for c in listed] == ["Dr. Ana Ruiz", "Maria"]
    changes = await cs.events.wait("contacts:changed", 2)
    assert [c["change"] for c in changes] == ["added", "added"]
    updated = await cs.ok("contact:update", {"contact_id": doctor["id"], "phone": "+34 600 000 000", "notes": "GP"})
    assert updated["phone"] == "+34600000000" and updated["notes"] == "GP" and updated["updated_at"]
    status, patched = await api.request("PATCH", f"/api/patients/{patient.id}/contacts/{daughter['id']}", patient,
                                        json={"relationship": "eldest daughter"})
    assert status == 200 and patched["relationship"] == "eldest daughter"
    status, removed = await api.request("DELETE", f"/api/patients/{patient.id}/contacts/{doctor['id']}", patient)
    assert status == 200 and removed["id"] == doctor["id"]
    status, listed = await api.request("GET", f"/api/patients/{patient.id}/contacts", carer)
    assert [c["id"] for c in listed["items"]] == [daughter["id"]]
    await ps.events.wait("contacts:changed", 5)
    assert [c["change"] for c in ps.events.of("contacts:changed")][-1] == "deleted"
    assert await AuditEntry.find(AuditEntry.action == "contacts.deleted").count() == 1
    assert (await ps.call("contact:delete", {"contact_id": doctor["id"]}))["error"]["code"] == "not_found"
    assert (await cs.ok("contact:delete", {"contact_id": daughter["id"]}))["id"] == daughter["id"]


async def test_invalid_contacts_refused_and_nothing_stored(api: Api) -> None:
    patient = await api.register("patient")
    ps = await api.socket(patient)
    before = await MedicalContact.find_all().count()
    for bad in ({**DOCTOR, "phone": "555-0123"}, {**DOCTOR, "phone": "+0 123 456 789"},
                {**DOCTOR, "phone": "+1 23"}, {**DOCTOR, "phone": "+1 555 CALL NOW"},
                {**DOCTOR, "email": "not-an-email"}, {**DOCTOR, "email": "a@b"}, {**DOCTOR, "email": "a b@c.de"},
                {**DAUGHTER, "phone": None, "email": "m@example.org"},  # an emergency contact needs a phone
                {"kind": "pharmacy", "name": "Farmacia"},  # unreachable
                {**DOCTOR, "kind": "plumber"}, {**DOCTOR, "name": ""}, {**DOCTOR, "name": "x" * 201},
                {**DOCTOR, "fax": "+123456789"}):
        reply = await ps.call("contact:add", {"patient_id": patient.id, **bad})
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload", bad
        status, err = await api.request("POST", f"/api/patients/{patient.id}/contacts", patient, json=bad)
        assert status == 422 and err["error"]["code"] == "invalid_payload", bad
    assert await MedicalContact.find_all().count() == before
    daughter = await ps.ok("contact:add", {"patient_id": patient.id, **DAUGHTER})
    reply = await ps.call("contact:update", {"contact_id": daughter["id"], "phone": None})
    assert reply["error"]["code"] == "invalid_payload"
    reply = await ps.call("contact:update", {"contact_id": daughter["id"], "email": "bad@"})
    assert reply["error"]["code"] == "invalid_payload"
    assert (await MedicalContact.get(daughter["id"])).phone == "+442079460958"  # type: ignore[union-attr]


async def test_strangers_cannot_touch_contacts(api: Api) -> None:
    patient, other = await api.register("patient"), await api.register("patient")
    stranger = await api.register("clinician")
    ps, ss = await api.socket(patient), await api.socket(stranger)
    contact = await ps.ok("contact:add", {"patient_id": patient.id, **DAUGHTER})
    for event, payload in (("contact:update", {"contact_id": contact["id"], "name": "X"}),
                           ("contact:delete", {"contact_id": contact["id"]}),
                           ("contacts:list", {"patient_id": patient.id})):
        assert (await ss.call(event, payload))["error"]["code"] == "forbidden", event
    # Addressing it through another patient's path finds nothing.
    status, _ = await api.request("DELETE", f"/api/patients/{other.id}/contacts/{contact['id']}", patient)
    assert status == 404
    assert await MedicalContact.get(contact["id"]) is not None
    assert ss.events.of("contacts:changed") == []


async def test_one_email_rule_for_accounts_and_contacts(api: Api) -> None:
    """An address is spelled one way, as a contact and as an account: trimmed and lower-cased whole (so the
    two compare equal), international characters allowed; a domain label edged by a hyphen, or a local part
    over 64 characters, is refused by both."""
    patient = await api.register("patient")
    ps = await api.socket(patient)
    for typed, spelled in ((" Ana.Ruiz@Clinic.EXAMPLE ", "ana.ruiz@clinic.example"),
                           ("José@Example.org", "josé@example.org")):
        contact = await ps.ok("contact:add", {"patient_id": patient.id, **DOCTOR, "email": typed})
        status, account = await api.request("POST", "/api/auth/register", json={
            "email": typed, "password": PASSWORD, "name": "Ana", "role": "caregiver"})
        assert status == 201 and contact["email"] == account["user"]["email"] == spelled, typed
    for bad in ("ana@clinic.-example", "ana@-clinic.example", "a" * 65 + "@example.org"):
        reply = await ps.call("contact:add", {"patient_id": patient.id, **DOCTOR, "email": bad})
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload", bad
        status, body = await api.request("POST", "/api/auth/register", json={
            "email": bad, "password": PASSWORD, "name": "Ana", "role": "caregiver"})
        assert status == 422 and body["error"]["code"] == "invalid_email", bad
