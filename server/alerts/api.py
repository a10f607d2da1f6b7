"""The alerts concern's transport: its Socket.IO events and REST routes, bound once to its services, and
the alert fan-out's view of this process's sockets."""

from __future__ import annotations

from base64 import urlsafe_b64encode
from typing import Any

from aiohttp import web
from beanie import PydanticObjectId
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from server.alerts import reads
from server.alerts.alerts import Alerts
from server.alerts.device_delivery import DeviceDelivery
from server.alerts.documents import (
    Alert,
    AlertNote,
    AlertQuery,
    AlertRef,
    DoseReceived,
    HelpIn,
    ListIn,
    MarkRead,
    Notification,
    NotificationRef,
    RegisterIn,
    UnregisterIn,
)
from server.alerts.notifications import Notifications, mine
from server.alerts.push import PushDispatcher
from server.core.errors import ApiError
from server.core.identity import Client, Principal, as_object_id
from server.transport.events import EventContext
from server.transport.http import cursor_page, page_params
from server.transport.mount import Mount
from server.transport.realtime import NAMESPACE, Realtime


class Sockets:
    """``fanout.Sockets`` over the Socket.IO adapter."""

    def __init__(self, realtime: Realtime) -> None:
        self.rt = realtime

    def user_sids(self, user_id: Any) -> list[str]:
        return self.rt.user_sids(user_id)

    def device_id(self, sid: str) -> str | None:
        return self.rt.device_id(sid)

    def connected(self, sid: str) -> bool:
        return sid in self.rt.principals

    def ready(self, sid: str) -> bool:
        return self.rt.sio.manager.is_connected(sid, NAMESPACE)


def mount(m: Mount, alerts: Alerts, notes: Notifications, push: PushDispatcher) -> None:
    sockets = Sockets(m.realtime)
    alerts.fanout.attach(sockets)
    m.realtime.connect_hooks.append(alerts.fanout.on_connect)
    m.realtime.disconnect_hooks.append(alerts.fanout.on_disconnect)
    _mount_alerts(m, alerts, sockets)
    _mount_notifications(m, notes)
    _mount_receipts(m, sockets)
    _mount_push(m, push, sockets)


def _device(sockets: Sockets, ctx: EventContext) -> str:
    return sockets.device_id(ctx.sid) or "unknown"


def _mount_alerts(m: Mount, alerts: Alerts, sockets: Sockets) -> None:
    ev, acks = m.events.event, alerts.acks

    async def page(principal: Principal, client: Client, patient_id: str | None, status: str | None,
                   before: PydanticObjectId | None, limit: int) -> dict[str, Any]:
        condition = await reads.listed(principal, patient_id, status, client)
        return await cursor_page(Alert, condition, before, limit, Alert.public)

    @ev("alert:received", AlertRef)
    async def received(ctx: EventContext, body: AlertRef) -> dict[str, Any]:
        return await acks.received(ctx.principal, body.alert_id, _device(sockets, ctx))

    @ev("alert:ack", AlertNote)
    async def ack(ctx: EventContext, body: AlertNote) -> dict[str, Any]:
        return await acks.ack(ctx.principal, body.alert_id, body.note, _device(sockets, ctx))

    @ev("alert:help", HelpIn, roles=frozenset({"patient"}))
    async def help_(ctx: EventContext, body: HelpIn) -> dict[str, Any]:
        alert = await alerts.raise_alert(ctx.principal.user_id, "help_requested", "Help requested",
                                         body.note or "The patient pressed \u201cI need help\u201d.",
                                         source={"type": "patient"}, raised_by=ctx.principal, on_demand=True)
        return alert.public()

    @ev("alert:resolve", AlertNote)
    async def resolve(ctx: EventContext, body: AlertNote) -> dict[str, Any]:
        return await acks.resolve(ctx.principal, body.alert_id, body.note)

    @ev("alert:get", AlertRef)
    async def get(ctx: EventContext, body: AlertRef) -> dict[str, Any]:
        return await reads.get_alert(ctx.principal, body.alert_id, ctx.client)

    @ev("alerts:list", AlertQuery)
    async def listed(ctx: EventContext, body: AlertQuery) -> dict[str, Any]:
        before = as_object_id(body.before, "before") if body.before else None
        return await page(ctx.principal, ctx.client, body.patient_id, body.status, before, body.limit)

    async def rest_mine(request: web.Request) -> web.Response:
        principal = await m.rest.principal(request)
        before, limit = page_params(request)
        status = request.query.get("status")
        if status not in (None, "open", "acknowledged", "resolved"):
            raise ApiError("invalid_query", "status must be open, acknowledged or resolved", 422, {"field": "status"})
        return web.json_response(await page(principal, m.rest.client(request), None, status, before, limit))

    async def rest_patient(request: web.Request) -> web.Response:
        principal = await m.rest.principal(request)
        before, limit = page_params(request)
        return web.json_response(await page(principal, m.rest.client(request), request.match_info["patient_id"],
                                            None, before, limit))

    async def rest_get(request: web.Request) -> web.Response:
        principal = await m.rest.principal(request)
        return web.json_response(await reads.get_alert(principal, request.match_info["alert_id"],
                                                       m.rest.client(request)))

    m.routes.add_get("/api/alerts", rest_mine)
    m.routes.add_get("/api/alerts/{alert_id}", rest_get)
    m.routes.add_get("/api/patients/{patient_id}/alerts", rest_patient)


