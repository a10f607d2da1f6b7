"""Notifications: every alert, reminder, missed call, disconnected sensor or link request a user
is told about is a persisted document first, then pushed live (``notification:new``) to every
connected device of the user. Users page through them, count the unread, mark them read and
delete them over Socket.IO or REST. Push delivery to users with no connected device hangs off
``Notifications.pushers`` (callables run in the background, never blocking live delivery)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from beanie import PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field
from pymongo import ASCENDING, DESCENDING, IndexModel

from server.core.documents import VersionedDocument, iso, utcnow
from server.core.errors import ApiError, not_found
from server.core.identity import as_object_id
from server.transport.http import cursor_page, page_params, require_principal, services
from server.transport.realtime import EventContext, Realtime

log = logging.getLogger(__name__)
Urgency = Literal["low", "normal", "high", "critical"]
# A pusher gets the notifications of users who had no connected socket when they were raised.
Pusher = Callable[[list["Notification"]], Awaitable[None]]


class Notification(VersionedDocument):
    user_id: PydanticObjectId
    kind: str = Field(max_length=40)
    title: str
    body: str = ""
    urgency: Urgency = "normal"
    patient_id: PydanticObjectId | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    read_at: datetime | None = None
    deleted_at: datetime | None = None

    class Settings:
        name = "notifications"
        indexes = [
            IndexModel([("user_id", ASCENDING), ("deleted_at", ASCENDING), ("_id", DESCENDING)], name="user_recent"),
            IndexModel([("user_id", ASCENDING), ("read_at", ASCENDING), ("deleted_at", ASCENDING)], name="user_unread"),
        ]

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "kind": self.kind, "title": self.title, "body": self.body,
                "urgency": self.urgency, "patient_id": str(self.patient_id) if self.patient_id else None,
                "data": self.data, "created_at": iso(self.created_at), "read_at": iso(self.read_at)}


def _mine(user_id: PydanticObjectId) -> dict[str, Any]:
    return {"user_id": user_id, "deleted_at": None}


class NotificationRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=64)


class MarkRead(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=64)  # one notification, or all when absent
    all: bool = False


class ListIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    before: str | None = Field(None, max_length=64)
    limit: int = Field(50, ge=1, le=200)
    unread_only: bool = False


class Notifications:
    def __init__(self, realtime: Realtime) -> None:
        self.rt = realtime
        self.pushers: list[Pusher] = []
        self._background: set[asyncio.Task[None]] = set()
        self._register()

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
        await Notification.insert_many(docs)
        offline: list[Notification] = []
        for doc in docs:
            if live:
                await self.rt.to_user(doc.user_id, "notification:new", doc.public())
            if not await self.rt.user_online(doc.user_id):
                offline.append(doc)
        if offline and self.pushers:
            task = asyncio.create_task(self._push(offline))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
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
        return await Notification.find({**_mine(user_id), "read_at": None}).count()

    @staticmethod
    async def page(user_id: PydanticObjectId, before: PydanticObjectId | None, limit: int,
                   unread_only: bool = False) -> dict[str, Any]:
        query = {**_mine(user_id), **({"read_at": None} if unread_only else {})}
        page = await cursor_page(Notification, query, before, limit, Notification.public)
        return {**page, "unread": await Notifications.unread(user_id)}

    @staticmethod
    async def mark_read(user_id: PydanticObjectId, notification_id: str | None) -> int:
        query = {**_mine(user_id), "read_at": None}
        if notification_id is not None:
            query["_id"] = as_object_id(notification_id, "id")
            if await Notification.find({**_mine(user_id), "_id": query["_id"]}).count() == 0:
                raise not_found("notification")
        result = await Notification.get_pymongo_collection().update_many(query, {"$set": {"read_at": utcnow()}})
        return result.modified_count

    @staticmethod
    async def delete(user_id: PydanticObjectId, notification_id: str) -> None:
        result = await Notification.get_pymongo_collection().update_one(
            {**_mine(user_id), "_id": as_object_id(notification_id, "id")}, {"$set": {"deleted_at": utcnow()}})
        if result.modified_count == 0:
            raise not_found("notification")

    # --- Socket.IO ----------------------------------------------------------------------------------

    def _register(self) -> None:
        rt = self.rt

        @rt.event("notifications:list", ListIn)
        async def _list(ctx: EventContext, body: ListIn) -> dict[str, Any]:
            before = as_object_id(body.before, "before") if body.before else None
            return await self.page(ctx.principal.user_id, before, body.limit, body.unread_only)

        @rt.event("notifications:unread-count")
        async def _unread(ctx: EventContext, _: None) -> dict[str, Any]:
            return {"unread": await self.unread(ctx.principal.user_id)}

        @rt.event("notifications:mark-read", MarkRead)
        async def _read(ctx: EventContext, body: MarkRead) -> dict[str, Any]:
            if (body.id is None) == (not body.all):
                raise ApiError("invalid_payload", "Give either id or all: true", 422)
            marked = await self.mark_read(ctx.principal.user_id, body.id)
            return {"marked": marked, "unread": await self.unread(ctx.principal.user_id)}

        @rt.event("notifications:delete", NotificationRef)
        async def _delete(ctx: EventContext, body: NotificationRef) -> dict[str, Any]:
            await self.delete(ctx.principal.user_id, body.id)
            return {"deleted": body.id, "unread": await self.unread(ctx.principal.user_id)}

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()


# --- REST ---------------------------------------------------------------------------------------------

async def rest_list(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    before, limit = page_params(request)
    unread_only = request.query.get("unread") in ("1", "true")
    return web.json_response(await Notifications.page(principal.user_id, before, limit, unread_only))


async def rest_read(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    marked = await Notifications.mark_read(principal.user_id, request.match_info["notification_id"])
    return web.json_response({"marked": marked, "unread": await Notifications.unread(principal.user_id)})


async def rest_read_all(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    marked = await Notifications.mark_read(principal.user_id, None)
    return web.json_response({"marked": marked, "unread": 0})


async def rest_delete(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    await Notifications.delete(principal.user_id, request.match_info["notification_id"])
    return web.json_response({"deleted": request.match_info["notification_id"],
                              "unread": await services(request).notifications.unread(principal.user_id)})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/notifications", rest_list)
    app.router.add_post("/api/notifications/read-all", rest_read_all)
    app.router.add_post("/api/notifications/{notification_id}/read", rest_read)
    app.router.add_delete("/api/notifications/{notification_id}", rest_delete)
