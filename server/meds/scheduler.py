"""The durable dose scheduler: every due dose is a stored ``DoseEvent`` that moves
scheduled → reminded → confirmed | missed, fired once across server processes (pushed again only
if the process firing it died before it was done).

Planning: each active, scheduled medication has its doses written ahead (``HORIZON``) from its
schedule and the patient's time zone (``server.meds.dose_times``); a dose's slot (medication + local
date and time) is unique in the store, so any number of processes may plan the same doses.

Firing: at due time a process claims the due doses with one conditional update in the store
(scheduled → reminded, stamped with its token and a push lease, ``due_lease_until``; a dose can
leave "scheduled" only once, so no two processes claim it), pushes ``dose:due`` to the patient's
room, tells the box (``on_due`` hooks), and marks the doses delivered (``due_pushed_at``) at its next
sweep (within a second; at shutdown too).
Should a process die before that, its doses' lease (``LEASE``) runs out and another process (or
the restarted one) claims them again, conditionally, and pushes them again if they are still
waiting (reminded, neither confirmed nor missed): ``dose:due`` is delivered at least once, and
clients tell a repeat by the dose's ``id``; the box is commanded once per dose (``on_due`` skips a
dose already commanded, whose resends the box schedule carries on).

The ``reminder`` notification is sent by a separate loop that claims reminded, unnotified doses the
same way (leased, ``reminder_lease_until``), so its cost (a stored notification each) never delays
a reminder. A notification its process claimed and did not finish before the lease ran out is
claimed again and sent, unless the dead process had already stored it.

A dose not confirmed within the grace window (``HEALTHMATE_DOSE_GRACE_S``, 30 min) is marked
missed (a conditional update, so once), and the patient's caregivers are notified; that
notification is claimed with a lease (``LEASE``) and sent again if its process died before
finishing.

Catch-up after downtime: the loop applies the same rules to whatever it finds at start-up.
Doses due while the server was down whose grace window has not ended are reminded at once (late,
``late_ms`` says by how much); those whose grace window ended are marked missed and caregivers
notified. Doses that would have been planned during the outage are planned back to ``LOOKBACK``
(24 h) before now and go through the same rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from aiohttp import web
from beanie import PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import BulkWriteError

from server.alerts.notifications import Notification
from server.care.access import require_patient
from server.care.documents import User
from server.core.documents import VersionedDocument, aware, iso, utcnow
from server.core.errors import ApiError, forbidden, not_found
from server.core.identity import as_object_id
from server.meds.dose_times import dose_times, parse_hhmm
from server.meds.medications import WRITERS, Medication, Medications, care_team, notify
from server.transport.http import client_of, require_principal
from server.transport.realtime import EventContext

if TYPE_CHECKING:
    from server.services import Services

log = logging.getLogger(__name__)
DoseState = Literal["scheduled", "reminded", "confirmed", "missed"]
HORIZON = timedelta(hours=36)  # doses are planned this far ahead
LOOKBACK = timedelta(hours=24)  # after downtime, doses are planned back this far
PLAN_EVERY = timedelta(minutes=10)
LEASE = timedelta(minutes=5)  # a claim not completed by then (its process died) is taken back
EARLY = timedelta(hours=1)  # a dose may be confirmed this long before it is due
POLL_S = 1.0  # longest sleep: doses planned by another process are noticed within this
BATCH = 500
NOTIFY_BATCH = 32
UNNOTIFIED = {"state": "reminded", "reminder_notified_at": None}
MAX_WEEKS = 52
REPLAN_ON = frozenset({"schedule", "drawer", "name", "dose"})  # what a planned dose carries


class DoseEvent(VersionedDocument):
    patient_id: PydanticObjectId
    medication_id: PydanticObjectId
    slot: str  # the planned local date and time, "2026-03-08T02:30": unique per medication
    timezone: str
    due_at: datetime  # UTC
    medication_name: str
    dose: str | None = None
    drawer: int | None = None
    state: DoseState = "scheduled"
    reminded_at: datetime | None = None
    confirmed_at: datetime | None = None
    confirmed_via: str | None = None  # app | box
    confirmed_by: PydanticObjectId | None = None
    due_owner: str | None = None  # the process pushing dose:due, until due_lease_until
    due_lease_until: datetime | None = None
    due_pushed_at: datetime | None = None  # dose:due pushed and the box told
    reminder_notified_at: datetime | None = None  # the reminder notification claimed (sent, once its lease is cleared)
    reminder_lease_until: datetime | None = None
    missed_at: datetime | None = None
    missed_notified_at: datetime | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    box_owner: str | None = None
    box_attempts: int = 0
    box_next_at: datetime | None = None  # the next time the box is (re)commanded, while unacknowledged
    box_acked_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "dose_events"
        indexes = [
            IndexModel([("medication_id", ASCENDING), ("slot", ASCENDING)], unique=True, name="slot_unique"),
            IndexModel([("state", ASCENDING), ("due_at", ASCENDING)], name="state_due"),
            IndexModel([("state", ASCENDING), ("missed_notified_at", ASCENDING)], name="missed_unnotified"),
            IndexModel([("state", ASCENDING), ("reminder_notified_at", ASCENDING)], name="reminded_unnotified"),
            IndexModel([("state", ASCENDING), ("lease_until", ASCENDING)], name="state_lease"),
            IndexModel([("lease_owner", ASCENDING)], name="lease_owner"),
            IndexModel([("box_owner", ASCENDING)], name="box_owner"),
            IndexModel([("patient_id", ASCENDING), ("due_at", DESCENDING)], name="patient_due"),
        ]


def dose_json(d: dict[str, Any]) -> dict[str, Any]:
    """A dose as clients see it, from its stored form."""
    due = aware(d["due_at"])
    return {"id": str(d["_id"]), "patient_id": str(d["patient_id"]), "medication_id": str(d["medication_id"]),
            "medication_name": d["medication_name"], "dose": d.get("dose"), "drawer": d.get("drawer"),
            "planned_at": d["slot"], "timezone": d["timezone"], "due_at": iso(due), "state": d["state"],
            "reminded_at": iso(d.get("reminded_at")), "confirmed_at": iso(d.get("confirmed_at")),
            "confirmed_via": d.get("confirmed_via"), "missed_at": iso(d.get("missed_at"))}


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except Exception:
        return ZoneInfo("UTC")


class ConfirmIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(max_length=64)
    dose_id: str = Field(max_length=64)


DueHook = Callable[[list[dict[str, Any]]], Awaitable[None]]
ConfirmHook = Callable[[dict[str, Any]], Awaitable[None]]
Tick = Callable[[datetime], Awaitable[None]]


class Scheduler:
    def __init__(self, svc: Services, meds: Medications) -> None:
        self.svc = svc
        self.meds = meds
        self.grace = timedelta(seconds=svc.settings.dose_grace_s)
        # Looking for what dead processes left is a scan of the waiting doses: not every pass.
        self.recover_every = timedelta(seconds=svc.settings.dose_recover_s)
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.on_due: list[DueHook] = []  # the medicine box commands its drawers
        self.on_confirmed: list[ConfirmHook] = []
        self.ticks: list[Tick] = []  # extra work each pass (box command retries)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._notifier: asyncio.Task[None] | None = None
        self._reminded = asyncio.Event()
        self._planned_at: datetime | None = None
        self._recovered_at: datetime | None = None
        self._swept_at: datetime | None = None
        self._firing = False
        self._next_due_at = utcnow()
        self._delivered: dict[str, list[Any]] = {}  # claim token -> doses delivered, marked at the next sweep
        meds.on_change.append(self.replan)
        svc.realtime.event("dose:confirm", ConfirmIn)(self._confirm)

    @property
    def doses(self) -> Any:
        return DoseEvent.get_pymongo_collection()

    # --- planning -----------------------------------------------------------------------------------

    async def plan(self, med: Medication, now: datetime, start: datetime | None = None) -> int:
        """Write the medication's doses due from ``start`` (or where planning stopped) to now + HORIZON."""
        schedule = med.plan()
        if med.archived_at is not None or schedule.as_needed or not schedule.times:
            return 0
        user = await User.get(med.patient_id)
        tzname = user.timezone if user else "UTC"
        begin = start or max(aware(med.planned_until or med.created_at), now - LOOKBACK)
        end = now + HORIZON
        rows = [DoseEvent(patient_id=med.patient_id, medication_id=med.id, slot=p.key, timezone=tzname,  # type: ignore[arg-type]
                          due_at=p.due, medication_name=med.name, dose=med.dose, drawer=med.drawer).model_dump(
                              by_alias=True, exclude={"id"})
                for p in dose_times([parse_hhmm(t) for t in schedule.times], zone(tzname), begin, end,
                                    days=schedule.days, first_day=schedule.start_date, last_day=schedule.end_date)]
        inserted = 0
        if rows:
            try:
                inserted = len((await self.doses.insert_many(rows, ordered=False)).inserted_ids)
            except BulkWriteError as exc:  # already planned (by us earlier, or another process)
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise
                inserted = exc.details.get("nInserted", 0)
        await Medication.get_pymongo_collection().update_one({"_id": med.id}, {"$max": {"planned_until": end}})
        if inserted:
            self._wake.set()
        return inserted

    async def replan(self, med: Medication, change: str, changes: dict[str, Any]) -> None:
        """What a dose carries changed: the doses not yet claimed are planned again from now."""
        if change not in ("created", "archived") and not REPLAN_ON & changes.keys():
            return
        await self._plan_again(med)

    async def replan_patient(self, patient_id: PydanticObjectId) -> None:
        """The patient's time zone changed: doses not yet claimed are planned again in the new zone."""
        async for med in Medication.find(Medication.patient_id == patient_id, Medication.archived_at == None):  # noqa: E711
            await self._plan_again(med)

    async def _plan_again(self, med: Medication) -> None:
        now = utcnow()
        await self.doses.delete_many({"medication_id": med.id, "state": "scheduled", "due_at": {"$gte": now},
                                      "lease_owner": None})
        await self.plan(med, now, start=now)

    async def plan_all(self, now: datetime) -> None:
        stale = {"$or": [{"planned_until": None}, {"planned_until": {"$lt": now + HORIZON - PLAN_EVERY}}]}
        due = Medication.find(Medication.archived_at == None, stale)  # noqa: E711
        async for med in due:
            try:
                await self.plan(med, now)
            except Exception:
                log.exception("planning %s failed", med.id)

    # --- the loop -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dose-scheduler")
        self._notifier = asyncio.create_task(self._notify_loop(), name="dose-reminder-notifications")

    async def stop(self) -> None:
        for task in (self._task, self._notifier):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(Exception):  # what is not marked is delivered again after LEASE
            await self._mark_delivered()

    def wake(self) -> None:
        """Run a pass now (new doses, or box commands to resend)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once(utcnow())
                delay = await self._until_next(utcnow())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler pass failed")
                delay = POLL_S
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def run_once(self, now: datetime) -> None:
        if self._planned_at is None or now - self._planned_at >= PLAN_EVERY:
            self._planned_at = now
            await self.plan_all(now)
        if self._recovered_at is None or now - self._recovered_at >= self.recover_every:
            self._recovered_at = now
            await self._recover(now)
            await self._redeliver(now)
            await self._renotify(now)
        if self._swept_at is None or now - self._swept_at >= timedelta(seconds=POLL_S):
            self._swept_at = now
            await self._mark_delivered()
            await self._mark_missed(now)
            await self._notify_missed(now)
        self._firing = True
        try:
            while await self._remind_due(utcnow()) == BATCH:
                pass
        finally:
            self._firing = False
        for tick in self.ticks:
            await tick(now)

    async def _until_next(self, now: datetime) -> float:
        soon = self.doses.find({"state": "scheduled", "due_at": {"$gt": now, "$lte": now + timedelta(seconds=POLL_S)}},
                               {"due_at": 1}).limit(1000)
        dues = [aware(d["due_at"]) async for d in soon]
        self._next_due_at = min(dues) if dues else now + timedelta(seconds=POLL_S)
        return max(0.0, (self._next_due_at - now).total_seconds())

    def token(self) -> str:
        return f"{self.owner}:{uuid.uuid4().hex}"

    async def _matching(self, query: dict[str, Any], limit: int = BATCH) -> list[Any]:
        return [d["_id"] async for d in self.doses.find(query, {"_id": 1}).limit(limit)]

    async def update_where(self, query: dict[str, Any], update: dict[str, Any]) -> int:
        """``update_many`` by ids found through an index, in batches (the embedded store's ``update_many``
        scans the collection for any other filter); ``query`` is repeated so it stays a conditional update."""
        total = 0
        while ids := await self._matching(query):
            total += (await self.doses.update_many({"_id": {"$in": ids}, **query}, update)).modified_count
            if len(ids) < BATCH:
                break
        return total

    async def claim(self, query: dict[str, Any], update: dict[str, Any], owner: str = "lease_owner",
                    limit: int = BATCH) -> tuple[str, list[dict[str, Any]]]:
        """Mark up to ``limit`` doses matching ``query`` as this process's with one conditional update (each
        dose changes state, or gets an owner, once: no other process can match it after) and return them."""
        token = self.token()
        ids = await self._matching(query, limit)
        if not ids:
            return token, []
        update = {**update, "$set": {**update.get("$set", {}), owner: token}}
        await self.doses.update_many({"_id": {"$in": ids}, **query}, update)
        return token, await self.doses.find({"_id": {"$in": ids}, owner: token}).to_list(None)

    async def _recover(self, now: datetime) -> None:
        """Claims whose process died (the lease ran out) go back to be taken again."""
        await self.update_where({"state": "missed", "lease_until": {"$lt": now}},
                                {"$set": {"missed_notified_at": None, "lease_owner": None, "lease_until": None}})

    async def _remind_due(self, now: datetime) -> int:
        """Claim the due doses by marking them reminded (one conditional write each: a dose goes from
        scheduled to reminded once, in whichever process gets there first), leased, then deliver them."""
        token, claimed = await self.claim(
            {"state": "scheduled", "due_at": {"$lte": now, "$gt": now - self.grace}},
            {"$set": {"state": "reminded", "reminded_at": now, "due_pushed_at": None, "due_lease_until": now + LEASE}},
            owner="due_owner")
        await self._deliver(token, claimed)
        return len(claimed)

    async def _redeliver(self, now: datetime) -> None:
        """Reminded doses whose claimer died before delivering them (the lease ran out): claimed again
        (a conditional update, so by one process) and delivered again."""
        token, claimed = await self.claim(
            {"state": "reminded", "due_pushed_at": None, "due_lease_until": {"$lt": now}},
            {"$set": {"due_lease_until": now + LEASE}}, owner="due_owner")
        if claimed:
            log.warning("pushing %d doses again whose process died before pushing them", len(claimed))
        await self._deliver(token, claimed)

    async def _deliver(self, token: str, claimed: list[dict[str, Any]]) -> None:
        """Push ``dose:due`` and tell the box; the doses are marked delivered at the next sweep (one write a
        second rather than one more per batch on the reminders' path)."""
        if not claimed:
            return
        for d in claimed:
            dose = dose_json(d)
            dose["late_ms"] = round((utcnow() - aware(d["due_at"])).total_seconds() * 1000)
            await self.svc.realtime.to_patient(d["patient_id"], "dose:due", dose)
        self._reminded.set()
        for hook in self.on_due:
            try:
                await hook(claimed)
            except Exception:
                log.exception("dose hook failed")
        self._delivered.setdefault(token, []).extend(d["_id"] for d in claimed)

    async def _mark_delivered(self) -> None:
        """Mark the doses delivered since the last sweep (those our claims still hold)."""
        done, self._delivered = self._delivered, {}
        if done:
            await self.doses.update_many(
                {"_id": {"$in": [i for ids in done.values() for i in ids]}, "due_owner": {"$in": list(done)}},
                {"$set": {"due_pushed_at": utcnow(), "due_owner": None, "due_lease_until": None}})

    async def _notify_loop(self) -> None:
        """Reminder notifications, apart from the firing loop so their cost never delays a reminder. Each
        is claimed by a conditional write on its dose first (so sent by one process only), in small batches
        that leave the store to the firing loop in between; a claim is leased, and taken again once its
        lease runs out unfinished (its process died)."""
        while True:
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._reminded.wait(), POLL_S)
                self._reminded.clear()
                while await self._notify_some() == NOTIFY_BATCH:
                    await self._yield_to_reminders()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reminder notifications failed")
                await asyncio.sleep(POLL_S)

    async def _yield_to_reminders(self) -> None:
        """The store is shared: while doses are being reminded or about to fall due, wait (up to 2 s)."""
        for _ in range(40):
            if not self._firing and self._next_due_at - utcnow() > timedelta(milliseconds=250):
                return
            await asyncio.sleep(0.05)

    async def _notify_some(self, query: dict[str, Any] = UNNOTIFIED, again: bool = False) -> int:
        """Claim and send up to NOTIFY_BATCH reminder notifications matching ``query`` (leased), then release."""
        now = utcnow()
        token, claimed = await self.claim(query, {"$set": {"reminder_notified_at": now,
                                                           "reminder_lease_until": now + LEASE}}, limit=NOTIFY_BATCH)
        await self._bounded([self._remind_patient(d, again) for d in claimed])
        if claimed:
            await self.doses.update_many({"_id": {"$in": [d["_id"] for d in claimed]}, "lease_owner": token},
                                         {"$set": {"lease_owner": None, "reminder_lease_until": None}})
        return len(claimed)

    async def _renotify(self, now: datetime) -> None:
        """Reminder notifications whose claimer died before sending them (the lease ran out)."""
        await self._notify_some({"state": "reminded", "reminder_lease_until": {"$lt": now}}, again=True)

    async def _remind_patient(self, d: dict[str, Any], again: bool = False) -> None:
        """The ``reminder`` notification; ``again`` (a dead process's claim): not if that process stored it."""
        if again and await Notification.find({"user_id": d["patient_id"], "kind": "reminder",
                                              "data.dose_id": str(d["_id"])}).count():
            return
        body = " · ".join(x for x in (d.get("dose"), f"drawer {d['drawer']}" if d.get("drawer") else None) if x)
        await notify(self.svc, [d["patient_id"]], "reminder", f"Time for {d['medication_name']}", body,
                     patient_id=d["patient_id"], data={"dose_id": str(d["_id"]), "due_at": iso(aware(d["due_at"]))})

    @staticmethod
    async def _bounded(jobs: list[Awaitable[Any]], width: int = 32) -> None:
        for i in range(0, len(jobs), width):
            await asyncio.gather(*jobs[i:i + width])

    async def _mark_missed(self, now: datetime) -> None:
        """Unconfirmed past the grace window: missed. A conditional update: once per dose."""
        for state in ("scheduled", "reminded"):
            await self.update_where({"state": state, "due_at": {"$lte": now - self.grace}},
                                    {"$set": {"state": "missed", "missed_at": now, "box_next_at": None}})

    async def _notify_missed(self, now: datetime) -> None:
        token, claimed = await self.claim({"state": "missed", "missed_notified_at": None},
                                          {"$set": {"missed_notified_at": now, "lease_until": now + LEASE}})
        if not claimed:
            return
        teams: dict[Any, list[PydanticObjectId]] = {}
        for d in claimed:
            if d["patient_id"] not in teams:
                teams[d["patient_id"]] = await care_team(d["patient_id"], ("caregiver",))
            await self.svc.realtime.to_patient(d["patient_id"], "dose:missed", dose_json(d))
        await self._bounded([
            notify(self.svc, teams[d["patient_id"]], "dose_missed", f"Missed dose: {d['medication_name']}",
                   f"Due {d['slot'].replace('T', ' ')} ({d['timezone']}), not confirmed",
                   patient_id=d["patient_id"], urgency="high",
                   data={"dose_id": str(d["_id"]), "medication_id": str(d["medication_id"])})
            for d in claimed])
        await self.doses.update_many({"lease_owner": token}, {"$set": {"lease_owner": None, "lease_until": None}})

    # --- confirming ---------------------------------------------------------------------------------

    async def confirm(self, dose_id: Any, patient_id: PydanticObjectId, via: str,
                      by: PydanticObjectId | None) -> dict[str, Any] | None:
        """scheduled/reminded → confirmed (once); None if this dose is not open for confirming."""
        now = utcnow()
        d = await self.doses.find_one_and_update(
            {"_id": dose_id, "patient_id": patient_id, "state": {"$in": ["scheduled", "reminded"]},
             "due_at": {"$lte": now + EARLY}},
            {"$set": {"state": "confirmed", "confirmed_at": now, "confirmed_via": via, "confirmed_by": by,
                      "box_next_at": None}}, return_document=True)
        if d is None:
            return None
        dose = dose_json(d)
        await self.svc.realtime.to_patient(patient_id, "dose:confirmed", dose)
        await self.meds.use_stock(d["medication_id"], None)
        for hook in self.on_confirmed:
            try:
                await hook(d)
            except Exception:
                log.exception("confirm hook failed")
        return dose

    async def _confirm(self, ctx: EventContext, body: ConfirmIn) -> dict[str, Any]:
        pid = await require_patient(ctx.principal, body.patient_id, "dose.confirm", ctx.client, dose_id=body.dose_id)
        if ctx.principal.role not in WRITERS:
            raise forbidden("Only the patient or their care team confirms a dose")
        dose_id = as_object_id(body.dose_id, "dose_id")
        dose = await self.confirm(dose_id, pid, "app", ctx.principal.user_id)
        if dose is not None:
            return dose
        current = await self.doses.find_one({"_id": dose_id, "patient_id": pid})
        if current is None:
            raise not_found("dose")
        if current["state"] == "confirmed":
            return dose_json(current)  # confirming twice is harmless
        if current["state"] == "missed":
            raise ApiError("dose_missed", "This dose was marked missed", 409)
        raise ApiError("not_due_yet", "This dose is not due within the hour", 409,
                       {"due_at": iso(aware(current["due_at"]))})


