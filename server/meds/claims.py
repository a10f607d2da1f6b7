"""Claiming doses in the store, the one way every part of the scheduler (and the medicine box) takes work:
a conditional update marks the doses matching a query as this process's (each dose changes state, or gets an
owner, once: no other process can match it after), then the doses are read back by their ids and the claim's
token (``claimed_by``: the owner fields have no index). Bulk updates go in batches: the ids matching the query
are found through an index, sorted, and the update selects them by id with the query repeated, so it stays
conditional; 50 ids a statement, all of a batch's statements one command (``by_ids``, ``update_each``: the
embedded store compares each candidate with every listed id, B² for B ids, and reads the whole collection for
an ``_id`` range, which the claims used until 2026-12-07: every dose ever planned, on each claim)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from server.core.documents import by_ids, claimed_by, find_each, update_each
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
        """The first ``limit`` ids matching ``query``, in order."""
        return [d["_id"] async for d in self.doses.find(query, {"_id": 1}).sort("_id", 1).limit(limit)]

    async def update_where(self, query: dict[str, Any], update: dict[str, Any]) -> int:
        """``update_many`` in batches by ids; returns how many doses changed."""
        total = 0
        while ids := await self.matching(query):
            total += await update_each(self.doses, by_ids(ids, query), update)
            if len(ids) < BATCH:
                break
        return total

    async def claim(self, query: dict[str, Any], update: dict[str, Any], owner: str = "lease_owner",
                    limit: int = BATCH, before: Callable[[str], Awaitable[Any]] | None = None,
                    ) -> tuple[str, list[dict[str, Any]]]:
        """Mark up to ``limit`` doses matching ``query`` as this claim's (``owner`` field set to its token) with
        ``update``, and return the token and the doses. ``before(token)``: awaited once there are doses to
        claim, before they are marked (what must be stored before a dose can carry the token)."""
        token = self.token()
        ids = await self.matching(query, limit)
        if not ids:
            return token, []
        if before is not None:
            await before(token)
        update = {**update, "$set": {**update.get("$set", {}), owner: token}}
        await update_each(self.doses, by_ids(ids, query), update)
        return token, await find_each(self.doses, claimed_by(owner, token, ids))

    async def release(self, owner: str, token: str, claimed: list[dict[str, Any]], changes: dict[str, Any]) -> None:
        """The doses ``claimed`` under ``token`` given back (``owner`` cleared) with ``changes``."""
        if claimed:
            await update_each(self.doses, claimed_by(owner, token, (d["_id"] for d in claimed)),
                              {"$set": {owner: None, **changes}})
