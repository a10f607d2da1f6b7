"""The emergency channel's caps per patient per UTC day: alerts raised on demand (triage) and calls of the
emergency contacts' webhook. The count lives in the store (``DailyCount``, one atomic increment per attempt),
so the cap holds across processes and parallel requests, and attempts past it stay counted for the operator
(for ``DailyCount.KEPT_DAYS``, then the store drops the day's count: the collection does not grow forever)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from server.alerts.documents import DailyCount


async def count_one(what: str, patient_id: Any, now: datetime) -> int:
    """One more ``what`` for the patient today; the day's count, this one included."""
    key = f"{what}:{patient_id}:{now.date().isoformat()}"
    expires = datetime(now.year, now.month, now.day, tzinfo=now.tzinfo) + timedelta(days=DailyCount.KEPT_DAYS)
    try:
        doc = await DailyCount.get_pymongo_collection().find_one_and_update(
            {"_id": key}, {"$inc": {"times": 1}, "$setOnInsert": {"expires_at": expires}}, upsert=True,
            return_document=ReturnDocument.AFTER)
    except DuplicateKeyError:  # two first attempts of the day at once: the other created it; count on it
        doc = await DailyCount.get_pymongo_collection().find_one_and_update(
            {"_id": key}, {"$inc": {"times": 1}}, return_document=ReturnDocument.AFTER)
    return int(doc["times"])


def until_tomorrow(now: datetime) -> int:
    """Seconds until the next UTC day, when the caps start again."""
    tomorrow = datetime(now.year, now.month, now.day, tzinfo=now.tzinfo) + timedelta(days=1)
    return max(1, int((tomorrow - now).total_seconds()) + 1)