# --- REST: doses and adherence ----------------------------------------------------------------------

def _time_param(request: web.Request, name: str, default: datetime) -> datetime:
    raw = request.query.get(name)
    if not raw:
        return default
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError("invalid_query", f"{name} is not an ISO 8601 time", 422, {"field": name}) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def rest_doses(request: web.Request) -> web.Response:
    """Doses due in ``[from, to)`` (default: the last day and the next), by due time; at most 31 days."""
    principal = await require_principal(request)
    pid = await require_patient(principal, request.match_info["patient_id"], "dose.list", client_of(request))
    now = utcnow()
    start = _time_param(request, "from", now - timedelta(days=1))
    end = _time_param(request, "to", now + timedelta(days=1))
    if not timedelta(0) < end - start <= timedelta(days=31):
        raise ApiError("invalid_query", "to must be after from, at most 31 days later", 422)
    cursor = DoseEvent.get_pymongo_collection().find(
        {"patient_id": pid, "due_at": {"$gte": start, "$lt": end}}).sort("due_at", 1).limit(2000)
    return web.json_response({"items": [dose_json(d) async for d in cursor]})


def _tally(counts: dict[str, int]) -> dict[str, Any]:
    decided = counts["confirmed"] + counts["missed"]
    return {**counts, "adherence": round(counts["confirmed"] / decided, 3) if decided else None}


