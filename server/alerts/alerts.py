"""Emergency alerts that are never lost.

An alert (a hypertensive-crisis reading, a critical event from the live analysis, later triage) goes
to every caregiver and clinician linked to the patient and lists the patient's emergency contacts.

- **Persisted before emitted.** The alert is stored with an emit lease; then it is pushed, and marked
  emitted. If the raising process dies in between, any process's sweep finds the expired lease,
  claims it with a conditional update (one winner) and emits it: nothing is lost.
- **Every connected device of every recipient.** The push travels on the control bus; each process
  sends it to its own sockets in the recipients' user rooms, each socket at most once per alert.
- **Exactly once per device after its ack.** A client confirms receipt with ``alert:received``; the
  confirmation is stored per device (an ``AlertDelivery`` keyed ``<alert>:<user>:<device>``, device id
  from the Socket.IO auth ``device_id``, else the socket id; one small document each, written in
  batches, because rewriting one alert document per receipt does not scale to a thousand recipients).
  On connect, a device gets every open alert it has not confirmed, oldest first.
- **First acknowledgement wins** (``alert:ack``, a conditional update) and is shown to all recipients.
- **Escalation, at least once per level.** Unacknowledged after ``alert_escalation_s``: pushed again with
  urgency ``critical`` (level 1); after as long again: to the clinicians once more and to the emergency
  contacts' notification channel, a signed webhook (level 2). A process claims a level with a
  conditional update that also marks the step pending under a lease (``escalation_pending``,
  ``escalation_lease_until``, ``alert_emit_lease_s``; renewed while the webhook retries); it clears the
  mark once the push is published, the notifications are stored and, at level 2, the webhook's outcome
  is recorded. If it dies before, any process's sweep re-claims the expired lease (one winner) and runs
  that step again, unless the alert has been acknowledged or resolved meanwhile. So a step is never
  lost but may run twice: a socket that already got it and is still connected does not get it again
  (push keys ``<alert>/<level>``, remembered per socket), but a device that reconnected can get the same
  ``alert:escalated`` (same ``id`` and ``escalation``) twice, a recipient a second notification and the
  webhook a second call (same alert id and level).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Literal

import aiohttp
from aiohttp import web
from beanie import PydanticObjectId
from beanie.operators import In
from pydantic import BaseModel, ConfigDict, Field
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import BulkWriteError

from server.alerts.notifications import Notifications
from server.care.access import may_access, patients_of, require_patient
from server.care.contacts import emergency_contacts
from server.care.documents import Link, User
from server.core.config import Settings
from server.core.documents import VersionedDocument, iso, utcnow
from server.core.errors import ApiError, not_found
from server.core.identity import Client, Principal, as_object_id
from server.infra.pubsub import ControlBus
from server.infra.webhook import post_signed
from server.transport.http import client_of, cursor_page, page_params, require_principal, services
from server.transport.realtime import EventContext, Realtime, user_room

log = logging.getLogger(__name__)
Status = Literal["open", "acknowledged", "resolved"]
REDELIVER_LIMIT = 200  # open alerts sent to a connecting device at most (oldest first)
RECIPIENT_CACHE = 256  # alerts whose recipients are kept in memory for receipts
SENT_PER_SOCKET = 512  # push keys remembered per socket (no duplicate pushes to one socket)
WEBHOOK_ATTEMPTS = 4
WEBHOOK_TIMEOUT_S = 10.0


class Alert(VersionedDocument):
    patient_id: PydanticObjectId
    patient_name: str = ""
    kind: str
    title: str
    body: str = ""
    urgency: Literal["high", "critical"] = "high"
    level: int = 0  # escalation level: 0 raised, 1 repeated louder, 2 outward
    source: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    recipients: list[dict[str, Any]] = Field(default_factory=list)  # {user_id, role}
    recipient_ids: list[PydanticObjectId] = Field(default_factory=list)
    emergency_contacts: list[dict[str, Any]] = Field(default_factory=list)
    raised_at: datetime = Field(default_factory=utcnow)
    raised_by: dict[str, Any] | None = None
    status: Status = "open"
    emit_lease_until: datetime
    emitted_at: datetime | None = None
    emitted_by: str | None = None
    escalate_at: datetime | None = None
    escalations: list[dict[str, Any]] = Field(default_factory=list)
    escalation_pending: int | None = None  # the level claimed whose step has not finished yet
    escalation_lease_until: datetime | None = None  # then another process runs that step again
    acknowledged_at: datetime | None = None
    acknowledged_by: dict[str, Any] | None = None
    resolved_at: datetime | None = None
    resolved_by: dict[str, Any] | None = None
    resolution_note: str | None = None

    class Settings:
        name = "alerts"
        indexes = [
            IndexModel([("recipient_ids", ASCENDING), ("status", ASCENDING), ("raised_at", ASCENDING)],
                       name="recipient_status"),
            IndexModel([("recipient_ids", ASCENDING), ("_id", DESCENDING)], name="recipient_recent"),
            IndexModel([("patient_id", ASCENDING), ("_id", DESCENDING)], name="patient_recent"),
            IndexModel([("emitted_at", ASCENDING), ("emit_lease_until", ASCENDING)], name="pending_emit"),
            IndexModel([("status", ASCENDING), ("escalate_at", ASCENDING)], name="pending_escalation"),
            IndexModel([("status", ASCENDING), ("escalation_lease_until", ASCENDING)], name="stalled_escalation"),
        ]

    def push(self) -> dict[str, Any]:
        """What a recipient's device is sent: small, whatever the number of recipients."""
        return {"id": str(self.id), "patient": {"id": str(self.patient_id), "name": self.patient_name},
                "kind": self.kind, "title": self.title, "body": self.body, "urgency": self.urgency,
                "level": self.level, "status": self.status, "raised_at": iso(self.raised_at), "data": self.data,
                "emergency_contacts": self.emergency_contacts, "recipients": len(self.recipients),
                "acknowledged_by": self._who(self.acknowledged_by, self.acknowledged_at)}

    def public(self) -> dict[str, Any]:
        """The lifecycle: raised, emitted, escalated, acknowledged by whom, resolved (deliveries: ``lifecycle``)."""
        return {**self.push(), "source": self.source, "recipients": self.recipients,
                "raised_by": self.raised_by, "emitted_at": iso(self.emitted_at), "escalations": [
                    {**e, "at": iso(e.get("at"))} for e in self.escalations],
                "acknowledged_at": iso(self.acknowledged_at),
                "resolved_at": iso(self.resolved_at), "resolved_by": self._who(self.resolved_by, self.resolved_at),
                "resolution_note": self.resolution_note}

    @staticmethod
    def _who(who: dict[str, Any] | None, at: datetime | None) -> dict[str, Any] | None:
        return None if who is None else {**who, "at": iso(at)}


