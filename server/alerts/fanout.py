"""Reaching an alert's recipients: every connected device of every recipient, in whichever process holds
its socket, each socket at most once per push (the push travels on the control bus; push keys
``<alert>`` or ``<alert>/<level>`` are remembered per socket); a device that connects gets the open
alerts it has not confirmed, oldest first; and a stored notification per recipient, which is also pushed
to the devices of recipients with none connected."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol

from beanie import PydanticObjectId
from beanie.operators import In

from server.alerts.documents import Alert, AlertDelivery
from server.care.access import care_team, patients_of
from server.core.background import Background
from server.core.identity import Principal
from server.core.ports import Broadcaster, Notifier
from server.infra.pubsub import ControlBus

REDELIVER_LIMIT = 200  # open alerts sent to a connecting device at most (oldest first)
SENT_PER_SOCKET = 512  # push keys remembered per socket (no duplicate pushes to one socket)


class Sockets(Protocol):
    """This process's sockets, as the Socket.IO adapter knows them (``api.py`` hands it over)."""

    def user_sids(self, user_id: Any) -> list[str]:
        """This process's sockets of one user."""

    def device_id(self, sid: str) -> str | None:
        """The app installation a socket belongs to (receipts are kept per device)."""

    def connected(self, sid: str) -> bool:
        """The socket is still connected to this process."""

    def ready(self, sid: str) -> bool:
        """Its connect handshake has completed, so what is emitted to it reaches it."""


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


class Fanout:
    def __init__(self, bus: ControlBus, broadcaster: Broadcaster, notifier: Notifier | None,
                 background: Background) -> None:
        self.bus = bus
        self.out = broadcaster
        self.notifier = notifier  # a notification too, pushed to recipients with no connected device
        self.background = background
        self.sent = SentKeys()
        self.sockets: Sockets | None = None
        bus.on("alert_push", self._apply)

    def attach(self, sockets: Sockets) -> None:
        self.sockets = sockets

    async def push(self, event: str, data: dict[str, Any], alert: Alert, user_ids: Iterable[Any], key: str,
                   team: set[PydanticObjectId] | None = None) -> None:
        """To every connected device of those of ``user_ids`` still on the patient's care team, in every process
        (``team``: the care team as the caller has just read it, not read again)."""
        users = await self.on_team(alert, user_ids, team)
        await self.bus.publish("alert_push", event=event, data=data, users=[str(u) for u in users], key=key)

    @staticmethod
    async def on_team(alert: Alert, user_ids: Iterable[Any],
                      team: set[PydanticObjectId] | None = None) -> list[PydanticObjectId]:
        """Those of ``user_ids`` on the alert's patient's care team now: a recipient whose link has ended since
        the alert was raised hears no more of it (nor of any alert of the patient's)."""
        if team is None:
            team = {link.member_id for link in await care_team(alert.patient_id)}
        return [uid for uid in (PydanticObjectId(u) for u in user_ids) if uid in team]

    async def _apply(self, msg: dict[str, Any]) -> None:
        if self.sockets is None:
            return
        event, data, key = msg["event"], msg["data"], msg["key"]
        for user_id in msg["users"]:
            for sid in self.sockets.user_sids(user_id):
                await self._send(sid, event, data, key)

    async def _send(self, sid: str, event: str, data: dict[str, Any], key: str) -> None:
        if self.sent.first_time(sid, f"{event}/{key}"):
            await self.out.to_room(sid, event, data)

    async def notify(self, alert: Alert, user_ids: list[PydanticObjectId],
                     team: set[PydanticObjectId] | None = None) -> None:
        """A notification per recipient, in their language; not live: their connected devices got the alert."""
        user_ids = await self.on_team(alert, user_ids, team) if user_ids else []
        if self.notifier is not None and user_ids:
            await self.notifier.notify(
                user_ids, "alert", alert.title_text or alert.title, alert.body_text or alert.body,
                patient_id=alert.patient_id, urgency=alert.urgency,
                data={"alert_id": str(alert.id), "level": alert.level}, live=False)

    # --- devices connecting and leaving ------------------------------------------------------------------

    async def on_connect(self, sid: str, principal: Principal) -> None:
        if principal.role in ("caregiver", "clinician"):
            self.background.spawn(self._redeliver(sid, principal))

    async def on_disconnect(self, sid: str) -> None:
        self.sent.forget(sid)

    async def _redeliver(self, sid: str, principal: Principal) -> None:
        """Every open alert this device has not confirmed, oldest first."""
        sockets = self.sockets
        device = sockets.device_id(sid) if sockets is not None else None
        if sockets is None or device is None:
            return
        for _ in range(50):  # the connect handshake completes after the connect hooks
            if sockets.ready(sid):
                break
            await asyncio.sleep(0.01)
        linked = await patients_of(principal)  # not for patients whose link has ended since
        # On recipient_open: the recipient's open alerts; those of patients still linked kept here.
        kept = set(linked)
        pending = [a for a in await Alert.find({"recipient_ids": principal.user_id, "status": "open"})
                   .sort(+Alert.raised_at, +Alert.id).to_list() if a.patient_id in kept][:REDELIVER_LIMIT]
        if not pending:
            return
        keys = [AlertDelivery.key(a.id, principal.user_id, device) for a in pending]
        confirmed = {d.alert_id for d in await AlertDelivery.find(In(AlertDelivery.id, keys)).to_list()}
        for alert in (a for a in pending if a.id not in confirmed):
            if not sockets.connected(sid):
                return
            await self._send(sid, "alert:new", alert.push(), str(alert.id))
