"""Partial updates over both transports: ``null`` clears an optional field, and is refused (422,
``invalid_payload``, nothing stored) on a required one, which would otherwise leave a document the
server can no longer read (a profile without a time zone, a reading without a systolic value)."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.helpers import Api
from tests.test_contacts import DOCTOR
from tests.test_medications import create


async def test_null_clears_optional_fields_and_is_refused_on_required_ones(api: Api) -> None:
    patient = await api.register("patient")
    sock = await api.socket(patient)

    status, me = await api.request("PATCH", "/api/me", patient, json={"phone": "+34915550123"})
    assert status == 200 and me["phone"] == "+34915550123"
    for field in ("name", "timezone", "language"):
        status, err = await api.request("PATCH", "/api/me", patient, json={field: None, "phone": None})
        assert status == 422 and err["error"]["code"] == "invalid_payload", (field, err)
    status, same = await api.request("GET", "/api/me", patient)
    assert status == 200 and same == me  # nothing changed, and the profile still reads
    status, cleared = await api.request("PATCH", "/api/me", patient, json={"phone": None})
    assert status == 200 and cleared["phone"] is None

    reading = await sock.ok("bp:add", {"systolic": 128, "diastolic": 82, "pulse": 70,
                                       "measured_at": datetime.now(UTC).isoformat()})
    for field in ("systolic", "diastolic", "measured_at"):
        reply = await sock.call("bp:update", {"reading_id": reading["id"], field: None})
        assert reply["error"]["code"] == "invalid_payload", (field, reply)
    (listed,) = (await sock.ok("bp:list", {"patient_id": patient.id}))["items"]
    assert listed == reading
    fixed = await sock.ok("bp:update", {"reading_id": reading["id"], "pulse": None, "systolic": 126})
    assert fixed["pulse"] is None and fixed["systolic"] == 126

    contact = await sock.ok("contact:add", {"patient_id": patient.id, **DOCTOR})
    for field in ("kind", "name"):
        reply = await sock.call("contact:update", {"contact_id": contact["id"], field: None})
        assert reply["error"]["code"] == "invalid_payload", (field, reply)
    status, err = await api.request("PATCH", f"/api/patients/{patient.id}/contacts/{contact['id']}", patient,
                                    json={"name": None})
    assert status == 422 and err["error"]["code"] == "invalid_payload"
    assert await sock.ok("contacts:list", {"patient_id": patient.id}) == [contact]
    emptied = await sock.ok("contact:update", {"contact_id": contact["id"], "organization": None})
    assert emptied["organization"] is None and emptied["name"] == contact["name"]

    med = await create(sock, patient.id)
    reply = await sock.call("med:update", {"patient_id": patient.id, "medication_id": med["id"], "schedule": None})
    assert reply["error"]["code"] == "invalid_payload"