def _mount_notifications(m: Mount, notes: Notifications) -> None:
    ev = m.events.event

    async def page(user_id: PydanticObjectId, before: PydanticObjectId | None, limit: int,
                   unread_only: bool) -> dict[str, Any]:
        found = await cursor_page(Notification, await mine(user_id, unread_only), before, limit, Notification.public)
        return {**found, "unread": await notes.unread(user_id)}

    @ev("notifications:list", ListIn)
    async def listed(ctx: EventContext, body: ListIn) -> dict[str, Any]:
        before = as_object_id(body.before, "before") if body.before else None
        return await page(ctx.principal.user_id, before, body.limit, body.unread_only)

    @ev("notifications:unread-count")
    async def unread(ctx: EventContext, _: None) -> dict[str, Any]:
        return {"unread": await notes.unread(ctx.principal.user_id)}

    @ev("notifications:mark-read", MarkRead)
    async def read(ctx: EventContext, body: MarkRead) -> dict[str, Any]:
        if (body.id is None) == (not body.all):
            raise ApiError("invalid_payload", "Give either id or all: true", 422)
        marked = await notes.mark_read(ctx.principal.user_id, body.id)
        return {"marked": marked, "unread": await notes.unread(ctx.principal.user_id)}

    @ev("notifications:delete", NotificationRef)
    async def delete(ctx: EventContext, body: NotificationRef) -> dict[str, Any]:
        await notes.delete(ctx.principal.user_id, body.id)
        return {"deleted": body.id, "unread": await notes.unread(ctx.principal.user_id)}

    async def rest_list(request: web.Request) -> web.Response:
        principal = await m.rest.principal(request)
        before, limit = page_params(request)
        unread_only = request.query.get("unread") in ("1", "true")
        return web.json_response(await page(principal.user_id, before, limit, unread_only))

    async def rest_read(request: web.Request) -> web.Response:
        principal = await m.rest.principal(request)
        marked = await notes.mark_read(principal.user_id, request.match_info["notification_id"])
        return web.json_response({"marked": marked, "unread": await notes.unread(principal.user_id)})

    async def rest_read_all(request: web.Request) -> web.Response:
        principal = await m.rest.principal(request)
        marked = await notes.mark_read(principal.user_id, None)
        return web.json_response({"marked": marked, "unread": 0})

    async def rest_delete(request: web.Request) -> web.Response:
        principal = await m.rest.principal(request)
        await notes.delete(principal.user_id, request.match_info["notification_id"])
        return web.json_response({"deleted": request.match_info["notification_id"],
                                  "unread": await notes.unread(principal.user_id)})

    m.routes.add_get("/api/notifications", rest_list)
    m.routes.add_post("/api/notifications/read-all", rest_read_all)
    m.routes.add_post("/api/notifications/{notification_id}/read", rest_read)
    m.routes.add_delete("/api/notifications/{notification_id}", rest_delete)


def _mount_receipts(m: Mount, sockets: Sockets) -> None:
    """A device confirms it has a due dose or an urgent notification (alerts: ``alert:received``), so that it is
    not pushed it (``server.alerts.device_delivery``)."""

    @m.events.event("dose:received", DoseReceived)
    async def dose(ctx: EventContext, body: DoseReceived) -> dict[str, Any]:
        dose_id = str(as_object_id(body.dose_id, "dose_id"))
        await DeviceDelivery.received(ctx.principal.user_id, dose_id, _device(sockets, ctx))
        return {"dose_id": dose_id, "device_id": _device(sockets, ctx)}

    @m.events.event("notification:received", NotificationRef)
    async def notification(ctx: EventContext, body: NotificationRef) -> dict[str, Any]:
        note_id = str(as_object_id(body.id, "id"))
        await DeviceDelivery.received(ctx.principal.user_id, note_id, _device(sockets, ctx))
        return {"id": note_id, "device_id": _device(sockets, ctx)}


def _mount_push(m: Mount, push: PushDispatcher, sockets: Sockets) -> None:
    @m.events.event("push:register", RegisterIn)
    async def register(ctx: EventContext, body: RegisterIn) -> dict[str, Any]:
        return await push.register(ctx.principal.user_id, _device(sockets, ctx), body)

    @m.events.event("push:unregister", UnregisterIn)
    async def unregister(ctx: EventContext, body: UnregisterIn) -> dict[str, Any]:
        return await push.unregister(ctx.principal.user_id, _device(sockets, ctx), body.provider)

    async def rest_stats(request: web.Request) -> web.Response:
        return web.json_response(await push.stats(await m.rest.principal(request)))

    m.routes.add_get("/api/admin/push-stats", rest_stats)

    async def vapid_key(request: web.Request) -> web.Response:
        """The server's VAPID public key (base64url, uncompressed P-256 point): a browser's
        ``applicationServerKey`` for ``pushManager.subscribe``, then ``push:register``."""
        vapid = getattr(push.providers.get("webpush"), "vapid", None)
        if vapid is None:
            raise ApiError("push_unavailable", "Web Push is not configured on this server", 404)
        point = vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return web.json_response({"public_key": urlsafe_b64encode(point).rstrip(b"=").decode()})

    m.routes.add_get("/api/push/vapid-key", vapid_key)
