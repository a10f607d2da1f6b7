"""Notifications: every alert, reminder, missed call, disconnected sensor or link request a user
is told about is a persisted document first, then pushed live (``notification:new``) to every
connected device of the user. Users page through them, count the unread, mark them read and
delete them (``api.py``: over Socket.IO or REST). Push delivery to users with no connected device hangs
off ``Notifications.pushers`` (callables run in the background, never blocking live delivery)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from beanie import PydanticObjectId

from server.alerts.documents import Notification, Urgency
from server.care.access import memberships
from server.core.background import Background
from server.core.documents import utcnow
from server.core.errors import not_found
from server.core.identity import as_object_id
from server.core.ports import Broadcaster, Online
from server.infra.group_commit import COMMITS

log = logging.getLogger(__name__)
# A pusher gets the notifications of users who had no connected socket when they were raised.
Pusher = Callable[[list[Notification]], Awaitable[None]]


async def mine(user_id: PydanticObjectId, unread_only: bool = False) -> dict[str, Any]:
    """A user's notifications (not deleted); only the unread ones if asked. One about a patient shows while the
    user is that patient or on their care team: a member whose link was revoked no longer sees the patient's."""
    patients = [user_id, *[link.patient_id for link in await memberships(user_id)]]
    return {"user_id": user_id, "deleted_at": None, "$or": [{"patient_id": None}, {"patient_id": {"$in": patients}}],
            **({"read_at": None} if unread_only else {})}


class Notifications:
    """The ``Notifier`` (and ``NotificationLookup``) of ``server.core.ports``."""

    def __init__(self, broadcaster: Broadcaster, online: Online) -> None:
        self.out = broadcaster
        self.online = online  # who has a connected socket, in any process
        self.pushers: list[Pusher] = []
        self.background = Background()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self.background.stop()

    async def notify(self, user_ids: Iterable[PydanticObjectId | str], kind: str, title: str, body: str = "", *,
                     patient_id: PydanticObjectId | str | None = None, data: dict[str, Any] | None = None,
                     urgency: Urgency = "normal", live: bool = True) -> list[Notification]:
        """Persist one notification per user, then push it live (``live=False``: the caller already reached
        the connected devices with its own event, e.g. ``alert:new``); hand the offline users' to the pushers."""
        pid = PydanticObjectId(patient_id) if patient_id is not None else None
        docs = [Notification(id=PydanticObjectId(), user_id=PydanticObjectId(uid), kind=kind, title=title, body=body,
                             urgency=urgency, patient_id=pid, data=data or {})
                for uid in dict.fromkeys(str(u) for u in user_ids)]
        if not docs:
            return []
        await COMMITS.insert_documents(docs, bulk=kind == "reminder",
                                       urgent=urgency in ("high", "critical"))
        offline: list[Notification] = []
        for doc in docs:
            if live:
                await self.out.to_user(doc.user_id, "notification:new", doc.public())
            if not await self.online.user_online(doc.user_id):
                offline.append(doc)
        if offline and self.pushers:
            self.background.spawn(self._push(offline))
        return docs

    async def _push(self, docs: list[Notification]) -> None:
        for pusher in self.pushers:
            try:
                await pusher(docs)
            except Exception:
                log.exception("push delivery failed")

    # --- reading ------------------------------------------------------------------------------------

    @staticmethod
    async def unread(user_id: PydanticObjectId) -> int:
        return await Notification.find(await mine(user_id, unread_only=True)).count()

    @staticmethod
    async def notified(user_id: Any, kind: str, data: dict[str, Any]) -> bool:
        query = {"user_id": PydanticObjectId(user_id), "kind": kind, **{f"data.{k}": v for k, v in data.items()}}
        return await Notification.find(query).count() > 0

    @staticmethod
    async def mark_read(user_id: PydanticObjectId, notification_id: str | None) -> int:
        """One notification (not found if it is not the user's), or all of the user's when None."""
        query = await mine(user_id, unread_only=True)
        if notification_id is not None:
            query["_id"] = as_object_id(notification_id, "id")
            if await Notification.find({**await mine(user_id), "_id": query["_id"]}).count() == 0:
                raise not_found("notification")
        result = await Notification.get_pymongo_collection().update_many(query, {"$set": {"read_at": utcnow()}})
        return result.modified_count

    @staticmethod
    async def delete(user_id: PydanticObjectId, notification_id: str) -> None:
        result = await Notification.get_pymongo_collection().update_one(
            {**await mine(user_id), "_id": as_object_id(notification_id, "id")}, {"$set": {"deleted_at": utcnow()}})
        if result.modified_count == 0:
            raise not_found("notification")
