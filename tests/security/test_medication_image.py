"""A medication's picture is the caller's own upload for that patient: naming another patient's picture (to
show it, or have its link served, in this patient's list), someone else's upload or an avatar as
``image_id`` is refused with ``invalid_upload`` (the same answer as for an id that does not exist), on
create and on update, and nothing is stored."""

from __future__ import annotations

from bson import ObjectId

from server.meds.documents import Medication, MedicationChange
from tests.helpers import Api, User
from tests.test_medications import create
from tests.test_uploads import image, upload


async def _upload(api: Api, user: User, purpose: str = "medication", patient_id: str | None = None) -> str:
    status, body = await upload(api, user, image("JPEG"), purpose, patient_id)
    assert status == 201, body
    return str(body["id"])


async def test_only_the_callers_upload_for_that_patient(api: Api) -> None:
    patient, other = await api.register("patient"), await api.register("patient")
    carer, nurse = await api.register("caregiver"), await api.register("caregiver")
    for member in (carer, nurse):
        await api.link(patient, member)
    await api.link(other, carer)
    theirs = {
        "another patient's picture": await _upload(api, other),
        "my picture for another patient": await _upload(api, carer, patient_id=other.id),
        "someone else's picture for this patient": await _upload(api, nurse, patient_id=patient.id),
        "the patient's own picture": await _upload(api, patient),
        "an avatar": await _upload(api, carer, "avatar"),
        "no such upload": str(ObjectId()),
    }
    sock = await api.socket(carer)
    mine = await _upload(api, carer, patient_id=patient.id)
    med = await create(sock, patient.id, image_id=mine)
    assert med["image_id"] == mine
    changes = await MedicationChange.find_all().count()
    for attack, upload_id in theirs.items():
        refused = [await sock.call("med:create", {"patient_id": patient.id, "name": "Planted", "image_id": upload_id,
                                                  "schedule": {"as_needed": True}}),
                   await sock.call("med:update", {"patient_id": patient.id, "medication_id": med["id"],
                                                  "image_id": upload_id})]
        for reply in refused:
            assert reply["ok"] is False and "data" not in reply, attack
            assert reply["error"] == {"code": "invalid_upload", "message": "That is not one of your medication "
                                      "uploads", "details": {"upload_id": upload_id}}, (attack, reply)
    assert await Medication.find(Medication.patient_id == ObjectId(patient.id)).count() == 1
    assert (await Medication.get(ObjectId(med["id"]))).image_id == mine  # type: ignore[union-attr]
    assert await MedicationChange.find_all().count() == changes
    # The patient acting for themselves: their own picture is theirs to use; clearing the image is always fine.
    patient_sock = await api.socket(patient)
    own = await create(patient_sock, patient.id, name="Statin", image_id=theirs["the patient's own picture"])
    assert own["image_id"] == theirs["the patient's own picture"]
    cleared = await sock.ok("med:update", {"patient_id": patient.id, "medication_id": med["id"], "image_id": None})
    assert cleared["image_id"] is None
