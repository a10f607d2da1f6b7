"""What the devices concern sends: paired devices, presence, and the medicine box's replies and commands."""

from __future__ import annotations

from pydantic import Field

from devices.documents import DeviceKind
from server.core.wire import Time, Wire


class DeviceOut(Wire):
    id: str
    patient_id: str
    kind: DeviceKind
    serial: str
    model: str
    created_at: Time
    revoked_at: Time | None
    last_seen_at: Time | None
    battery: float | None = Field(description="Percent (0-100), as the device last reported it")
    firmware: str | None
    online: bool
    disconnected_at: Time | None


class Paired(Wire):
    device: DeviceOut
    credential: str = Field(description="The device's secret: shown once, connect with auth.device_token")


class Beat(Wire):
    device_id: str
    online: bool
    heartbeat_s: float = Field(description="Send the next heartbeat within this many seconds")


class Presence(Wire):
    device_id: str
    patient_id: str
    online: bool
    at: Time
    kind: DeviceKind
    serial: str
    model: str
    battery: float | None = Field(description="Percent (0-100)")
    firmware: str | None
    last_seen_at: Time | None


class DrawerOut(Wire):
    index: int
    label: str | None


class Assigned(Wire):
    drawer: int | None
    medication_id: str
    name: str


class BoxState(Wire):
    device_id: str
    drawers: list[DrawerOut]
    assigned: list[Assigned] = Field(description="The patient's medications with their drawers")


class DrawerOpened(Wire):
    confirmed: list[str] = Field(description="The doses this opening confirmed")
    wrong_drawer: bool
    expected: list[int] = Field(description="The drawers of the doses waiting")


class Recorded(Wire):
    recorded: bool


class WrongDrawer(Wire):
    patient_id: str
    device_id: str
    drawer: int
    expected: list[int]
    dose_ids: list[str]
