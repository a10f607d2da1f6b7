"""The devices concern's stored documents (paired devices, medicine box state and events) and the
request models of its REST routes and events. The medicine box's own protocol is ``devices.medicine_box``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from beanie import Document, PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pymongo import ASCENDING, DESCENDING, IndexModel

from server.core.documents import VersionedDocument, iso, utcnow

DeviceKind = Literal["ecg", "ppg", "bp_cuff", "medicine_box"]
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


class MedicineBoxState(VersionedDocument):
    """What a box last reported; ``id`` is the device's id."""

    id: PydanticObjectId  # type: ignore[assignment]
    patient_id: PydanticObjectId
    drawers: list[dict[str, Any]] = Field(default_factory=list)
    firmware: str | None = None
    battery: float | None = None
    hello_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "medicine_boxes"


class BoxEvent(VersionedDocument):
    """A drawer opened or closed, or a wrong drawer: the box's record, kept for the patient's history."""

    device_id: PydanticObjectId
    patient_id: PydanticObjectId
    kind: str  # opened | closed
    drawer: int
    at: datetime = Field(default_factory=utcnow)
    device_at_ms: float | None = None
    confirmed: list[str] = Field(default_factory=list)  # dose ids the opening confirmed
    wrong_drawer: bool = False

    class Settings:
        name = "box_events"
        indexes = [IndexModel([("patient_id", ASCENDING), ("_id", DESCENDING)], name="patient_recent")]


DOCUMENTS: list[type[Document]] = [Device, MedicineBoxState, BoxEvent]


class PairIn(BaseModel):
    """``POST /api/patients/{id}/devices``."""

    model_config = ConfigDict(extra="forbid")
    kind: DeviceKind
    serial: Label
    model: Label


class HeartbeatIn(BaseModel):
    """``device:heartbeat``."""

    model_config = ConfigDict(extra="forbid")
    battery: float | None = Field(None, ge=0, le=100, allow_inf_nan=False, description="percent")
    firmware: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[\w .:/+()-]+$")
