"""Devices as principals: paired with a credential shown once, connecting with it, acting only
for their patient, and disconnected at once when revoked."""

from __future__ import annotations

import asyncio

import socketio

from devices.documents import Device
from tests.helpers import Api, connect_refused


async def _pair(api: Api, patient, who=None, kind: str = "ecg", serial: str = "ECG-001"):  # type: ignore[no-untyped-def]
    status, body = await api.request("POST", f"/api/patients/{patient.id}/devices", who or patient,
                                     json={"kind": kind, "serial": serial, "model": "HM Patch 2"})
    assert status == 201, body
    return body


async def test_pair_shows_credential_once_and_stores_a_hash(api: Api) -> None:
    patient = await api.register("patient")
    body = await _pair(api, patient)
    assert body["credential"].startswith("hmd_") and body["device"]["kind"] == "ecg"
    stored = await Device.get(body["device"]["id"])
    assert stored is not None and body["credential"].split("_")[-1] not in stored.credential_hash
    status, listed = await api.request("GET", f"/api/patients/{patient.id}/devices", patient)
    assert status == 200 and "credential" not in str(listed) and len(listed["items"]) == 1
    status, err = await api.request("POST", f"/api/patients/{patient.id}/devices", patient,
                                    json={"kind": "ecg", "serial": "ECG-001", "model": "HM Patch 2"})
    assert status == 409 and err["error"]["code"] == "already_paired"
    for bad in ({"kind": "toaster", "serial": "1", "model": "m"}, {"kind": "ecg", "serial": "", "model": "m"},
                {"kind": "ecg", "serial": "x" * 100, "model": "m"}, {"kind": "ecg", "serial": "<b>", "model": "m"}):
        status, err = await api.request("POST", f"/api/patients/{patient.id}/devices", patient, json=bad)
        assert status == 422, bad
    assert await Device.find_all().count() == 1


async def test_linked_caregiver_can_pair_for_the_patient(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    await api.link(patient, carer)
    body = await _pair(api, patient, who=carer, kind="medicine_box", serial="BOX-9")
    assert body["device"]["patient_id"] == patient.id


async def test_device_connects_and_acts_only_as_a_device(api: Api) -> None:
    patient = await api.register("patient")
    body = await _pair(api, patient)
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(api.base_url, auth={"device_token": body["credential"]}, transports=["websocket"])
    try:
        for event, payload in (("patients:list", None), ("links:create-code", None),
                               ("patient:get", {"patient_id": patient.id})):
            reply = await client.call(event, payload, timeout=5)
            assert reply["ok"] is False and reply["error"]["code"] == "forbidden", event
    finally:
        await client.disconnect()
    # Its credential is no bearer token for REST.
    status, err = await api.request("GET", "/api/me", headers={"Authorization": f"Bearer {body['credential']}"})
    assert status == 401 and err["error"]["code"] == "token_invalid"


async def test_bad_device_credentials_refused(api: Api) -> None:
    patient = await api.register("patient")
    body = await _pair(api, patient)
    prefix, _, secret = body["credential"].rpartition("_")
    for token in ("hmd_nonsense", f"{prefix}_{'A' * len(secret)}", "hmd_000000000000000000000000_x", "x" * 50):
        data = await connect_refused(api.base_url, {"device_token": token})
        assert data["error"]["code"] == "token_invalid", token


async def test_revoking_disconnects_at_once_and_refuses_reconnect(api: Api) -> None:
    patient = await api.register("patient")
    body = await _pair(api, patient)
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(api.base_url, auth={"device_token": body["credential"]}, transports=["websocket"])
    status, revoked = await api.request("DELETE", f"/api/patients/{patient.id}/devices/{body['device']['id']}",
                                        patient)
    assert status == 200 and revoked["revoked_at"] is not None
    for _ in range(100):
        if not client.connected:
            break
        await asyncio.sleep(0.05)
    assert not client.connected
    data = await connect_refused(api.base_url, {"device_token": body["credential"]})
    assert data["error"]["code"] == "device_revoked"
    status, _ = await api.request("DELETE", f"/api/patients/{patient.id}/devices/{body['device']['id']}", patient)
    assert status == 404
