"""Claiming doses in the store, the one way every part of the scheduler (and the medicine box) takes work:
a conditional update marks the doses matching a query as this process's (each dose changes state, or gets an
owner, once: no other process can match it after), then the doses are read back by id. Bulk updates go by
ids found through an index, in batches (the embedded store's ``update_many`` scans the collection for any
other filter), the query repeated so they stay conditional."""

from __future__ import annotations

import os
import uuid
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from server.meds.documents import DoseEvent

BATCH = 500


class DoseClaims:
    def __init__(self) -> None:
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    @property
    def doses(self) -> AsyncCollection[Any]:
        return DoseEvent.get_pymongo_collection()

    def token(self) -> str:
        """A claim's mark: this process and a fresh id."""
        return f"{self.owner}:{uuid.uuid4().hex}"

    async def matching(self, query: dict[str, Any], limit: int = BATCH) -> list[Any]:
        return [d["_id"] async for d in self.doses.find(query, {"_id": 1}).limit(limit)]

    async def update_where(self, query: dict[str, Any], update: dict[str, Any]) -> int:
        """``update_many`` in batches by ids; returns how many doses changed."""
        total = 0
        while ids := await self.matching(query):
            total += (await self.doses.update_many({"_id": {"$in": ids}, **query}, update)).modified_count
            if len(ids) < BATCH:
                break
        return total

    async def claim(self, query: dict[str, Any], update: dict[str, Any], owner: str = "lease_owner",
                    limit: int = BATCH) -> tuple[str, list[dict[str, Any]]]:
        """Mark up to ``limit`` doses matching ``query`` as this claim's (``owner`` field set to its token) with
        ``update``, and return the token and the doses."""
        token = self.token()
        ids = await self.matching(query, limit)
        if not ids:
            return token, []
        update = {**update, "$set": {**update.get("$set", {}), owner: token}}
        await self.doses.update_many({"_id": {"$in": ids}, **query}, update)
        return token, await self.doses.find({"_id": {"$in": ids}, owner: token}).to_list(None)