async def rest_adherence(request: web.Request) -> web.Response:
    """Confirmed and missed doses per medication and per week (weeks from Monday, the patient's time)
    over the last ``weeks`` (1 to 52, default 4). ``adherence`` = confirmed / (confirmed + missed)."""
    principal = await require_principal(request)
    pid = await require_patient(principal, request.match_info["patient_id"], "adherence.read", client_of(request))
    try:
        weeks = int(request.query.get("weeks", "4"))
    except ValueError:
        weeks = 0
    if not 1 <= weeks <= MAX_WEEKS:
        raise ApiError("invalid_query", f"weeks must be between 1 and {MAX_WEEKS}", 422, {"field": "weeks"})
    user = await User.get(pid)
    tz = zone(user.timezone if user else "UTC")
    now = utcnow()
    today = now.astimezone(tz).date()
    first = today - timedelta(days=today.weekday() + 7 * (weeks - 1))
    since = datetime.combine(first, datetime.min.time(), tz).astimezone(UTC)
    empty = {"due": 0, "confirmed": 0, "missed": 0, "pending": 0}
    per_med: dict[str, dict[str, Any]] = {}
    per_week: dict[str, dict[str, Any]] = {}
    cursor = DoseEvent.get_pymongo_collection().find(
        {"patient_id": pid, "due_at": {"$gte": since, "$lte": now}},
        {"medication_id": 1, "medication_name": 1, "due_at": 1, "state": 1})
    async for d in cursor:
        local = aware(d["due_at"]).astimezone(tz).date()
        week = (local - timedelta(days=local.weekday())).isoformat()
        outcome = d["state"] if d["state"] in ("confirmed", "missed") else "pending"
        med = per_med.setdefault(str(d["medication_id"]), {"name": d["medication_name"], **empty})
        wk = per_week.setdefault(week, {**empty, "medications": {}})
        wk_med = wk["medications"].setdefault(str(d["medication_id"]), dict(empty))
        for bucket in (med, wk, wk_med):
            bucket["due"] += 1
            bucket[outcome] += 1
    return web.json_response({
        "patient_id": str(pid), "timezone": tz.key, "since": iso(since),
        "medications": [{"medication_id": k, "name": v.pop("name"), **_tally(v)} for k, v in per_med.items()],
        "weeks": [{"week_start": k, **_tally({c: v[c] for c in empty}),
                   "medications": {m: _tally(c) for m, c in v["medications"].items()}}
                  for k, v in sorted(per_week.items())],
    })


def setup(app: web.Application) -> None:
    app.router.add_get("/api/patients/{patient_id}/doses", rest_doses)
    app.router.add_get("/api/patients/{patient_id}/adherence", rest_adherence)
