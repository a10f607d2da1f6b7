"""Device clients for the tests: one small interface (connect, call an event and get its ack, the
commands received, close) over each transport a device may speak, so one scenario runs on all."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from typing import Any, Protocol

import aiomqtt
import socketio

from devices.mqtt_bridge import NO_DELAY
from tests.contract import CONTRACT
from tests.helpers import Api, Events, User

_clients = itertools.count()


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
        reply = await self.client.call(event, payload, timeout=timeout)
        CONTRACT.ack(event, reply)
        return reply

    async def close(self) -> None:
        await self.client.disconnect()


class MqttDevice:
    """A device on MQTT: user name = device id, password = credential; events published to
    ``.../<id>/up/<event>`` as ``{"id", "data"}``, acks and commands read from ``.../<id>/down/#``."""

    def __init__(self, port: int, device_id: str, credential: str, username: str | None = None) -> None:
        self.port, self.device_id, self.credential = port, device_id, credential
        self.username = username or device_id
        self.commands = Events()
        self.acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.client = aiomqtt.Client("127.0.0.1", self.port, username=self.username, password=self.credential,
                                     identifier=f"test-{self.device_id}-{next(_clients)}",
                                     protocol=aiomqtt.ProtocolVersion.V5, timeout=5, socket_options=NO_DELAY)
        await self.client.__aenter__()
        await self.client.subscribe(f"healthmate/devices/{self.device_id}/down/#", qos=1)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.client is not None
        async for message in self.client.messages:
            name = message.topic.value.rsplit("/down/", 1)[1]
            data = json.loads(message.payload)  # type: ignore[arg-type]
            if name == "ack":
                future = self.acks.pop(str(data.pop("id")), None)
                data.pop("event")
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                await self.commands.add(name, data)
                correlation = getattr(message.properties, "CorrelationData", None)
                if correlation is not None:  # a command the server wants acknowledged, as Socket.IO clients do
                    await self.publish(message.properties.ResponseTopic,  # type: ignore[union-attr]
                                       json.dumps({"id": correlation.decode(), "data": None}))

    async def publish(self, topic: str, payload: bytes | str) -> None:
        assert self.client is not None
        await self.client.publish(topic, payload, qos=1)

    async def call(self, event: str, payload: Any = None, timeout: float = 10) -> dict[str, Any]:
        correlation = uuid.uuid4().hex
        future = self.acks[correlation] = asyncio.get_running_loop().create_future()
        await self.publish(f"healthmate/devices/{self.device_id}/up/{event}",
                           json.dumps({"id": correlation, "data": payload}))
        try:
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self.acks.pop(correlation, None)
        CONTRACT.ack(event, reply)
        return reply

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        if self.client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self.client.__aexit__(None, None, None)
            self.client = None
