"""Device clients for the tests: one small interface (connect, call an event and get its ack, the
commands received, close) over each transport a device may speak, so one scenario runs on all."""

from __future__ import annotations

from typing import Any, Protocol

import socketio

from tests.helpers import Api, Events, User


async def pair_device(api: Api, patient: User, kind: str = "ecg", serial: str = "DEV-1",
                      model: str = "HM Sensor") -> tuple[str, str]:
    """Pair a device for the patient; its id and credential."""
    status, body = await api.request("POST", f"/api/patients/{patient.id}/devices", patient,
                                     json={"kind": kind, "serial": serial, "model": model})
    assert status == 201, body
    return body["device"]["id"], body["credential"]


class DeviceClient(Protocol):
    device_id: str
    commands: Events  # server-to-device events received: (event name, payload)

    async def connect(self) -> None: ...

    async def call(self, event: str, payload: Any = None, timeout: float = 10) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class SioDevice:
    """A device on Socket.IO, authenticated with ``auth={"device_token": ...}``."""

    def __init__(self, base_url: str, device_id: str, credential: str) -> None:
        self.base_url, self.device_id, self.credential = base_url, device_id, credential
        self.commands = Events()
        self.client = socketio.AsyncClient(reconnection=False)

        @self.client.on("*")
        async def _any(event: str, data: Any = None) -> None:
            await self.commands.add(event, data)

    async def connect(self) -> None:
        await self.client.connect(self.base_url, auth={"device_token": self.credential}, transports=["websocket"],
                                  wait_timeout=10)

    async def call(self, event: str, payload: Any = None, timeout: float = 10) -> dict[str, Any]:
        return await self.client.call(event, payload, timeout=timeout)

    async def close(self) -> None:
        await self.client.disconnect()
