"""Notifications: every alert, reminder, missed call, disconnected sensor or link request a user
is told about is a persisted document first, then pushed live (``notification:new``) to every
connected device of the user. Users page through them, count the unread, mark them read and
delete them (``api.py``: over Socket.IO or REST). Which of the user's devices each one is pushed to, and when,
is ``delivery``'s (``server.alerts.device_delivery``: per device, handed to the durable push outbox after live
delivery, before ``notify`` returns)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from beanie import PydanticObjectId

from server.alerts.device_delivery import DeviceDelivery
from server.alerts.documents import Notification, Urgency
from server.care.access import memberships
from server.care.accounts import languages
from server.core.documents import utcnow
from server.core.errors import not_found
from server.core.i18n import Text, render
from server.core.identity import as_object_id
from server.core.ports import Broadcaster
from server.core.urgency import URGENCY
from server.infra.group_commit import COMMITS

log = logging.getLogger(__name__)


async def mine(user_id: PydanticObjectId) -> dict[str, Any]:
    """A user's notifications (not deleted), as the filter of a write (the patients checked by the store). One about
    a patient shows while the user is that patient or on their care team: a member whose link was revoked no longer
    sees the patient's."""
    # No $or: with an operator at its top, the embedded store reads every user's notifications.
    query, patients = await listing(user_id, unread_only=False)
    return {**query, "patient_id": {"$in": list(patients)}}


async def listing(user_id: PydanticObjectId, unread_only: bool) -> tuple[dict[str, Any], set[Any]]:
    """The user's notifications (the unread ones if asked) as the store's filter, on an index (ending with ``_id``:
    ``cursor_page`` reads a span of it), and the patients whose notifications the user sees, checked on what it
    finds: with their ``$in`` in the filter, the store read all of the user's notifications each time."""
    return ({"user_id": user_id, "deleted_at": None, **({"read_at": None} if unread_only else {})},
            set(await visible(user_id)))


async def visible(user_id: PydanticObjectId) -> list[PydanticObjectId | None]:
    """The patients whose notifications the user sees (None: about no patient)."""
    return [None, user_id, *[link.patient_id for link in await memberships(user_id)]]


class Notifications:
    """The ``Notifier`` (and ``NotificationLookup``) of ``server.core.ports``."""

    def __init__(self, broadcaster: Broadcaster, delivery: DeviceDelivery | None = None) -> None:
        self.out = broadcaster
        self.delivery = delivery  # pushes to the user's devices (none: no push)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def notify(self, user_ids: Iterable[PydanticObjectId | str], kind: str, title: str | Text,
                     body: str | Text = "", *, patient_id: PydanticObjectId | str | None = None,
                     data: dict[str, Any] | None = None, urgency: Urgency = "normal", live: bool = True,
                     push: bool = True) -> list[Notification]:
        """Persist one notification per user, its ``Text`` title and body rendered in the user's language, then
        send it live (``live=False``: the caller already reached the connected devices with its own event, e.g.
        ``alert:new``) and push it to the user's devices (``push=False``: the caller pushes its own way). What each
        device must confirm is watched before it is stored (``DeviceDelivery.watch``), so that no stored
        notification goes unwatched; what goes at once to the devices with no socket is in the push outbox when
        this returns."""
        pid = PydanticObjectId(patient_id) if patient_id is not None else None
        users = [PydanticObjectId(uid) for uid in dict.fromkeys(str(u) for u in user_ids)]
        langs = await languages(users) if users and (isinstance(title, Text) or isinstance(body, Text)) else {}
        texts = {lang: (render(title, lang), render(body, lang)) for lang in {*langs.values(), None}}
        docs = [Notification(id=PydanticObjectId(), user_id=uid, kind=kind, title=texts[langs.get(uid)][0],
                             body=texts[langs.get(uid)][1], urgency=urgency, patient_id=pid, data=data or {})
                for uid in users]
        if not docs:
            return []
        delivery = self.delivery if push else None
        devices = await delivery.watch(docs) if delivery is not None else {}
        urgent = urgency in ("high", "critical")
        await COMMITS.insert_documents(docs, urgent=urgent)
        if live:
            for doc in docs:
                if not urgent:
                    await URGENCY.give_way()  # an alert being raised goes first
                await self.out.to_user(doc.user_id, "notification:new", doc.public())
        if delivery is not None and devices:
            try:
                await delivery.push_now(docs, devices)
            except Exception:  # stored and sent live all the same; a watched one is pushed at its due time
                log.exception("push delivery failed")
        return docs

    # --- reading ------------------------------------------------------------------------------------

    @staticmethod
    async def unread(user_id: PydanticObjectId) -> int:
        query, patients = await listing(user_id, unread_only=True)
        cursor = Notification.get_pymongo_collection().find(query, {"patient_id": 1})
        return sum([d.get("patient_id") in patients async for d in cursor])

    @staticmethod
    async def notified(user_id: Any, kind: str, data: dict[str, Any]) -> bool:
        query = {"user_id": PydanticObjectId(user_id), "kind": kind, **{f"data.{k}": v for k, v in data.items()}}
        return await Notification.find(query).count() > 0

    @staticmethod
    async def mark_read(user_id: PydanticObjectId, notification_id: str | None) -> int:
        """One notification (not found if it is not the user's), or all of the user's when None."""
        query = await mine(user_id)
        if notification_id is not None:  # _id first: the embedded store looks that one up
            query = {"_id": as_object_id(notification_id, "id"), **query}
            if await Notification.find(query).count() == 0:
                raise not_found("notification")
        query["read_at"] = None
        result = await Notification.get_pymongo_collection().update_many(query, {"$set": {"read_at": utcnow()}})
        return result.modified_count

    @staticmethod
    async def delete(user_id: PydanticObjectId, notification_id: str) -> None:
        result = await Notification.get_pymongo_collection().update_one(
            {**await mine(user_id), "_id": as_object_id(notification_id, "id")}, {"$set": {"deleted_at": utcnow()}})
        if result.modified_count == 0:
            raise not_found("notification")
