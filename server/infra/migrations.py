"""Ordered, idempotent data migrations, recorded in the ``migrations`` collection.

Run by ``healthmate migrate`` and at every start-up. A lock document keeps two processes
starting together from running the same migration twice. Index changes are declared on
the documents and applied by ``init_beanie`` before migrations run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from beanie import Document
from pydantic import Field
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure

from server.core.documents import StoredDocument, utcnow
from server.infra.bulk import insert_new

log = logging.getLogger(__name__)


class MigrationRecord(StoredDocument):
    """One applied migration; ``id`` is its name."""

    id: str  # type: ignore[assignment]
    applied_at: datetime = Field(default_factory=utcnow)
    duration_ms: float = 0.0

    class Settings:
        name = "migrations"


Migration = Callable[[AsyncDatabase], Awaitable[None]]


async def _backfill_schema_version(db: AsyncDatabase) -> None:
    """Documents written before schema versions existed are version 1."""
    for name in ("users", "auth_sessions", "links", "link_codes", "audit"):
        await db[name].update_many({"schema_version": {"$exists": False}}, {"$set": {"schema_version": 1}})


async def _lowercase_emails(db: AsyncDatabase) -> None:
    """Emails are unique case-insensitively: normalise any stored with capitals."""
    async for doc in db.users.find({"email": {"$regex": "[A-Z]"}}, {"email": 1}):
        await db.users.update_one({"_id": doc["_id"]}, {"$set": {"email": doc["email"].strip().lower()}})


async def _unverified_clinicians(db: AsyncDatabase) -> None:
    """Clinicians who declared themselves at registration, before organisations vouched for clinicians, are
    unverified: they act with a caregiver's powers, and their care-team links say so, until an organisation
    counts them as a member (``server.care.orgs``)."""
    ids = [doc["_id"] async for doc in db.users.find({"role": "clinician", "verified": {"$ne": True}}, {"_id": 1})]
    await db.users.update_many({"_id": {"$in": ids}}, {"$set": {"verified": False, "suspended": False}})
    await db.links.update_many({"member_id": {"$in": ids}, "member_role": "clinician"},
                               {"$set": {"member_role": "caregiver"}})


async def _box_battery_percent(db: AsyncDatabase) -> None:
    """Medicine boxes reported their battery as 0-1 in ``box:hello`` while every other device (and
    ``device:heartbeat``) says percent: a box's stored fraction becomes a percent (one unit everywhere)."""
    boxes = [doc["_id"] async for doc in db.devices.find({"kind": "medicine_box"}, {"_id": 1})]
    for name in ("devices", "medicine_boxes"):
        async for doc in db[name].find({"_id": {"$in": boxes}, "battery": {"$lte": 1}}, {"battery": 1}):
            await db[name].update_one({"_id": doc["_id"], "battery": doc["battery"]},
                                      {"$set": {"battery": round(doc["battery"] * 100, 1)}})


async def _dose_claims(db: AsyncDatabase) -> None:
    """A claim of due doses was a lease (``due_lease_until``) and a "delivered" mark (``due_pushed_at``) on each
    dose; it is now one ``dose_claims`` document a batch. Claims in flight become such documents, their lease
    kept (taking the notifications if they had: ``reminder_lease_until``), and the old index goes."""
    claims: dict[str, dict[str, object]] = {}
    async for d in db.dose_events.find({"state": "reminded", "due_pushed_at": None, "due_owner": {"$type": "string"},
                                        "due_lease_until": {"$type": "date"}}):
        claim = claims.setdefault(d["due_owner"], {"_id": d["due_owner"], "schema_version": 1, "owner": "migrated",
                                                  "lease_until": d["due_lease_until"], "notes": False, "pushed": False})
        claim["lease_until"] = max(claim["lease_until"], d["due_lease_until"])  # type: ignore[type-var]
        claim["notes"] = claim["notes"] or d.get("reminder_lease_until") is not None
    for claim in claims.values():
        with contextlib.suppress(DuplicateKeyError):
            await db.dose_claims.insert_one(claim)
    with contextlib.suppress(OperationFailure):
        await db.dose_events.drop_index("due_lease")


