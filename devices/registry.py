"""Devices as principals: a patient (or a linked caregiver/clinician) pairs a sensor, cuff or box
and gets its credential once; it is stored hashed, and revoking the device disconnects it at once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from beanie import PydanticObjectId

from devices.documents import Device, PairIn
from devices.mqtt_broker import mosquitto_hash
from server.care.access import require_patient
from server.core.documents import utcnow
from server.core.errors import ApiError, not_found, unauthorized
from server.core.identity import Client, Principal, as_object_id
from server.infra.pubsub import ControlBus

TOKEN_PREFIX = "hmd_"
MAX_DEVICES = 10  # paired (unrevoked) per patient: each is a credential, a broker login and streams to analyse


def _digest(secret: str) -> str:
    # The secret is 256 random bits: a fast hash is enough (no dictionary to guess from), and
    # reconnect storms of many devices must not cost an Argon2 run each.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_credential(device_id: Any) -> tuple[str, str]:
    """A fresh credential for a device (shown once) and the hash to store in its place."""
    secret = secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}{device_id}_{secret}", _digest(secret)


async def authenticate_device(token: str) -> tuple[Principal, Device]:
    if not token.startswith(TOKEN_PREFIX) or token.count("_") < 2:
        raise ApiError("token_invalid", "The device credential is not valid", 401)
    device_id, _, secret = token[len(TOKEN_PREFIX):].partition("_")
    try:
        device = await Device.get(PydanticObjectId(device_id))
    except Exception:
        device = None
    if device is None or not hmac.compare_digest(device.credential_hash, _digest(secret)):
        raise ApiError("token_invalid", "The device credential is not valid", 401)
    if device.revoked_at is not None:
        raise unauthorized("This device has been revoked", "device_revoked")
    return device_principal(device), device


def device_principal(device: Device) -> Principal:
    """The principal a device acts as, whichever transport it came in by."""
    return Principal(user_id=device.patient_id, role="device", sid=str(device.id),
                     name=f"{device.kind}:{device.serial}")


def too_many_devices() -> ApiError:
    return ApiError("too_many_devices", f"A patient has at most {MAX_DEVICES} paired devices; revoke one first", 409,
                    {"max": MAX_DEVICES})


class DeviceRegistry:
    """Pairing, listing and revoking a patient's devices; every process hears of a pairing or a
    revocation on the control bus (``device_paired``, ``device_revoked``)."""

    def __init__(self, bus: ControlBus) -> None:
        self.bus = bus

    async def pair(self, principal: Principal, patient_id: Any, body: PairIn, client: Client) -> dict[str, Any]:
        pid = await require_patient(principal, patient_id, "device.pair", client, kind=body.kind, serial=body.serial)
        if principal.is_device:
            raise ApiError("forbidden", "A device cannot pair devices", 403)
        duplicate = await Device.find_one(Device.patient_id == pid, Device.serial == body.serial,
                                          Device.kind == body.kind, Device.revoked_at == None)  # noqa: E711
        if duplicate is not None:
            raise ApiError("already_paired", "This device is already paired; revoke it first to pair it again", 409,
                           {"device_id": str(duplicate.id)})
        if await self._paired(pid) >= MAX_DEVICES:
            raise too_many_devices()
        device = Device(id=PydanticObjectId(), patient_id=pid, kind=body.kind, serial=body.serial, model=body.model,
                        credential_hash="", paired_by=principal.user_id)
        credential, device.credential_hash = new_credential(device.id)
        device.mqtt_hash = mosquitto_hash(credential)
        await device.insert()
        if await self._paired(pid) > MAX_DEVICES:  # parallel pairings took the last places: none of them is kept
            await device.delete()
            raise too_many_devices()
        await self.bus.publish("device_paired", device_id=str(device.id))
        # Shown once: only the hashes are kept.
        return {"device": device.public(), "credential": credential}

    @staticmethod
    async def _paired(patient_id: PydanticObjectId) -> int:
        return await Device.find(Device.patient_id == patient_id, Device.revoked_at == None).count()  # noqa: E711

    async def list(self, principal: Principal, patient_id: Any, client: Client) -> list[dict[str, Any]]:
        pid = await require_patient(principal, patient_id, "device.list", client)
        return [d.public() for d in await Device.find(Device.patient_id == pid).sort(-Device.id).to_list()]

    async def revoke(self, principal: Principal, patient_id: Any, device_id: str, client: Client) -> dict[str, Any]:
        pid = await require_patient(principal, patient_id, "device.revoke", client, device_id=device_id)
        device = await Device.get(as_object_id(device_id, "device_id"))
        if device is None or device.patient_id != pid or device.revoked_at is not None or principal.is_device:
            raise not_found("device")
        device.revoked_at = utcnow()
        await device.save()
        await self.bus.publish("device_revoked", device_id=str(device.id))
        return device.public()
