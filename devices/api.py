"""The devices concern's transport: device REST routes (pair, list, revoke), device events (heartbeat,
medicine box), presence on connect, and the MQTT bridge as a second way to reach a device."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from devices.box_service import MedicineBox
from devices.documents import HeartbeatIn, PairIn
from devices.medicine_box import BoxCommand, BoxDrawers, BoxHello, DrawerEvent
from devices.mqtt_bridge import MqttBridge
from devices.presence import DevicePresence
from devices.registry import DeviceRegistry
from devices.wire import Beat, BoxState, DeviceOut, DrawerOpened, Paired, Presence, Recorded, WrongDrawer
from server.core.wire import Items
from server.transport.events import DEVICE_ROLES, EventContext
from server.transport.http import read_json
from server.transport.mount import Mount
from server.transport.realtime import Realtime, device_room

ACK_WAIT_S = 60  # an ack later than this is ignored (its callback is forgotten, so memory stays bounded)


def mount(m: Mount, registry: DeviceRegistry, presence: DevicePresence, box: MedicineBox,
          bridge: MqttBridge | None) -> None:
    events, rest = m.events, m.rest
    events.push("device:presence", Presence, "To the patient's room when a device comes online or goes silent.")
    events.push("box:command", BoxCommand, "To a medicine box (device): light a drawer and buzz for a due dose, or "
                "clear it; acknowledge it (the emit's callback, or MQTT's command-ack) or it is sent again.")
    events.push("box:wrong-drawer", WrongDrawer, "To the patient's room when a drawer other than the due dose's "
                "was opened.")
    m.realtime.connect_hooks.append(presence.on_connect)
    if bridge is not None:  # what is emitted to a device's room reaches its MQTT side too
        m.realtime.sio.device_sinks.append(bridge.command)

    @events.event("device:heartbeat", HeartbeatIn, roles=DEVICE_ROLES, reply=Beat)
    async def _heartbeat(ctx: EventContext, body: HeartbeatIn) -> dict[str, Any]:
        """(device) A sign of life, with the battery level (percent) and firmware version if known. Send it at least
        every `heartbeat_s` seconds (a third of `HEALTHMATE_DEVICE_SILENCE_S`, default 60 s): a device silent for
        longer is marked disconnected, and its patient and caregivers get one `device_disconnected` notification
        and a `device:presence`. The next heartbeat (or connection) clears it and announces `device_reconnected`.
        Also accepted over MQTT (see the README)."""
        return await presence.heartbeat(ctx.principal, body.battery, body.firmware)

    events.event("box:hello", BoxHello, roles=DEVICE_ROLES, reply=BoxState)(box.hello)
    events.event("box:drawers", BoxDrawers, roles=DEVICE_ROLES, reply=BoxState)(box.drawers)
    events.event("box:drawer-opened", DrawerEvent, roles=DEVICE_ROLES, reply=DrawerOpened)(box.opened)
    events.event("box:drawer-closed", DrawerEvent, roles=DEVICE_ROLES, reply=Recorded)(box.closed)

    async def pair(request: web.Request) -> web.Response:
        """Pair a device (the patient, or a linked caregiver or clinician); its credential is shown once

        The device connects to Socket.IO with `auth: {device_token: <credential>}` and acts only for this patient.
        Only a hash of the credential is kept. A patient has at most 10 paired (unrevoked) devices: past that, 409
        `too_many_devices` (`details.max`); revoke one first. The same serial and kind paired twice is 409
        `already_paired`."""
        principal = await rest.principal(request)
        body = await read_json(request, PairIn)
        return web.json_response(await registry.pair(principal, request.match_info["patient_id"], body,
                                                     rest.client(request)), status=201)

    async def list_devices(request: web.Request) -> web.Response:
        """The patient's devices, newest first, revoked ones included"""
        principal = await rest.principal(request)
        items = await registry.list(principal, request.match_info["patient_id"], rest.client(request))
        return web.json_response({"items": items})

    async def revoke(request: web.Request) -> web.Response:
        """Revoke a device; it is disconnected at once and its credential refused from then on"""
        principal = await rest.principal(request)
        return web.json_response(await registry.revoke(principal, request.match_info["patient_id"],
                                                       request.match_info["device_id"], rest.client(request)))

    m.route("POST", "/api/patients/{patient_id}/devices", pair, Paired, body=PairIn, status=201)
    m.route("GET", "/api/patients/{patient_id}/devices", list_devices, Items[DeviceOut])
    m.route("DELETE", "/api/patients/{patient_id}/devices/{device_id}", revoke, DeviceOut)


class SocketCommands:
    """Commands to a device over Socket.IO (and, through the device sinks, MQTT): an emit to the device's
    room with an ack callback, which python-socketio keeps until the ack comes; forgotten after
    ``ACK_WAIT_S`` so that a device that never answers costs no memory."""

    def __init__(self, realtime: Realtime) -> None:
        self.sio = realtime.sio

    async def command(self, device_id: Any, event: str, data: Any, on_ack: Callable[..., Awaitable[None]]) -> None:
        await self.sio.emit(event, data, room=device_room(device_id), callback=on_ack)
        asyncio.get_running_loop().call_later(ACK_WAIT_S, self._forget, on_ack)

    def _forget(self, callback: Any) -> None:
        for pending in list(self.sio.manager.callbacks.values()):
            for ack_id, fn in list(pending.items()):
                if fn is callback:
                    del pending[ack_id]
