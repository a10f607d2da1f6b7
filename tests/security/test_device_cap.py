"""A patient's paired devices are capped: each is a credential that logs in, a broker account and streams the
server analyses, so pairing hundreds (one by one, or all at once) is refused with ``too_many_devices`` and no
credential; revoking one frees its place."""

from __future__ import annotations

import asyncio

from beanie import PydanticObjectId

from devices.documents import Device
from devices.registry import MAX_DEVICES
from tests.helpers import Api

REFUSAL = {"code": "too_many_devices", "message": f"A patient has at most {MAX_DEVICES} paired devices; revoke one "
           "first", "details": {"max": MAX_DEVICES}}


def _pairing(n: int) -> dict[str, str]:
    return {"kind": "ppg", "serial": f"RING-{n}", "model": "Ring"}


async def _paired(patient_id: str) -> int:
    return await Device.find(Device.patient_id == PydanticObjectId(patient_id),
                             Device.revoked_at == None).count()  # noqa: E711


async def test_pairing_past_the_cap_is_refused(api: Api) -> None:
    patient, carer = await api.register("patient"), await api.register("caregiver")
    await api.link(patient, carer)
    url = f"/api/patients/{patient.id}/devices"
    paired = []
    for n in range(MAX_DEVICES):
        status, body = await api.request("POST", url, patient, json=_pairing(n))
        assert status == 201
        paired.append(body["device"]["id"])
    for user in (patient, carer):
        status, err = await api.request("POST", url, user, json=_pairing(99))
        assert status == 409 and err == {"error": REFUSAL}  # no credential
    assert await _paired(patient.id) == MAX_DEVICES
    status, _ = await api.request("DELETE", f"{url}/{paired[0]}", patient)
    assert status == 200
    status, body = await api.request("POST", url, carer, json=_pairing(99))
    assert status == 201 and body["credential"]

    # All at once, from a fresh patient: however they interleave, never more than the cap are kept.
    other = await api.register("patient")
    replies = await asyncio.gather(*(api.request("POST", f"/api/patients/{other.id}/devices", other,
                                                 json=_pairing(n)) for n in range(MAX_DEVICES + 8)))
    kept = [body for status, body in replies if status == 201]
    assert all(body == {"error": REFUSAL} for status, body in replies if status != 201)
    assert len(kept) == await _paired(other.id) <= MAX_DEVICES
    assert await Device.find(Device.patient_id == PydanticObjectId(other.id)).count() == len(kept)
