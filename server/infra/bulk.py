"""Inserting documents that may be there already (planned or recorded by another process, or by this one
earlier): the new ones are written, the duplicates skipped, any other write error raised."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

DUPLICATE_KEY = 11000


async def insert_new(collection: AsyncCollection[Any], rows: list[Mapping[str, Any]]) -> int:
    """Insert ``rows`` (unordered: one duplicate does not stop the others); return how many were new."""
    if not rows:
        return 0
    try:
        return len((await collection.insert_many(rows, ordered=False)).inserted_ids)
    except BulkWriteError as exc:
        if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
            raise
        return int(exc.details.get("nInserted", 0))
