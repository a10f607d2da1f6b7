"""The alerts concern's transport: its Socket.IO events and REST routes, bound once to its services, and
the alert fan-out's view of this process's sockets."""

from __future__ import annotations

from base64 import urlsafe_b64encode
from typing import Any, Literal

from aiohttp import web
from beanie import PydanticObjectId
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import Field

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
    Status,
    UnregisterIn,
)
from server.alerts.notifications import Notifications, listing
from server.alerts.push import PushDispatcher
from server.alerts.wire import (
    AlertAcknowledged,
    AlertAckReply,
    AlertDetail,
    AlertEscalated,
    AlertOut,
    AlertPush,
    AlertResolved,
    Deleted,
    DoseReceipt,
    Marked,
    NotificationOut,
    NotificationPage,
    NotificationReceipt,
    PushStats,
    Received,
    Registered,
    Removed,
    Unread,
    VapidKey,
)
from server.core.errors import ApiError
from server.core.identity import Client, Principal, as_object_id
from server.core.wire import Page
from server.transport.events import EventContext
from server.transport.http import PageQuery, cursor_page, page_params
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
    m.events.push("alert:new", AlertPush, "To every recipient's devices (the care team, the patient), once stored; "
                  "confirm receipt with alert:received.")
    m.events.push("alert:escalated", AlertEscalated, "An unacknowledged alert, repeated louder (level 1) or to the "
                  "clinicians and the emergency contacts (level 2).")
    m.events.push("alert:acknowledged", AlertAcknowledged, "To every recipient when the first one acknowledges "
                  "(\"Maria is handling it\"), and to the patient's own devices (so the patient sees who is "
                  "handling it).")
    m.events.push("alert:resolved", AlertResolved, "To every recipient, and to the patient's own devices, when the "
                  "alert is resolved.")
    m.events.push("notification:new", NotificationOut, "To every connected device of the user, once the "
                  "notification is stored. One with urgency high or critical is pushed to each registered device "
                  "of the user that has not confirmed it with notification:received within "
                  "HEALTHMATE_ALERT_PUSH_AFTER_S (default 5 s); the others are pushed at once to each registered "
                  "device with no connected socket.")
    sockets = Sockets(m.realtime)
    alerts.fanout.attach(sockets)
    m.realtime.connect_hooks.append(alerts.fanout.on_connect)
    m.realtime.disconnect_hooks.append(alerts.fanout.on_disconnect)
    _mount_alerts(m, alerts, sockets)
    _mount_notifications(m, notes)
    _mount_receipts(m, sockets)
    _mount_push(m, push, sockets)


class AlertsQuery(PageQuery):
    status: Status | None = None


class NotificationsQuery(PageQuery):
    unread: Literal["1", "true"] | None = Field(None, description="Only the unread ones")


def _device(sockets: Sockets, ctx: EventContext) -> str:
    return sockets.device_id(ctx.sid) or "unknown"


