"""MQTT for devices: a bridge between an MQTT broker and the device protocol.

Many boxes and sensors speak MQTT rather than Socket.IO. A device connects to the broker with user
name = its device id and password = its device credential, and talks on its own topics:

- ``healthmate/devices/<id>/up/<event>``: a device event (``device:heartbeat``, ``stream:open``,
  ``stream:frame``, ...) as JSON ``{"id": <correlation id>, "data": <the event's payload>}``;
- ``healthmate/devices/<id>/down/ack``: the server's answer, ``{"id", "event", "ok", "data" | "error"}``,
  exactly the ack the same event gets over Socket.IO;
- ``healthmate/devices/<id>/down/<event>``: server-to-device commands (anything emitted to the
  device's Socket.IO room, e.g. ``box:command``), the JSON payload as is. A command the server wants
  acknowledged (as a Socket.IO emit with a callback) carries MQTT 5 request/response properties: the
  device publishes ``{"id": <its CorrelationData>, "data": <reply>}`` to its ``ResponseTopic``
  (``.../<id>/up/command-ack``), and the server's callback runs, in whichever process emitted it.

The bridge logs in as the privileged bridge user, subscribes to every device's ``up`` topics (as a
shared subscription, so with several server processes each message is handled by one of them), and
runs each event through the event pipeline (``EventRouter.handle``) with the device's principal, so an MQTT device and a
Socket.IO device behave identically. The broker's ACL (``devices.mqtt_broker``) lets a device publish
only under its own topic; the bridge also refuses events from unknown or revoked devices. Messages
of one device are handled in order; each device's queue is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from beanie import PydanticObjectId
from bson.errors import InvalidId
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices.documents import Device
from devices.mqtt_broker import TOPIC_ROOT, BrokerFiles
from devices.registry import device_principal
from server.core.background import cancel_and_wait
from server.core.config import ConfigError, Settings
from server.core.errors import error_body
from server.core.identity import Client, Principal
from server.infra.pubsub import ControlBus
from server.transport.events import EventRouter

log = logging.getLogger(__name__)
SHARE_GROUP = "healthmate"
DEVICE_QUEUE = 64  # messages waiting per device; more are refused with `busy`
QUEUED_BYTES = 64 * 1024 * 1024  # messages waiting across all devices, in bytes; more are refused with `busy`
IDLE_S = 60.0  # a device's worker ends after this long without messages
PRINCIPAL_TTL_S = 30.0  # how long a looked-up device is trusted (revocation also clears it at once)
RETRY_S = (1.0, 30.0)  # first and longest wait before connecting to the broker again
MQTT_CLIENT = Client(addr="mqtt", user_agent="mqtt-bridge")
# QoS 1 waits for PUBACKs: without this, Nagle's algorithm and delayed ACKs add ~40 ms to each round trip.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def parse_url(url: str) -> dict[str, Any]:
    """``mqtt://user:password@host:port`` → aiomqtt.Client keyword arguments."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ValueError("HEALTHMATE_MQTT_URL must look like mqtt://user:password@host:1883")
    return {"hostname": parts.hostname, "port": parts.port or 1883,
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None}


COMMAND_ACK = "command-ack"
MAX_AWAITING = 10_000


def topic_of(device_id: str, direction: str, name: str) -> str:
    return f"{TOPIC_ROOT}/{device_id}/{direction}/{name}"


