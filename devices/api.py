"""The devices concern's transport: device REST routes (pair, list, revoke), device events (heartbeat,
medicine box), presence on connect, and the MQTT bridge as a second way to reach a device."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from devices.box_service import MedicineBox
from devices.documents import HeartbeatIn, PairIn
from devices.medicine_box import BoxDrawers, BoxHello, DrawerEvent
from devices.mqtt_bridge import MqttBridge
from devices.presence import DevicePresence
from devices.registry import DeviceRegistry
from server.transport.events import DEVICE_ROLES, EventContext
from server.transport.http import read_json
from server.transport.mount import Mount
from server.transport.realtime import Realtime, device_room

ACK_WAIT_S = 60  # an ack later than this is ignored (its callback is forgotten, so memory stays bounded)


def mount(m: Mount, registry: DeviceRegistry, presence: DevicePresence, box: MedicineBox,
          bridge: MqttBridge | None) -> None:
    events, rest = m.events, m.rest
    m.realtime.connect_hooks.append(presence.on_connect)
    if bridge is not None:  # what is emitted to a device's room reaches its MQTT side too
        m.realtime.sio.device_sinks.append(bridge.command)

    @events.event("device:heartbeat", HeartbeatIn, roles=DEVICE_ROLES)
    async def _heartbeat(ctx: EventContext, body: HeartbeatIn) -> dict[str, Any]:
        return await presence.heartbeat(ctx.principal, body.battery, body.firmware)

    events.event("box:hello", BoxHello, roles=DEVICE_ROLES)(box.hello)
    events.event("box:drawers", BoxDrawers, roles=DEVICE_ROLES)(box.drawers)
    events.event("box:drawer-opened", DrawerEvent, roles=DEVICE_ROLES)(box.opened)
    events.event("box:drawer-closed", DrawerEvent, roles=DEVICE_ROLES)(box.closed)

    async def pair(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        body = await read_json(request, PairIn)
        return web.json_response(await registry.pair(principal, request.match_info["patient_id"], body,
                                                     rest.client(request)), status=201)

    async def list_devices(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        items = await registry.list(principal, request.match_info["patient_id"], rest.client(request))
        return web.json_response({"items": items})

    async def revoke(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        return web.json_response(await registry.revoke(principal, request.match_info["patient_id"],
                                                       request.match_info["device_id"], rest.client(request)))

    m.routes.add_post("/api/patients/{patient_id}/devices", pair)
    m.routes.add_get("/api/patients/{patient_id}/devices", list_devices)
    m.routes.add_delete("/api/patients/{patient_id}/devices/{device_id}", revoke)


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
