"""Devices as principals: a patient (or a linked caregiver/clinician) pairs a sensor, cuff or box
and gets its credential once; it is stored hashed, and revoking the device disconnects it at once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from beanie import PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pymongo import ASCENDING, IndexModel

from devices.mqtt_broker import mosquitto_hash
from server.care.access import require_patient
from server.core.documents import VersionedDocument, iso, utcnow
from server.core.errors import ApiError, not_found, unauthorized
from server.core.identity import Principal, as_object_id
from server.infra.pubsub import ControlBus
from server.transport.http import client_of, read_json, require_principal, services

DeviceKind = Literal["ecg", "ppg", "bp_cuff", "medicine_box"]
TOKEN_PREFIX = "hmd_"
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64,
                                         pattern=r"^[\w .:/+#-]+$")]


class Device(VersionedDocument):
    patient_id: PydanticObjectId
    kind: DeviceKind
    serial: str
    model: str
    credential_hash: str
    paired_by: PydanticObjectId
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
    last_seen_at: datetime | None = None
    battery: float | None = None
    firmware: str | None = None
    disconnected_at: datetime | None = None  # set when silent too long (devices.presence)
    mqtt_hash: str | None = None  # the credential hashed for the MQTT broker's password file (devices.mqtt_broker)

    class Settings:
        name = "devices"
        indexes = [IndexModel([("patient_id", ASCENDING), ("revoked_at", ASCENDING)], name="patient_active"),
                   IndexModel([("disconnected_at", ASCENDING), ("last_seen_at", ASCENDING)], name="presence")]

    @property
    def online(self) -> bool:
        return self.revoked_at is None and self.last_seen_at is not None and self.disconnected_at is None

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "patient_id": str(self.patient_id), "kind": self.kind, "serial": self.serial,
                "model": self.model, "created_at": iso(self.created_at), "revoked_at": iso(self.revoked_at),
                "last_seen_at": iso(self.last_seen_at), "battery": self.battery, "firmware": self.firmware,
                "online": self.online, "disconnected_at": iso(self.disconnected_at)}


class PairIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: DeviceKind
    serial: Label
    model: Label


def _digest(secret: str) -> str:
    # The secret is 256 random bits: a fast hash is enough (no dictionary to guess from), and
    # reconnect storms of many devices must not cost an Argon2 run each.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_credential(device_id: Any) -> tuple[str, str]:
    """A fresh credential for a device (shown once) and the hash to store in its place."""
    secret = secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}{device_id}_{secret}", _digest(secret)


async def pair(bus: ControlBus, principal: Principal, patient_id: Any, body: PairIn, client: Any) -> dict[str, Any]:
    pid = await require_patient(principal, patient_id, "device.pair", client, kind=body.kind, serial=body.serial)
    if principal.is_device:
        raise ApiError("forbidden", "A device cannot pair devices", 403)
    duplicate = await Device.find_one(Device.patient_id == pid, Device.serial == body.serial,
                                      Device.kind == body.kind, Device.revoked_at == None)  # noqa: E711
    if duplicate is not None:
        raise ApiError("already_paired", "This device is already paired; revoke it first to pair it again", 409,
                       {"device_id": str(duplicate.id)})
    device = Device(id=PydanticObjectId(), patient_id=pid, kind=body.kind, serial=body.serial, model=body.model,
                    credential_hash="", paired_by=principal.user_id)
    credential, device.credential_hash = new_credential(device.id)
    device.mqtt_hash = mosquitto_hash(credential)
    await device.insert()
    await bus.publish("device_paired", device_id=str(device.id))
    # Shown once: only the hashes are kept.
    return {"device": device.public(), "credential": credential}


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


async def revoke(bus: ControlBus, principal: Principal, patient_id: Any, device_id: str,
                 client: Any) -> dict[str, Any]:
    pid = await require_patient(principal, patient_id, "device.revoke", client, device_id=device_id)
    device = await Device.get(as_object_id(device_id, "device_id"))
    if device is None or device.patient_id != pid or device.revoked_at is not None or principal.is_device:
        raise not_found("device")
    device.revoked_at = utcnow()
    await device.save()
    await bus.publish("device_revoked", device_id=str(device.id))
    return device.public()


async def rest_pair(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    body = await read_json(request, PairIn)
    return web.json_response(await pair(services(request).bus, principal, request.match_info["patient_id"], body,
                                        client_of(request)), status=201)


async def rest_list(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    pid = await require_patient(principal, request.match_info["patient_id"], "device.list", client_of(request))
    devices = await Device.find(Device.patient_id == pid).sort(-Device.id).to_list()
    return web.json_response({"items": [d.public() for d in devices]})


async def rest_revoke(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    pid, did = request.match_info["patient_id"], request.match_info["device_id"]
    return web.json_response(await revoke(services(request).bus, principal, pid, did, client_of(request)))


def setup(app: web.Application) -> None:
    app.router.add_post("/api/patients/{patient_id}/devices", rest_pair)
    app.router.add_get("/api/patients/{patient_id}/devices", rest_list)
    app.router.add_delete("/api/patients/{patient_id}/devices/{device_id}", rest_revoke)