def from_settings(settings: Settings, router: EventRouter, process_id: str,
                  bus: ControlBus) -> tuple[MqttBridge | None, BrokerFiles | None]:
    """The MQTT bridge when HEALTHMATE_MQTT_URL is set; the broker's files too when HEALTHMATE_MQTT_BROKER_DIR is."""
    if settings.mqtt_url is None:
        if settings.mqtt_broker_dir is not None:
            raise ConfigError("HEALTHMATE_MQTT_BROKER_DIR needs HEALTHMATE_MQTT_URL (the bridge user and password)")
        return None, None
    url = settings.mqtt_url.get_secret_value()
    try:
        options = parse_url(url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    bridge = MqttBridge(url, router, process_id, bus, settings.max_message_bytes)
    if settings.mqtt_broker_dir is None:
        return bridge, None
    if not options["username"] or not options["password"]:
        raise ConfigError("HEALTHMATE_MQTT_URL must name the bridge user and password: mqtt://user:password@host")
    files = BrokerFiles(settings.mqtt_broker_dir, options["username"], options["password"])
    files.follow(bus)
    return bridge, files


class MqttBridge:
    def __init__(self, url: str, router: EventRouter, process_id: str, bus: ControlBus,
                 max_message_bytes: int) -> None:
        self.options = parse_url(url)
        self.max_message_bytes = max_message_bytes
        self.queued_bytes = 0
        self.router = router
        self.process_id = process_id
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.handled = self.refused = 0
        self._task: asyncio.Task[None] | None = None
        self._queues: dict[str, asyncio.Queue[tuple[str, bytes]]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._principals: dict[str, tuple[float, Principal | None]] = {}
        self.bus = bus
        # Commands awaiting the device's acknowledgement: correlation -> (device id, callback); bounded.
        self._awaiting: OrderedDict[str, tuple[str, Callable[..., Any]]] = OrderedDict()
        bus.on("device_revoked", self._forget)
        bus.on("mqtt_command_ack", self._command_acked)

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt-bridge")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, *self._workers)

    async def _run(self) -> None:
        identifier = f"healthmate-bridge-{self.process_id}"
        wait = RETRY_S[0]
        while True:
            try:
                async with aiomqtt.Client(**self.options, identifier=identifier,
                                          protocol=aiomqtt.ProtocolVersion.V5,
                                          max_queued_incoming_messages=10_000, socket_options=NO_DELAY) as client:
                    await client.subscribe(f"$share/{SHARE_GROUP}/{TOPIC_ROOT}/+/up/#", qos=1)
                    self.client = client
                    self.connected.set()
                    wait = RETRY_S[0]
                    log.info("MQTT bridge connected to %s:%s", self.options["hostname"], self.options["port"])
                    async for message in client.messages:
                        self._enqueue(message.topic.value, message.payload)
            except aiomqtt.MqttError as exc:
                log.warning("MQTT bridge lost the broker (%s); retrying in %.0f s", exc, wait)
            finally:
                self.client = None
                self.connected.clear()
            await asyncio.sleep(wait)
            wait = min(wait * 2, RETRY_S[1])

    # --- device to server ----------------------------------------------------------------------------

    def _enqueue(self, topic: str, payload: Any) -> None:
        parts = topic.split("/", 4)
        if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[3] != "up":
            return
        device_id, event = parts[2], parts[4]
        body = payload if isinstance(payload, bytes) else str(payload or "").encode()
        if len(body) > self.max_message_bytes:
            self._refuse(device_id, event, None, "payload_too_large",
                         f"A message is at most {self.max_message_bytes} bytes")
            return
        if self.queued_bytes + len(body) > QUEUED_BYTES:
            self._refuse(device_id, event, _correlation(body), "busy", "Too many messages waiting; slow down")
            return
        queue = self._queues.get(device_id)
        if queue is None:
            queue = self._queues[device_id] = asyncio.Queue(DEVICE_QUEUE)
            self._spawn(self._drain(device_id, queue))
        try:
            queue.put_nowait((event, body))
        except asyncio.QueueFull:
            self._refuse(device_id, event, _correlation(body), "busy", "Too many messages waiting; slow down")
            return
        self.queued_bytes += len(body)

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(job)
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    def _refuse(self, device_id: str, event: str, correlation: Any, code: str, message: str) -> None:
        self.refused += 1
        self._spawn(self._ack(device_id, event, correlation, {"ok": False, **error_body(code, message)}))

    async def _drain(self, device_id: str, queue: asyncio.Queue[tuple[str, bytes]]) -> None:
        while True:
            try:
                async with asyncio.timeout(IDLE_S):
                    event, body = await queue.get()
            except TimeoutError:
                if self._queues.get(device_id) is queue and queue.empty():
                    del self._queues[device_id]
                    return
                continue
            try:
                await self._handle(device_id, event, body)
            except Exception:
                log.exception("MQTT message %s from %s failed", event, device_id)
            finally:
                self.queued_bytes -= len(body)

    async def _handle(self, device_id: str, event: str, body: bytes) -> None:
        try:
            message = json.loads(body) if body else {}
        except (ValueError, UnicodeDecodeError):
            message = None
        if not isinstance(message, dict) or not set(message) <= {"id", "data"} or not _valid_id(message.get("id")):
            await self._ack(device_id, event, None, {"ok": False, **error_body(
                "invalid_json", 'Publish JSON {"id": <correlation id>, "data": <payload>}')})
            return
        correlation = message.get("id")
        if event == COMMAND_ACK:  # the device's answer to a command: no ack of an ack
            await self.bus.publish("mqtt_command_ack", device_id=device_id, id=str(correlation),
                                   data=message.get("data"))
            return
        principal = await self._principal(device_id)
        if principal is None:
            self.refused += 1
            reply = {"ok": False, **error_body("device_revoked", "This device is not paired (or was revoked)")}
        else:
            reply = await self.router.handle(event, principal, f"mqtt:{device_id}", MQTT_CLIENT, message.get("data"))
            self.handled += 1
        await self._ack(device_id, event, correlation, reply)

    async def _principal(self, device_id: str) -> Principal | None:
        now = time.monotonic()
        cached = self._principals.get(device_id)
        if cached is not None and now - cached[0] < PRINCIPAL_TTL_S:
            return cached[1]
        try:
            device = await Device.get(PydanticObjectId(device_id))
        except (InvalidId, TypeError):
            device = None
        principal = device_principal(device) if device is not None and device.revoked_at is None else None
        if len(self._principals) > 100_000:
            self._principals.clear()
        self._principals[device_id] = (now, principal)
        return principal

    async def _forget(self, msg: dict[str, Any]) -> None:
        self._principals.pop(str(msg.get("device_id")), None)

    # --- server to device ----------------------------------------------------------------------------

    async def _ack(self, device_id: str, event: str, correlation: Any, reply: dict[str, Any]) -> None:
        await self._publish(topic_of(device_id, "down", "ack"), {"id": correlation, "event": event[:64], **reply})

    async def command(self, device_id: str, event: str, data: Any, callback: Callable[..., Any] | None = None) -> None:
        """An event emitted to the device's room, for the device's MQTT side; with ``callback``, as a request
        whose acknowledgement (on the response topic) calls it, like a Socket.IO emit's callback."""
        properties = None
        if callback is not None:
            correlation = uuid.uuid4().hex
            self._awaiting[correlation] = (device_id, callback)
            while len(self._awaiting) > MAX_AWAITING:
                self._awaiting.popitem(last=False)
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = topic_of(device_id, "up", COMMAND_ACK)
            properties.CorrelationData = correlation.encode()
        await self._publish(topic_of(device_id, "down", event), data, properties)

    async def _command_acked(self, msg: dict[str, Any]) -> None:
        """Run the callback of an acknowledged command, if this process emitted it (and to that device)."""
        pending = self._awaiting.get(msg["id"])
        if pending is None or pending[0] != msg["device_id"]:
            return
        del self._awaiting[msg["id"]]
        result = pending[1]() if msg.get("data") is None else pending[1](msg["data"])
        if asyncio.iscoroutine(result):
            await result

    async def _publish(self, topic: str, data: Any, properties: Properties | None = None) -> None:
        client = self.client
        if client is None:
            log.warning("MQTT broker not connected; %s dropped", topic)
            return
        try:
            await client.publish(topic, json.dumps(data, default=str), qos=1, properties=properties)
        except aiomqtt.MqttError as exc:
            log.warning("MQTT publish to %s failed: %s", topic, exc)


def _valid_id(value: Any) -> bool:
    """A correlation id is a short string or a number (or absent)."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool)) or (
        isinstance(value, str) and len(value) <= 64)


def _correlation(body: bytes) -> Any:
    with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError):
        value = json.loads(body).get("id")
        return value if _valid_id(value) else None
    return None
