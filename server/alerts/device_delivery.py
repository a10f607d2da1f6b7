"""Per-device delivery of what matters: which registered devices of a user a stored notification is pushed to,
and when (the pushing itself is ``DevicePush``'s, the durable outbox).

- **Confirmed per device**: an alert's notification (confirmed by ``alert:received``), a due dose's reminder
  (``dose:received``) and an urgent notification (urgency high or critical: ``notification:received``). Each
  registered device (``PushToken``, per ``device_id``) of the user that has not confirmed it within
  ``alert_push_after_s`` is pushed it, whatever other sockets the user has open; a device with no connected
  socket is pushed it at once. A device that confirmed in time gets no push; neither does anyone once the
  alert is no longer open (acknowledged or resolved: someone is handling it). An escalation's notification
  (nobody acknowledged the alert) counts only confirmations made after it: a device confirms an alert once, so
  every registered device that already had it is pushed the escalation, louder (only one that first confirms
  the alert after the escalation, within the delay, is not).
- **The others**: pushed at once to each registered device with no connected socket, even while the user's other
  devices are connected.

The later check is durable and multi-process safe, kept in the store rather than in timers: a ``PushWatch`` per
notification (same id) is written *before* the notification, due ``alert_push_after_s`` later. Every process
polls for due watches (at most every second: an indexed query on ``due_at``), claims them with one conditional
update (the due time moves on by ``LEASE`` and the claim's token is stamped, so one process wins each), pushes,
and deletes them. A process that dies between claiming and deleting leaves them to be claimed again when the
lease runs out: a push is handed to the outbox at least once, under the notification's id as collapse id, so a
repeat never shows twice. A restart loses nothing (an in-memory timer would lose every pending check), and a
watch whose notification was never stored (the process died in between) is dropped."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from beanie import PydanticObjectId
from beanie.operators import In

from server.alerts.documents import (
    Alert,
    AlertDelivery,
    Confirmable,
    DeviceReceipt,
    Notification,
    PushToken,
    PushWatch,
)
from server.core.background import Background
from server.core.config import Settings
from server.core.documents import aware, by_ids, update_each, utcnow
from server.core.gather import Gathered
from server.core.ports import DevicePush, Online
from server.infra.bulk import insert_new

log = logging.getLogger(__name__)
BATCH = 200
LEASE = timedelta(seconds=30)  # a claimed watch not done by then (its process died) is claimed again
POLL_S = 1.0  # the longest wait before a due watch is looked at
Registered = dict[PydanticObjectId, set[str]]  # user -> device ids with a push registration


def escalated(note: Notification) -> bool:
    return note.kind == "alert" and int(note.data.get("level") or 0) > 0


def confirmation(note: Notification) -> tuple[Confirmable, str] | None:
    """What confirms ``note`` on a device, if each device must confirm it: (what, its id)."""
    if note.kind == "alert" and note.data.get("alert_id"):
        return "alert", str(note.data["alert_id"])
    if note.kind == "reminder" and note.data.get("dose_id"):
        return "dose", str(note.data["dose_id"])
    if note.urgency in ("high", "critical"):
        return "notification", str(note.id)
    return None


async def registered(user_ids: Iterable[PydanticObjectId]) -> Registered:
    found: Registered = defaultdict(set)
    users = list(set(user_ids))
    if users:
        rows = PushToken.get_pymongo_collection().find({"user_id": {"$in": users}}, {"user_id": 1, "device_id": 1})
        async for row in rows:
            found[row["user_id"]].add(row["device_id"])
    return found


class DeviceDelivery:
    """What ``Notifications`` hands each stored notification to; also the ``PushRegistrations`` of
    ``server.core.ports`` (the calls concern rings the registered devices)."""

    def __init__(self, settings: Settings, push: DevicePush, online: Online) -> None:
        self.push = push
        self.online = online
        self.after = timedelta(seconds=settings.alert_push_after_s)
        self.poll_s = min(POLL_S, settings.alert_push_after_s / 2)
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.background = Background()
        self._registered: Gathered[PydanticObjectId, Registered] = Gathered(registered)

    async def registered(self, user_ids: Iterable[PydanticObjectId]) -> Registered:
        """The users' registrations. Lookups asked in the same turn of the event loop share one query: a claim's
        batch of reminders is notified at once, patient by patient, and would otherwise cost a query each."""
        users = set(user_ids)
        if not users:
            return {}
        found = await self._registered(users)
        return {u: found[u] for u in users if u in found}

    async def start(self) -> None:
        self.background.spawn(self._run(), name="device-delivery")

    async def stop(self) -> None:
        await self.background.stop()

    async def registered_devices(self, user_id: Any) -> set[str]:
        uid = PydanticObjectId(user_id)
        return (await self.registered([uid])).get(uid, set())

    # --- a notification stored: its watch first, then at once to the devices with no socket -----------------

    async def watch(self, notes: list[Notification]) -> Registered:
        """Before ``notes`` are stored: a watch for each one every device must confirm (if its user has a registered
        device). The users' registrations, for ``push_now``."""
        devices = await self.registered(n.user_id for n in notes)
        due = utcnow() + self.after
        watches = [PushWatch(id=n.id, user_id=n.user_id, confirm=c[0], ref=c[1], due_at=due,
                             since=n.created_at if escalated(n) else None)
                   for n in notes if devices.get(n.user_id) and (c := confirmation(n)) is not None]
        if watches:
            await PushWatch.insert_many(watches)
        return devices

    async def push_now(self, notes: list[Notification], devices: Registered) -> None:
        """Each note to the registered devices of its user with no connected socket (none if that cannot be told:
        a watched note reaches them at its due time all the same)."""
        offline: dict[PydanticObjectId, list[str]] = {}
        for user in {n.user_id for n in notes if devices.get(n.user_id)}:
            live = await self.online.live_devices(user)
            if live is not None and (away := devices[user] - live):
                offline[user] = sorted(away)
        notes = [n for n in notes if n.user_id in offline]
        if not notes:
            return
        await self.push.push_notes(notes, offline)
        coll = PushWatch.get_pymongo_collection()
        for user, away in offline.items():  # not pushed to them again when the watch falls due
            watched = [n.id for n in notes if n.user_id == user and confirmation(n) is not None]
            if watched:
                await coll.update_many({"_id": {"$in": watched}}, {"$addToSet": {"pushed": {"$each": away}}})

    # --- receipts ----------------------------------------------------------------------------------------

    @staticmethod
    async def received(user_id: PydanticObjectId, ref: str, device_id: str) -> None:
        """This device has the dose or notification ``ref`` (a second receipt is ignored)."""
        doc = DeviceReceipt(id=DeviceReceipt.key(ref, user_id, device_id), ref=ref, user_id=user_id,
                            device_id=device_id)
        await insert_new(DeviceReceipt.get_pymongo_collection(), [doc.model_dump(by_alias=True)])

    # --- due watches ---------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                while await self.sweep(utcnow()) == BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("per-device push sweep failed")
            await asyncio.sleep(self.poll_s)

    async def sweep(self, now: datetime) -> int:
        """Claim up to ``BATCH`` due watches (one conditional update: another process's claim moved their due time
        on, so it cannot match), push each to the devices that still need it, and delete them."""
        coll = PushWatch.get_pymongo_collection()
        due = {"due_at": {"$lte": now}}
        ids = [w["_id"] async for w in coll.find(due, {"_id": 1}).sort("_id", 1).limit(BATCH)]
        if not ids:
            return 0
        token = f"{self.owner}:{uuid.uuid4().hex}"
        await update_each(coll, by_ids(ids, due), {"$set": {"owner": token, "due_at": now + LEASE}})  # (by_ids)
        watches = await PushWatch.find({"owner": token}).to_list()
        if watches:
            await self._push_due(watches)
            await coll.delete_many({"owner": token})
        return len(ids)

    async def _push_due(self, watches: list[PushWatch]) -> None:
        notes = {n.id: n for n in await Notification.find(
            In(Notification.id, [w.id for w in watches]), Notification.deleted_at == None).to_list()}  # noqa: E711
        devices = await registered(w.user_id for w in watches)
        confirmed = await _confirmed(watches)
        alerts = [PydanticObjectId(w.ref) for w in watches if w.confirm == "alert"]
        still_open = {str(a["_id"]) async for a in Alert.get_pymongo_collection().find(
            {"_id": {"$in": alerts}, "status": "open"}, {"_id": 1})} if alerts else set()
        groups: dict[frozenset[str], list[Notification]] = defaultdict(list)  # push_notes takes devices per user
        for w in watches:
            note = notes.get(w.id)
            if note is None or (w.confirm == "alert" and w.ref not in still_open):
                continue
            since = aware(w.since) if w.since is not None else None
            done = {d for d, at in confirmed.get((w.ref, w.user_id), {}).items() if since is None or aware(at) >= since}
            need = devices.get(w.user_id, set()) - done - set(w.pushed)
            if need:
                groups[frozenset(need)].append(note)
        for need, group in groups.items():
            await self.push.push_notes(group, {n.user_id: sorted(need) for n in group})


async def _confirmed(watches: list[PushWatch]) -> dict[tuple[str, PydanticObjectId], dict[str, datetime]]:
    """(what, user) -> the devices that confirmed it, and when."""
    found: dict[tuple[str, PydanticObjectId], dict[str, datetime]] = defaultdict(dict)
    alerts = list({PydanticObjectId(w.ref) for w in watches if w.confirm == "alert"})
    if alerts:
        for d in await AlertDelivery.find(In(AlertDelivery.alert_id, alerts)).to_list():
            found[(str(d.alert_id), d.user_id)][d.device_id] = d.received_at
    refs = list({w.ref for w in watches if w.confirm != "alert"})
    if refs:
        for r in await DeviceReceipt.find(In(DeviceReceipt.ref, refs)).to_list():
            found[(r.ref, r.user_id)][r.device_id] = r.received_at
    return found