def _mount_alerts(m: Mount, alerts: Alerts, sockets: Sockets) -> None:
    ev, acks = m.events.event, alerts.acks

    async def page(principal: Principal, client: Client, patient_id: str | None, status: str | None,
                   before: PydanticObjectId | None, limit: int) -> dict[str, Any]:
        condition, keep = await reads.listed(principal, patient_id, status, client)
        return await cursor_page(Alert, condition, before, limit, Alert.public, keep)

    @ev("alert:received", AlertRef, reply=Received)
    async def received(ctx: EventContext, body: AlertRef) -> dict[str, Any]:
        """(recipient) Confirm that this device has the alert. Stored per device (the handshake's `auth.device_id`,
        else the socket id); an open alert this device has not confirmed is sent again when it connects, a
        confirmed one never. A registered device that has not confirmed an open alert within
        `HEALTHMATE_ALERT_PUSH_AFTER_S` (default 5 s) is pushed its notification, whatever else is connected."""
        return await acks.received(ctx.principal, body.alert_id, _device(sockets, ctx))

    @ev("alert:ack", AlertNote, reply=AlertAckReply)
    async def ack(ctx: EventContext, body: AlertNote) -> dict[str, Any]:
        """(recipient) "I am handling it". The first acknowledgement wins and is pushed to every recipient
        (`alert:acknowledged`); a later one answers with the alert and `acknowledged_by_you: false`. Stops
        escalation. Also confirms receipt on this device."""
        return await acks.ack(ctx.principal, body.alert_id, body.note, _device(sockets, ctx))

    @ev("alert:help", HelpIn, roles=frozenset({"patient"}), reply=AlertOut)
    async def help_(ctx: EventContext, body: HelpIn) -> dict[str, Any]:
        """(patient) "I need help": raises the emergency alert `help_requested` to the whole care team
        (`alert:new`), with the optional note as its body; while one is open, pressing again answers that one.
        Raised on demand, so capped per patient per UTC day like a triage emergency (`too_many_alerts`,
        `details.retry_after_s`)."""
        alert = await alerts.raise_alert(ctx.principal.user_id, "help_requested", "Help requested",
                                         body.note or "The patient pressed \u201cI need help\u201d.",
                                         source={"type": "patient"}, raised_by=ctx.principal, on_demand=True)
        return alert.public()

    @ev("alert:resolve", AlertNote, reply=AlertOut)
    async def resolve(ctx: EventContext, body: AlertNote) -> dict[str, Any]:
        """(recipient) Close the alert with an optional note; `already_resolved` (409) the second time."""
        return await acks.resolve(ctx.principal, body.alert_id, body.note)

    @ev("alert:get", AlertRef, reply=AlertDetail)
    async def get(ctx: EventContext, body: AlertRef) -> dict[str, Any]:
        """The alert's lifecycle (for whoever may see the patient's data now: a recipient whose link has ended gets
        `forbidden`): raised, emitted, deliveries per device with times, escalations (and the webhook's outcome; a
        call held back by the patient's daily cap is `{"channel": "webhook", "ok": false, "suppressed":
        "daily_cap"}`), acknowledged and resolved by whom and when."""
        return await reads.get_alert(ctx.principal, body.alert_id, ctx.client)

    @ev("alerts:list", AlertQuery, reply=Page[AlertOut])
    async def listed(ctx: EventContext, body: AlertQuery) -> dict[str, Any]:
        """Alerts newest first: with `patient_id` the patient's (patient-scoped, audited); without, the caller's as a
        recipient, of the patients they are linked to now (a patient: their own). Optional `status` filter; cursor
        paging."""
        before = as_object_id(body.before, "before") if body.before else None
        return await page(ctx.principal, ctx.client, body.patient_id, body.status, before, body.limit)

    async def rest_mine(request: web.Request) -> web.Response:
        """The caller's alerts as a recipient, of the patients they are linked to now (a patient's own alerts for a
        patient), newest first"""
        principal = await m.rest.principal(request)
        before, limit = page_params(request)
        status = request.query.get("status")
        if status not in (None, "open", "acknowledged", "resolved"):
            raise ApiError("invalid_query", "status must be open, acknowledged or resolved", 422, {"field": "status"})
        return web.json_response(await page(principal, m.rest.client(request), None, status, before, limit))

    async def rest_patient(request: web.Request) -> web.Response:
        """A patient's alerts, newest first"""
        principal = await m.rest.principal(request)
        before, limit = page_params(request)
        return web.json_response(await page(principal, m.rest.client(request), request.match_info["patient_id"],
                                            None, before, limit))

    async def rest_get(request: web.Request) -> web.Response:
        """One alert's lifecycle: raised, emitted, delivered to which device when, escalations, acknowledged, resolved
        (for whoever may see the patient's data now; 403 otherwise, also to a recipient whose link has ended)"""
        principal = await m.rest.principal(request)
        return web.json_response(await reads.get_alert(principal, request.match_info["alert_id"],
                                                       m.rest.client(request)))

    m.route("GET", "/api/alerts", rest_mine, Page[AlertOut], query=AlertsQuery)
    m.route("GET", "/api/alerts/{alert_id}", rest_get, AlertDetail)
    m.route("GET", "/api/patients/{patient_id}/alerts", rest_patient, Page[AlertOut], query=PageQuery)


