"""A user's own profile: read and change it (name, phone, time zone, language, avatar). Registering,
logging in and passwords are ``auth``'s."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from beanie import PydanticObjectId

from server.care import audit
from server.care.documents import User
from server.care.uploads import Uploads
from server.core.documents import in_chunks
from server.core.gather import Gathered
from server.core.identity import Client, Principal
from server.core.ports import Broadcaster

TimezoneListener = Callable[[PydanticObjectId], Awaitable[None]]


LANGUAGE_TTL_S = 60.0  # a language changed through another process is used within this
_languages: dict[PydanticObjectId, tuple[float, str]] = {}  # user -> (read at, language), this process's


async def _read_languages(stale: set[PydanticObjectId]) -> None:
    now = time.monotonic()
    if len(_languages) > 100_000:
        _languages.clear()
    for chunk in in_chunks(stale):
        async for doc in User.get_pymongo_collection().find({"_id": {"$in": chunk}}, {"language": 1}):
            _languages[doc["_id"]] = (now, doc.get("language") or "en")


_read_stale: Gathered[PydanticObjectId, None] = Gathered(_read_languages)


async def languages(user_ids: Iterable[PydanticObjectId]) -> dict[PydanticObjectId, str]:
    """Each user's profile language (a user not found is left out): those not read in the last ``LANGUAGE_TTL_S``
    in one query, shared with the lookups asked in the same turn of the event loop: a claim's batch of reminders,
    notified patient by patient, costs one query, not one per patient."""
    ids, now = list(user_ids), time.monotonic()
    stale = [u for u in ids if u not in _languages or now - _languages[u][0] >= LANGUAGE_TTL_S]
    if stale:
        await _read_stale(stale)
    return {u: _languages[u][1] for u in ids if u in _languages}


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
            _languages.pop(user.id, None)  # this process's notifications use the new language at once
        patient_id = user.id if user.role == "patient" else None
        if moved and patient_id is not None:
            for listener in self.on_timezone_changed:
                await listener(patient_id)
        await audit.record("profile.update", principal=principal, patient_id=patient_id, client=client,
                           fields=sorted(changes))
        if patient_id is not None and changes:
            await self.broadcaster.to_patient(patient_id, "patient:updated", user.public())
        return user.public()
