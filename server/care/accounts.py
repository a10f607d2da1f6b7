"""A user's own profile: read and change it (name, phone, time zone, language, avatar). Registering,
logging in and passwords are ``auth``'s."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from beanie import PydanticObjectId

from server.care import audit
from server.care.documents import User
from server.care.uploads import Uploads
from server.core.identity import Client, Principal
from server.core.ports import Broadcaster

TimezoneListener = Callable[[PydanticObjectId], Awaitable[None]]


async def languages(user_ids: Iterable[PydanticObjectId]) -> dict[PydanticObjectId, str]:
    """Each user's profile language, in one query (a user not found is left out)."""
    found = User.get_pymongo_collection().find({"_id": {"$in": list(user_ids)}}, {"language": 1})
    return {doc["_id"]: doc.get("language") or "en" async for doc in found}


class Profiles:
    def __init__(self, broadcaster: Broadcaster, uploads: Uploads) -> None:
        self.broadcaster = broadcaster
        self.uploads = uploads
        # A patient's time zone changed: e.g. the reminders are planned again on the patient's local clock.
        self.on_timezone_changed: list[TimezoneListener] = []

    async def get(self, principal: Principal) -> dict[str, Any]:
        user = await User.get(principal.user_id)
        assert user is not None  # authenticate() checked it exists
        return user.public()

    async def update(self, principal: Principal, changes: dict[str, Any], client: Client) -> dict[str, Any]:
        user = await User.get(principal.user_id)
        assert user is not None
        if changes.get("avatar_id") is not None:
            await self.uploads.require_own(principal.user_id, changes["avatar_id"], "avatar")
        moved = "timezone" in changes and changes["timezone"] != user.timezone
        if changes:
            await user.set(changes)
        patient_id = user.id if user.role == "patient" else None
        if moved and patient_id is not None:
            for listener in self.on_timezone_changed:
                await listener(patient_id)
        await audit.record("profile.update", principal=principal, patient_id=patient_id, client=client,
                           fields=sorted(changes))
        if patient_id is not None and changes:
            await self.broadcaster.to_patient(patient_id, "patient:updated", user.public())
        return user.public()