def _mount_notifications(m: Mount, notes: Notifications) -> None:
    ev = m.events.event

    async def notes_page(user_id: PydanticObjectId, before: PydanticObjectId | None, limit: int,
                         unread_only: bool) -> dict[str, Any]:
        query, patients = await listing(user_id, unread_only)
        found = await cursor_page(Notification, query, before, limit, Notification.public,
                                  lambda note: note.patient_id in patients)
        return {**found, "unread": await notes.unread(user_id)}

    @ev("notifications:list", ListIn, reply=NotificationPage)
    async def listed(ctx: EventContext, body: ListIn) -> dict[str, Any]:
        """The caller's notifications, newest first (`before` is the previous page's `next_cursor`), with the unread
        count. Those about a patient the caller is no longer linked to are not shown (nor counted)."""
        before = as_object_id(body.before, "before") if body.before else None
        return await notes_page(ctx.principal.user_id, before, body.limit, body.unread_only)

    @ev("notifications:unread-count", reply=Unread)
    async def unread(ctx: EventContext, _: None) -> dict[str, Any]:
        """How many of the caller's notifications are unread."""
        return {"unread": await notes.unread(ctx.principal.user_id)}

    @ev("notifications:mark-read", MarkRead, reply=Marked)
    async def read(ctx: EventContext, body: MarkRead) -> dict[str, Any]:
        """Mark one notification (`id`) or all (`all: true`) read; `not_found` for one that is not the caller's."""
        if (body.id is None) == (not body.all):
            raise ApiError("invalid_payload", "Give either id or all: true", 422)
        marked = await notes.mark_read(ctx.principal.user_id, body.id)
        return {"marked": marked, "unread": await notes.unread(ctx.principal.user_id)}

    @ev("notifications:delete", NotificationRef, reply=Deleted)
    async def delete(ctx: EventContext, body: NotificationRef) -> dict[str, Any]:
        """Delete one of the caller's notifications; `not_found` otherwise."""
        await notes.delete(ctx.principal.user_id, body.id)
        return {"deleted": body.id, "unread": await notes.unread(ctx.principal.user_id)}

    async def rest_list(request: web.Request) -> web.Response:
        """The caller's notifications, newest first, with the unread count (not those about a patient the caller is no
        longer linked to)"""
        principal = await m.rest.principal(request)
        before, limit = page_params(request)
        unread_only = request.query.get("unread") in ("1", "true")
        return web.json_response(await notes_page(principal.user_id, before, limit, unread_only))

    async def rest_read(request: web.Request) -> web.Response:
        """Mark one notification read"""
        principal = await m.rest.principal(request)
        marked = await notes.mark_read(principal.user_id, request.match_info["notification_id"])
        return web.json_response({"marked": marked, "unread": await notes.unread(principal.user_id)})

    async def rest_read_all(request: web.Request) -> web.Response:
        """Mark all the caller's notifications read"""
        principal = await m.rest.principal(request)
        marked = await notes.mark_read(principal.user_id, None)
        return web.json_response({"marked": marked, "unread": 0})

    async def rest_delete(request: web.Request) -> web.Response:
        """Delete one notification"""
        principal = await m.rest.principal(request)
        await notes.delete(principal.user_id, request.match_info["notification_id"])
        return web.json_response({"deleted": request.match_info["notification_id"],
                                  "unread": await notes.unread(principal.user_id)})

    m.route("GET", "/api/notifications", rest_list, NotificationPage, query=NotificationsQuery)
    m.route("POST", "/api/notifications/read-all", rest_read_all, Marked)
    m.route("POST", "/api/notifications/{notification_id}/read", rest_read, Marked)
    m.route("DELETE", "/api/notifications/{notification_id}", rest_delete, Deleted)