class AlertDelivery(VersionedDocument):
    """One device's confirmation that it has an alert; the id makes the first one win."""

    id: str  # type: ignore[assignment]  # "<alert>:<user>:<device>"
    alert_id: PydanticObjectId
    user_id: PydanticObjectId
    device_id: str
    received_at: datetime

    class Settings:
        name = "alert_deliveries"
        indexes = [IndexModel([("alert_id", ASCENDING), ("received_at", ASCENDING)], name="alert")]

    @staticmethod
    def key(alert_id: Any, user_id: Any, device_id: str) -> str:
        return f"{alert_id}:{user_id}:{device_id}"


async def lifecycle(alert: Alert) -> dict[str, Any]:
    """Everything about an alert, including which device received it when."""
    deliveries = await AlertDelivery.find(AlertDelivery.alert_id == alert.id).sort(+AlertDelivery.received_at) \
        .limit(10_000).to_list()
    names = {u["_id"]: u.get("name") async for u in User.get_pymongo_collection().find(
        {"_id": {"$in": alert.recipient_ids}}, {"name": 1})}
    recipients = [{**r, "name": names.get(PydanticObjectId(r["user_id"]))} for r in alert.recipients]
    return {**alert.public(), "recipients": recipients, "deliveries": [
        {"user_id": str(d.user_id), "device_id": d.device_id, "received_at": iso(d.received_at)} for d in deliveries]}


class AlertRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alert_id: str = Field(max_length=64)


class AlertNote(AlertRef):
    note: str | None = Field(None, max_length=500)


class AlertQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str | None = Field(None, max_length=64)
    status: Status | None = None
    before: str | None = Field(None, max_length=64)
    limit: int = Field(50, ge=1, le=200)


class SentKeys:
    """Per socket, the pushes already sent by this process (bounded), so none is sent twice."""

    def __init__(self) -> None:
        self._by_sid: dict[str, OrderedDict[str, None]] = {}

    def first_time(self, sid: str, key: str) -> bool:
        keys = self._by_sid.setdefault(sid, OrderedDict())
        if key in keys:
            return False
        keys[key] = None
        if len(keys) > SENT_PER_SOCKET:
            keys.popitem(last=False)
        return True

    def forget(self, sid: str) -> None:
        self._by_sid.pop(sid, None)


class Receipts:
    """Group commit of ``alert:received``: the receipts that arrive within a few milliseconds are
    inserted together; each sender's ack waits until its receipt is stored. A device's second
    receipt for the same alert is a duplicate key, ignored."""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.delay_s = delay_s
        self._pending: dict[str, tuple[AlertDelivery, list[asyncio.Future[None]]]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def record(self, alert_id: PydanticObjectId, user_id: PydanticObjectId, device_id: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        key = AlertDelivery.key(alert_id, user_id, device_id)
        doc = AlertDelivery(id=key, alert_id=alert_id, user_id=user_id, device_id=device_id, received_at=utcnow())
        self._pending.setdefault(key, (doc, []))[1].append(future)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        await asyncio.sleep(self.delay_s)
        batch, self._pending = self._pending, {}
        error: BaseException | None = None
        try:
            await AlertDelivery.get_pymongo_collection().insert_many(
                [doc.model_dump(by_alias=True) for doc, _ in batch.values()], ordered=False)
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                error = exc
        except Exception as exc:  # the senders are told; they send the receipt again
            error = exc
        finally:
            self._flusher = asyncio.create_task(self._flush()) if self._pending else None
        for _, futures in batch.values():
            for f in futures:
                if not f.done():
                    f.set_exception(error) if error else f.set_result(None)


class Alerts:
    def __init__(self, settings: Settings, realtime: Realtime, bus: ControlBus,
                 notifications: Notifications | None = None) -> None:
        self.settings = settings
        self.rt = realtime
        self.bus = bus
        self.sent = SentKeys()
        self.receipts = Receipts()
        self.node = f"{os.getpid()}"
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._recipient_cache: OrderedDict[PydanticObjectId, frozenset[PydanticObjectId]] = OrderedDict()
        self.notifications = notifications  # a notification too, pushed to recipients with no connected device
        bus.on("alert_push", self._apply_push)
        realtime.connect_hooks.append(self._on_connect)
        realtime.disconnect_hooks.append(self._on_disconnect)
        ev = realtime.event
        ev("alert:received", AlertRef)(self._received)
        ev("alert:ack", AlertNote)(self._ack)
        ev("alert:resolve", AlertNote)(self._resolve)
        ev("alert:get", AlertRef)(self._get)
        ev("alerts:list", AlertQuery)(self._list)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="alert-sweeper")

    async def stop(self) -> None:
        for task in [self._sweeper, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._http is not None:
            await self._http.close()

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- raising -----------------------------------------------------------------------------------

    async def raise_alert(self, patient_id: PydanticObjectId | str, kind: str, title: str, body: str = "", *,
                          source: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                          raised_by: Principal | None = None) -> Alert:
        """Raise an alert to the patient's care team, or return the open one of this kind (no storm)."""
        pid = PydanticObjectId(patient_id)
        existing = await Alert.find_one(Alert.patient_id == pid, Alert.kind == kind, Alert.status == "open")
        if existing is not None:
            return existing
        patient = await User.get(pid)
        links = await Link.find(Link.patient_id == pid, Link.revoked_at == None).to_list()  # noqa: E711
        # Names are looked up only when the lifecycle is read: a thousand-user lookup here would delay the alert.
        recipients = [{"user_id": str(lk.member_id), "role": lk.member_role} for lk in links]
        now = utcnow()
        alert = Alert(patient_id=pid, patient_name=patient.name if patient else "", kind=kind[:40],
                      title=title[:200], body=body[:1000], source=source or {}, data=data or {},
                      recipients=recipients, recipient_ids=[lk.member_id for lk in links],
                      emergency_contacts=await emergency_contacts(pid), raised_at=now,
                      raised_by={"user_id": raised_by.id, "role": raised_by.role} if raised_by else None,
                      emit_lease_until=now + timedelta(seconds=self.settings.alert_emit_lease_s),
                      escalate_at=now + timedelta(seconds=self.settings.alert_escalation_s))
        await alert.insert()
        if self.settings.fault_injection == "crash_after_alert_persist":
            os._exit(70)  # a process dying between persisting and emitting (tests only)
        await self._emit(alert)
        return alert

    async def _emit(self, alert: Alert) -> None:
        await self._push("alert:new", alert.push(), alert.recipient_ids, key=str(alert.id))
        await Alert.get_pymongo_collection().update_one(
            {"_id": alert.id, "emitted_at": None}, {"$set": {"emitted_at": utcnow(), "emitted_by": self.node}})
        self._notify(alert, alert.recipient_ids)

    def _notify(self, alert: Alert, user_ids: list[PydanticObjectId]) -> None:
        """In the background: a notification document per recipient (and push to their offline devices)."""
        self._background(self._notify_now(alert, user_ids))

    async def _notify_now(self, alert: Alert, user_ids: list[PydanticObjectId]) -> None:
        if self.notifications is not None and user_ids:
            await self.notifications.notify(
                user_ids, "alert", alert.title, alert.body, patient_id=alert.patient_id, urgency=alert.urgency,
                data={"alert_id": str(alert.id), "level": alert.level}, live=False)

    # --- pushing to recipients' sockets, in every process -----------------------------------------

    async def _push(self, event: str, data: dict[str, Any], user_ids: Iterable[Any], key: str) -> None:
        await self.bus.publish("alert_push", event=event, data=data, users=[str(u) for u in user_ids], key=key)

    async def _apply_push(self, msg: dict[str, Any]) -> None:
        event, data, key = msg["event"], msg["data"], msg["key"]
        for user_id in msg["users"]:
            for sid in self.rt.local_sids(user_room(user_id)):
                await self._send(sid, event, data, key)

    async def _send(self, sid: str, event: str, data: dict[str, Any], key: str) -> None:
        if self.sent.first_time(sid, f"{event}/{key}"):
            await self.rt.sio.emit(event, data, to=sid, ignore_queue=True)

    async def _on_connect(self, sid: str, principal: Principal) -> None:
        if principal.role in ("caregiver", "clinician"):
            self._background(self._redeliver(sid, principal))

    async def _on_disconnect(self, sid: str) -> None:
        self.sent.forget(sid)

    async def _redeliver(self, sid: str, principal: Principal) -> None:
        """Every open alert this device has not confirmed, oldest first."""
        device = self.rt.device_ids.get(sid)
        if device is None:
            return
        for _ in range(50):  # the connect handshake completes after the connect hooks
            if self.rt.sio.manager.is_connected(sid, "/"):
                break
            await asyncio.sleep(0.01)
        linked = await patients_of(principal)  # not for patients whose link has ended since
        pending = await Alert.find({"recipient_ids": principal.user_id, "status": "open",
                                    "patient_id": {"$in": linked}}) \
            .sort(+Alert.raised_at, +Alert.id).limit(REDELIVER_LIMIT).to_list()
        if not pending:
            return
        keys = [AlertDelivery.key(a.id, principal.user_id, device) for a in pending]
        confirmed = {d.alert_id for d in await AlertDelivery.find(In(AlertDelivery.id, keys)).to_list()}
        for alert in (a for a in pending if a.id not in confirmed):
            if sid not in self.rt.principals:
                return
            await self._send(sid, "alert:new", alert.push(), str(alert.id))

    # --- the recipients' side ------------------------------------------------------------------------

    async def _recipient_alert(self, ctx: EventContext, alert_id: str) -> Alert:
        alert = await Alert.get(as_object_id(alert_id, "alert_id"))
        if alert is None or ctx.principal.user_id not in alert.recipient_ids \
                or not await may_access(ctx.principal, alert.patient_id):  # the link may have ended since
            raise not_found("alert")
        return alert

    async def _recipients(self, alert_id: PydanticObjectId) -> frozenset[PydanticObjectId]:
        """An alert's recipients, cached (bounded): a thousand receipts must not be a thousand queries."""
        cached = self._recipient_cache.get(alert_id)
        if cached is None:
            alert = await Alert.find_one(Alert.id == alert_id)
            cached = frozenset(alert.recipient_ids) if alert else frozenset()
            self._recipient_cache[alert_id] = cached
            if len(self._recipient_cache) > RECIPIENT_CACHE:
                self._recipient_cache.popitem(last=False)
        return cached

    async def _received(self, ctx: EventContext, body: AlertRef) -> dict[str, Any]:
        alert_id = as_object_id(body.alert_id, "alert_id")
        if ctx.principal.user_id not in await self._recipients(alert_id):
            raise not_found("alert")
        device = self.rt.device_ids.get(ctx.sid, "unknown")
        await self.receipts.record(alert_id, ctx.principal.user_id, device)
        return {"alert_id": str(alert_id), "device_id": device}

    async def _ack(self, ctx: EventContext, body: AlertNote) -> dict[str, Any]:
        alert = await self._recipient_alert(ctx, body.alert_id)
        who = await self._who(ctx.principal)
        now = utcnow()
        won = await Alert.get_pymongo_collection().update_one(
            {"_id": alert.id, "status": "open"},
            {"$set": {"status": "acknowledged", "acknowledged_at": now, "acknowledged_by": {**who, "note": body.note},
                      "escalate_at": None}})
        device = self.rt.device_ids.get(ctx.sid, "unknown")
        await self.receipts.record(alert.id, ctx.principal.user_id, device)  # type: ignore[arg-type]
        alert = await Alert.get(alert.id)
        assert alert is not None
        if won.modified_count:
            await self._push("alert:acknowledged", {
                "alert_id": str(alert.id), "patient_id": str(alert.patient_id),
                "by": alert.push()["acknowledged_by"], "message": f"{who['name']} is handling it"},
                alert.recipient_ids, key=str(alert.id))
        return {**alert.push(), "acknowledged_by_you": won.modified_count == 1}

    async def _resolve(self, ctx: EventContext, body: AlertNote) -> dict[str, Any]:
        alert = await self._recipient_alert(ctx, body.alert_id)
        who = await self._who(ctx.principal)
        res = await Alert.get_pymongo_collection().update_one(
            {"_id": alert.id, "status": {"$ne": "resolved"}},
            {"$set": {"status": "resolved", "resolved_at": utcnow(), "resolved_by": who,
                      "resolution_note": body.note, "escalate_at": None}})
        if not res.modified_count:
            raise ApiError("already_resolved", "This alert is already resolved", 409)
        alert = await Alert.get(alert.id)
        assert alert is not None
        await self._push("alert:resolved", {"alert_id": str(alert.id), "patient_id": str(alert.patient_id),
                                            "by": alert.public()["resolved_by"], "note": body.note},
                         alert.recipient_ids, key=str(alert.id))
        return alert.public()

    @staticmethod
    async def _who(principal: Principal) -> dict[str, Any]:
        user = await User.get(principal.user_id)
        return {"user_id": principal.id, "role": principal.role, "name": user.name if user else principal.name}

    # --- queries ---------------------------------------------------------------------------------------

    async def get(self, principal: Principal, alert_id: str, client: Client | None) -> dict[str, Any]:
        alert = await Alert.get(as_object_id(alert_id, "alert_id"))
        if alert is None:
            raise not_found("alert")
        if principal.user_id not in alert.recipient_ids:
            await require_patient(principal, alert.patient_id, "alerts.read", client, alert_id=alert_id)
        return await lifecycle(alert)

    async def list(self, principal: Principal, patient_id: str | None, status: str | None,
                   before: PydanticObjectId | None, limit: int, client: Client | None) -> dict[str, Any]:
        if patient_id is not None:
            condition: dict[str, Any] = {"patient_id": await require_patient(principal, patient_id, "alerts.read",
                                                                             client)}
        elif principal.role == "patient":
            condition = {"patient_id": principal.user_id}
        else:
            condition = {"recipient_ids": principal.user_id}
        if status is not None:
            condition["status"] = status
        return await cursor_page(Alert, condition, before, limit, Alert.public)

    async def _get(self, ctx: EventContext, body: AlertRef) -> dict[str, Any]:
        return await self.get(ctx.principal, body.alert_id, ctx.client)

    async def _list(self, ctx: EventContext, body: AlertQuery) -> dict[str, Any]:
        before = as_object_id(body.before, "before") if body.before else None
        return await self.list(ctx.principal, body.patient_id, body.status, before, body.limit, ctx.client)

    # --- the sweep: stalled emits and escalations, claimed in the store --------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("alert sweep failed: %s", exc)
            await asyncio.sleep(self.settings.alert_sweep_s)

    async def sweep(self) -> None:
        """Resume stalled emits and unfinished escalation steps (leases expired), then escalate due alerts."""
        coll = Alert.get_pymongo_collection()
        now = utcnow()
        lease = now + timedelta(seconds=self.settings.alert_emit_lease_s)
        stalled = await Alert.find({"emitted_at": None, "emit_lease_until": {"$lt": now}}).limit(50).to_list()
        for alert in stalled:
            claimed = await coll.update_one({"_id": alert.id, "emitted_at": None,
                                             "emit_lease_until": alert.emit_lease_until},
                                            {"$set": {"emit_lease_until": lease}})
            if claimed.modified_count:
                log.warning("resuming the stalled emit of alert %s", alert.id)
                await self._emit(alert)
        unfinished = await Alert.find({"status": "open", "escalation_pending": {"$ne": None},
                                       "escalation_lease_until": {"$lt": now}}).limit(50).to_list()
        for alert in unfinished:
            claimed = await coll.update_one(
                {"_id": alert.id, "status": "open", "escalation_pending": alert.escalation_pending,
                 "escalation_lease_until": alert.escalation_lease_until},
                {"$set": {"escalation_lease_until": lease}})
            if claimed.modified_count:
                log.warning("resuming escalation level %s of alert %s", alert.escalation_pending, alert.id)
                await self._escalate(alert)
        due = await Alert.find({"status": "open", "escalation_pending": None,
                                "escalate_at": {"$lt": now}}).limit(50).to_list()
        for alert in due:
            level = alert.level + 1
            nxt = now + timedelta(seconds=self.settings.alert_escalation_s) if level < 2 else None
            claimed = await coll.update_one(
                {"_id": alert.id, "status": "open", "level": alert.level, "escalation_pending": None},
                {"$set": {"level": level, "urgency": "critical", "escalate_at": nxt,
                          "escalation_pending": level, "escalation_lease_until": lease},
                 "$push": {"escalations": {"level": level, "at": now, "by": self.node}}})
            if claimed.modified_count:
                alert.level, alert.urgency = level, "critical"
                await self._escalate(alert)

    async def _escalate(self, alert: Alert) -> None:
        """Run the claimed step ``alert.level``; it is marked done when all of it has happened."""
        data = {**alert.push(), "escalation": alert.level}
        users = alert.recipient_ids if alert.level == 1 else [
            PydanticObjectId(r["user_id"]) for r in alert.recipients if r["role"] == "clinician"]
        await self._push("alert:escalated", data, users, key=f"{alert.id}/{alert.level}")
        await self._notify_now(alert, users)
        if alert.level >= 2 and self.settings.emergency_webhook_url and alert.emergency_contacts:
            self._background(self._call_webhook(alert))  # marks the step done once its outcome is stored
        else:
            await self._step_done(alert)

    async def _step_done(self, alert: Alert) -> None:
        await Alert.get_pymongo_collection().update_one(
            {"_id": alert.id, "escalation_pending": alert.level},
            {"$set": {"escalation_pending": None, "escalation_lease_until": None}})

    async def _call_webhook(self, alert: Alert) -> None:
        """Tell the emergency contacts' channel, retrying with backoff; the outcome is kept on the alert.
        The step's lease is renewed before each attempt so that no other process calls it meanwhile."""
        assert self.settings.emergency_webhook_url
        self._http = self._http or aiohttp.ClientSession()
        coll = Alert.get_pymongo_collection()
        payload = {"alert": alert.push(), "emergency_contacts": alert.emergency_contacts,
                   "message": f"{alert.patient_name or 'A patient'}: {alert.title}. Nobody has answered yet."}
        outcome: dict[str, Any] = {"channel": "webhook", "ok": False}
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            backoff = min(2 ** attempt * 0.5, 30)
            hold = self.settings.alert_emit_lease_s + WEBHOOK_TIMEOUT_S + backoff
            await coll.update_one({"_id": alert.id, "escalation_pending": alert.level},
                                  {"$set": {"escalation_lease_until": utcnow() + timedelta(seconds=hold)}})
            try:
                await post_signed(self._http, self.settings.emergency_webhook_url, self.settings.signing_secret,
                                  "alert.escalated", payload, timeout_s=WEBHOOK_TIMEOUT_S)
                outcome = {"channel": "webhook", "ok": True}
                break
            except Exception as exc:
                outcome["error"] = str(exc)[:200]
                await asyncio.sleep(backoff)
        await coll.update_one({"_id": alert.id}, {"$push": {"escalations": {
            **outcome, "level": alert.level, "at": utcnow(), "attempts": attempt}}})
        await self._step_done(alert)

    # --- sources -----------------------------------------------------------------------------------

    async def on_bp_crisis(self, reading: Any, principal: Principal) -> None:
        await self.raise_alert(
            reading.patient_id, "bp_crisis", "Hypertensive crisis",
            f"Blood pressure {reading.systolic:g}/{reading.diastolic:g} mmHg",
            source={"type": "bp_reading", "id": str(reading.id)}, raised_by=principal,
            data={"systolic": reading.systolic, "diastolic": reading.diastolic, "reading_id": str(reading.id)})

    async def on_vital_event(self, event: Any) -> None:
        if event.severity == "critical" and event.phase == "started":
            await self.raise_alert(event.patient_id, f"vital_{event.type}", f"Critical: {event.type}",
                                   source={"type": "vital_event", "id": str(event.id)}, data=event.detail)


def _alerts(request: web.Request) -> Alerts:
    alerts = services(request).alerts
    assert alerts is not None
    return alerts


async def rest_mine(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    before, limit = page_params(request)
    status = request.query.get("status")
    if status not in (None, "open", "acknowledged", "resolved"):
        raise ApiError("invalid_query", "status must be open, acknowledged or resolved", 422, {"field": "status"})
    return web.json_response(await _alerts(request).list(principal, None, status, before, limit, client_of(request)))


async def rest_patient(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    before, limit = page_params(request)
    return web.json_response(await _alerts(request).list(principal, request.match_info["patient_id"], None, before,
                                                         limit, client_of(request)))


async def rest_get(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    return web.json_response(await _alerts(request).get(principal, request.match_info["alert_id"],
                                                        client_of(request)))


def setup(app: web.Application) -> None:
    app.router.add_get("/api/alerts", rest_mine)
    app.router.add_get("/api/alerts/{alert_id}", rest_get)
    app.router.add_get("/api/patients/{patient_id}/alerts", rest_patient)
