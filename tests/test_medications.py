"""Medications over real sockets: created, updated and archived by the patient or a linked caregiver
acting for them (audited with who), every change pushed to everyone linked, history paged over REST,
bad input refused without changing anything."""

from __future__ import annotations

from typing import Any

from server.care.documents import AuditEntry
from server.meds.documents import Medication, MedicationChange
from tests.helpers import Api, Sock
from tests.test_uploads import image, upload

MED: dict[str, Any] = {"name": "Metformin", "strength": "500 mg", "form": "tablet", "dose": "1 tablet",
                       "instructions": "With food", "schedule": {"times": ["20:00", "08:00"], "days": ["mon", "wed"]},
                       "drawer": 2, "stock": 30, "low_stock_at": 5}


async def create(sock: Sock, patient_id: str, **over: Any) -> dict[str, Any]:
    return await sock.ok("med:create", {**MED, "patient_id": patient_id, **over})


async def test_caregiver_acts_for_patient_and_everyone_linked_hears_it(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    clinician = await api.register("clinician")
    await api.link(patient, carer)
    await api.link(patient, clinician)
    p_sock, c_sock, d_sock = await api.socket(patient), await api.socket(carer), await api.socket(clinician)

    status, picture = await upload(api, carer, image("JPEG"), "medication", patient.id)
    assert status == 201, picture
    med = await create(c_sock, patient.id, image_id=picture["id"])
    assert med["patient_id"] == patient.id and med["schedule"]["times"] == ["08:00", "20:00"]
    assert med["image_id"] == picture["id"] and med["low_stock"] is False and med["revision"] == 1
    for sock in (p_sock, c_sock, d_sock):
        (pushed,) = await sock.events.wait("med:changed")
        assert pushed["change"] == "created" and pushed["medication"]["id"] == med["id"]
        assert pushed["by"] == {"id": carer.id, "role": "caregiver"}

    updated = await p_sock.ok("med:update", {"patient_id": patient.id, "medication_id": med["id"],
                                             "dose": "2 tablets", "instructions": None})
    assert updated["dose"] == "2 tablets" and updated["instructions"] is None and updated["revision"] == 2
    (_, second) = await c_sock.events.wait("med:changed", count=2)
    assert second["change"] == "updated" and second["by"]["role"] == "patient"

    # The audit says who acted for whom.
    entry = await AuditEntry.find_one(AuditEntry.action == "medication.create")
    assert entry is not None and str(entry.actor_id) == carer.id and str(entry.patient_id) == patient.id
    assert entry.actor_role == "caregiver" and entry.details["name"] == "Metformin"

    # A linked clinician reads the list too (and may act for the patient like a caregiver).
    listed = await d_sock.ok("med:list", {"patient_id": patient.id})
    assert [m["id"] for m in listed] == [med["id"]]
    assert await Medication.find_all().count() == 1

    # Stock at its low mark warns the patient and the caregivers once, not on every change below it.
    for stock in (5, 4):
        await c_sock.ok("med:update", {"patient_id": patient.id, "medication_id": med["id"], "stock": stock})
    for sock in (p_sock, c_sock):
        (note,) = await sock.events.wait("notification:new")
        assert note["kind"] == "low_stock" and note["data"] == {"medication_id": med["id"], "stock": 5}
        assert note["patient_id"] == patient.id
    await c_sock.events.wait("med:changed", count=4)
    assert (await c_sock.events.wait("med:changed", count=4))[-1]["medication"]["low_stock"] is True
    assert d_sock.events.of("notification:new") == []  # clinicians are not told about stock
    archived = await c_sock.ok("med:archive", {"patient_id": patient.id, "medication_id": med["id"]})
    assert archived["archived_at"] is not None
    (*_, last) = await d_sock.events.wait("med:changed", count=5)
    assert last["change"] == "archived"
    assert await p_sock.ok("med:list", {"patient_id": patient.id}) == []
    assert len(await p_sock.ok("med:list", {"patient_id": patient.id, "include_archived": True})) == 1
    reply = await p_sock.call("med:update", {"patient_id": patient.id, "medication_id": med["id"], "dose": "3"})
    assert reply["ok"] is False and reply["error"]["code"] == "archived"


async def test_bad_input_refused_and_nothing_changes(api: Api) -> None:
    patient = await api.register("patient")
    sock = await api.socket(patient)
    med = await create(sock, patient.id)
    bad_creates = [
        {"schedule": {"times": ["25:00"]}},
        {"schedule": {"times": []}},  # neither times nor as_needed
        {"schedule": {"times": ["08:00"], "start_date": "2026-05-02", "end_date": "2026-05-01"}},
        {"schedule": {"times": ["08:00"], "days": ["someday"]}},
        {"schedule": {"times": ["08:00"] * 13}},
        {"name": ""}, {"name": "x" * 121}, {"drawer": 0}, {"drawer": 33}, {"stock": -1}, {"form": "smoke"},
        {"image_id": "../../etc/passwd"}, {"colour": "red"}, {"instructions": "x" * 1001},
    ]
    for over in bad_creates:
        reply = await sock.call("med:create", {**MED, "patient_id": patient.id, **over})
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload", over
    for over in ({"name": None}, {"schedule": None}, {"stock": "many"}, {"medication_id": "nope"}):
        reply = await sock.call("med:update", {"patient_id": patient.id, "medication_id": med["id"], **over})
        assert reply["ok"] is False and reply["error"]["code"] in ("invalid_payload", "invalid_id"), over
    for payload in (None, [], "x", 5):
        reply = await sock.call("med:create", payload)
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload"
    # Another patient's medication id is simply not found.
    other = await api.register("patient")
    other_med = await create(await api.socket(other), other.id)
    reply = await sock.call("med:update", {"patient_id": patient.id, "medication_id": other_med["id"], "dose": "9"})
    assert reply["ok"] is False and reply["error"]["code"] == "not_found"
    assert await Medication.find_all().count() == 2
    assert await MedicationChange.find_all().count() == 2
    stored = await Medication.get(med["id"])
    assert stored is not None and stored.revision == 1 and stored.dose == "1 tablet"
    # As needed: no times required.
    prn = await create(sock, patient.id, name="Paracetamol", schedule={"as_needed": True})
    assert prn["schedule"]["as_needed"] is True and prn["schedule"]["times"] == []


async def test_history_is_paged_with_a_cursor(api: Api) -> None:
    patient = await api.register("patient")
    sock = await api.socket(patient)
    med = await create(sock, patient.id)
    other = await create(sock, patient.id, name="Lisinopril")
    for stock in (29, 28, 27):
        await sock.ok("med:update", {"patient_id": patient.id, "medication_id": med["id"], "stock": stock})
    await sock.ok("med:update", {"patient_id": patient.id, "medication_id": med["id"], "stock": 27})  # no change
    path = f"/api/patients/{patient.id}/medications/history"
    status, page = await api.request("GET", f"{path}?medication_id={med['id']}&limit=2", patient)
    assert status == 200 and [i["changes"]["stock"]["to"] for i in page["items"]] == [27, 28]
    assert page["items"][0]["changes"]["stock"]["from"] == 28 and page["items"][0]["actor_id"] == patient.id
    status, rest = await api.request("GET", f"{path}?medication_id={med['id']}&before={page['next_cursor']}",
                                     patient)
    assert [i["change"] for i in rest["items"]] == ["updated", "created"] and rest["next_cursor"] is None
    assert rest["items"][1]["changes"]["name"] == {"from": None, "to": "Metformin"}
    status, everything = await api.request("GET", path, patient)
    assert len(everything["items"]) == 5 and everything["items"][-1]["medication_id"] == med["id"]
    assert other["id"] in {i["medication_id"] for i in everything["items"]}
    status, listed = await api.request("GET", f"/api/patients/{patient.id}/medications", patient)
    assert status == 200 and [m["name"] for m in listed["items"]] == ["Lisinopril", "Metformin"]
    for bad in ("?limit=0", "?before=xyz", "?medication_id=zzz"):
        status, err = await api.request("GET", path + bad, patient)
        assert status == 422 and "error" in err, bad