async def _unindexed_owners(db: AsyncDatabase) -> None:
    """A claim's doses are read back and given back by their ``_id`` range (``claimed_by``), so the owner fields'
    indexes go: each index of ``dose_events`` cost every update of a dose about 0.1 ms of the embedded store."""
    for name in ("lease_owner", "due_owner", "box_owner"):
        with contextlib.suppress(OperationFailure):
            await db.dose_events.drop_index(name)


async def _page_indexes(db: AsyncDatabase) -> None:
    """A page of a history asks for a span of ``_id`` (``cursor_page``): the indexes replaced by ones ending with
    ``_id`` go (each index costs every write of its collection): a patient's readings not deleted on
    ``patient_live`` (was ``patient_recent``), a user's unread notifications on ``user_unread_recent`` (was
    ``user_unread``), a recipient's alerts by status on ``recipient_status_recent`` (was ``recipient_status``)."""
    for collection, name in (("bp_readings", "patient_recent"), ("notifications", "user_unread"),
                             ("alerts", "recipient_status")):
        with contextlib.suppress(OperationFailure):
            await db[collection].drop_index(name)


MIGRATIONS: list[tuple[str, Migration]] = [
    ("0001_backfill_schema_version", _backfill_schema_version),
    ("0002_lowercase_emails", _lowercase_emails),
    ("0003_unverified_clinicians", _unverified_clinicians),
    ("0004_box_battery_percent", _box_battery_percent),
    ("0005_dose_claims", _dose_claims),
    ("0006_unindexed_owners", _unindexed_owners),
    ("0007_page_indexes", _page_indexes),
]


async def _acquire_lock(db: AsyncDatabase, owner: str, ttl_s: float = 120) -> None:
    locks = db["locks"]
    while True:
        now = utcnow()
        try:
            await locks.insert_one({"_id": "migrations", "owner": owner, "until": now + timedelta(seconds=ttl_s)})
            return
        except DuplicateKeyError:
            # Take over a lock whose holder died.
            res = await locks.find_one_and_update(
                {"_id": "migrations", "until": {"$lt": now}},
                {"$set": {"owner": owner, "until": now + timedelta(seconds=ttl_s)}},
            )
            if res is not None:
                return
            await asyncio.sleep(0.2)


async def run_migrations(db: AsyncDatabase, moved: Sequence[type[Document]] = ()) -> list[str]:
    """Apply every migration not yet recorded, in order; return the names applied now. Then the documents of
    ``moved`` that are still in ``db`` while their class is bound to another store (a data dir from before the bulk
    store) go there: after the migrations, which may still rewrite them where they were."""
    owner = f"{socket.gethostname()}:{os.getpid()}"
    await _acquire_lock(db, owner)
    applied: list[str] = []
    try:
        done = {rec.id async for rec in MigrationRecord.find_all()}
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            started = time.perf_counter()
            await fn(db)
            await MigrationRecord(id=name, duration_ms=(time.perf_counter() - started) * 1000).insert()
            log.info("migration %s applied", name)
            applied.append(name)
        for document in moved:
            target = document.get_pymongo_collection()
            if target.database.client is not db.client:
                await move_collection(db[target.name], target)
    finally:
        await db["locks"].delete_one({"_id": "migrations", "owner": owner})
    return applied


async def move_collection(source: AsyncCollection[Any], target: AsyncCollection[Any], batch: int = 1000) -> int:
    """Every document of ``source`` copied into ``target`` (those already there kept), then ``source`` dropped: a
    move cut short (a crash) is taken up again by the next one, and nothing is dropped before all of it is durable
    where it goes. Returns how many documents were copied."""
    if await source.find_one({}, {"_id": 1}) is None:
        return 0
    copied = 0
    rows: list[dict[str, Any]] = []
    async for doc in source.find({}, sort=[("_id", 1)]):
        rows.append(doc)
        if len(rows) == batch:
            copied += await insert_new(target, rows)
            rows = []
    if rows:
        copied += await insert_new(target, rows)
    await source.drop()
    if copied:
        log.info("moved %d documents of %s to the bulk store", copied, source.name)
    return copied