def _mount_receipts(m: Mount, sockets: Sockets) -> None:
    """A device confirms it has a due dose or an urgent notification (alerts: ``alert:received``), so that it is
    not pushed it (``server.alerts.device_delivery``)."""

    @m.events.event("dose:received", DoseReceived, reply=DoseReceipt)
    async def dose(ctx: EventContext, body: DoseReceived) -> dict[str, Any]:
        """This device (the handshake's `auth.device_id`) has the `dose:due` of `dose_id`: the dose's `reminder`
        notification is not pushed to it. A device that has not sent this within `HEALTHMATE_ALERT_PUSH_AFTER_S`
        of the reminder gets it pushed. `invalid_id` for an id that is not one."""
        dose_id = str(as_object_id(body.dose_id, "dose_id"))
        await DeviceDelivery.received(ctx.principal.user_id, dose_id, _device(sockets, ctx))
        return {"dose_id": dose_id, "device_id": _device(sockets, ctx)}

    @m.events.event("notification:received", NotificationRef, reply=NotificationReceipt)
    async def notification(ctx: EventContext, body: NotificationRef) -> dict[str, Any]:
        """This device (the handshake's `auth.device_id`) has the urgent notification `id`: it is not pushed to
        it."""
        note_id = str(as_object_id(body.id, "id"))
        await DeviceDelivery.received(ctx.principal.user_id, note_id, _device(sockets, ctx))
        return {"id": note_id, "device_id": _device(sockets, ctx)}


def _mount_push(m: Mount, push: PushDispatcher, sockets: Sockets) -> None:
    @m.events.event("push:register", RegisterIn, reply=Registered)
    async def register(ctx: EventContext, body: RegisterIn) -> dict[str, Any]:
        """Register this device (the handshake's `auth.device_id`) for push delivery: `fcm` (registration token),
        `apns` (hex device token), `apns-voip` (hex PushKit token: incoming calls and their cancels only),
        `webhook` (an opaque token the gateway knows) or `webpush` (the browser's PushSubscription).
        Re-registering replaces the device's token for that provider; at most 20 per user. `enabled` says whether
        the server has that provider configured. Pushes go through a durable outbox, retried with backoff until
        their deadline; a token the provider calls dead is dropped (see docs/client-guide.md, Push). A `webpush`
        endpoint must be `https` and its host must resolve only to public addresses (not loopback, private,
        CGNAT, link-local, multicast, reserved, IPv6 unique-local or IPv4-mapped forms of those), unless at an
        origin the operator trusts: else `unsafe_url` (422, `details: {reason: not_https | not_public |
        malformed, field: subscription.endpoint}`). It is checked again at send time; one refused then is
        dropped."""
        return await push.register(ctx.principal.user_id, _device(sockets, ctx), body)

    @m.events.event("push:unregister", UnregisterIn, reply=Removed)
    async def unregister(ctx: EventContext, body: UnregisterIn) -> dict[str, Any]:
        """Remove this device's push registrations (one provider, or all)."""
        return await push.unregister(ctx.principal.user_id, _device(sockets, ctx), body.provider)

    async def rest_stats(request: web.Request) -> web.Response:
        """(an organisation's admin) The push outbox and the outcomes of its kept history.

        `outbox`: the pushes waiting now, of which `in_flight` (claimed under a lease) and `retrying` (failed,
        waiting for their next attempt), and the oldest waiting one's age; `history`, outcomes per provider over
        the last `HEALTHMATE_PUSH_HISTORY_S`, and the latency from a push's writing to its send over the last
        hour."""
        return web.json_response(await push.stats(await m.rest.principal(request)))

    m.route("GET", "/api/admin/push-stats", rest_stats, PushStats)

    async def vapid_key(request: web.Request) -> web.Response:
        """The server's VAPID public key, for a browser's Web Push subscription.

        The `applicationServerKey` to give `pushManager.subscribe` (base64url of the uncompressed P-256 point);
        then register the subscription with the Socket.IO event `push:register {provider: "webpush",
        subscription}`. 404 `push_unavailable` when the operator configured no VAPID key
        (`HEALTHMATE_VAPID_PRIVATE_KEY`)."""
        vapid = getattr(push.providers.get("webpush"), "vapid", None)
        if vapid is None:
            raise ApiError("push_unavailable", "Web Push is not configured on this server", 404)
        point = vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return web.json_response({"public_key": urlsafe_b64encode(point).rstrip(b"=").decode()})

    m.route("GET", "/api/push/vapid-key", vapid_key, VapidKey, public=True)
