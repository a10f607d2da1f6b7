"""The durable dose scheduler: every due dose is a stored ``DoseEvent`` that moves
scheduled → reminded → confirmed | missed, fired once across server processes (pushed again only
if the process firing it died before it was done).

Planning: each active, scheduled medication has its doses written ahead (``HORIZON``) from its
schedule and the patient's time zone (``server.meds.dose_times``); a dose's slot (medication + local
date and time) is unique in the store, so any number of processes may plan the same doses.

Firing: at due time a process claims the due doses, a batch at a time: the batch's claim is stored
(``DoseClaim``, leased), then the doses marked with one conditional update in the store (scheduled →
reminded, ``due_owner`` the claim; a dose can leave "scheduled" only once, so no two processes claim
it); it pushes ``dose:due`` to the patient's room, tells the box (``on_due`` hooks), and deletes the
claim at its next sweep (within a second; at shutdown too) once the batch's notifications are stored.
Should a process die before that, its claim's lease (``LEASE``) runs out and another process (or
the restarted one) takes the claim over, conditionally, and pushes again the doses still
waiting (reminded, neither confirmed nor missed): ``dose:due`` is delivered at least once, and
clients tell a repeat by the dose's ``id``; the box is commanded once per dose (``on_due`` skips a
dose already commanded, whose resends the box schedule carries on).

The ``reminder`` notification is claimed by the same claim and sent by a separate loop, so its cost
(a stored notification each) never delays a reminder; a claim taken over sends the notifications
its dead process had not stored. Notifications no claim took (doses of an older claim) are claimed
by that loop, leased (``reminder_lease_until``), and sent again if their process died before
finishing, unless it had stored them.

A dose not confirmed within the grace window (``HEALTHMATE_DOSE_GRACE_S``, 30 min) is marked
missed (a conditional update, so once), and the patient's caregivers are notified; that
notification is claimed with a lease (``LEASE``) and sent again if its process died before
finishing.

Catch-up after downtime: the loop applies the same rules to whatever it finds at start-up.
Doses due while the server was down whose grace window has not ended are reminded at once (late,
``late_ms`` says by how much); those whose grace window ended are marked missed and caregivers
notified. Doses that would have been planned during the outage are planned back to ``LOOKBACK``
(24 h) before now and go through the same rules.

Where: the loop here; claiming doses in ``claims``; planning in ``planning``; due doses in ``delivery``;
reminder notifications in ``reminders``; missed doses in ``missed``; confirming in ``confirming``; what
happened to them in ``adherence``; the events and routes in ``api``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from beanie import PydanticObjectId
from pymongo.asynchronous.collection import AsyncCollection

from server.core.background import Background
from server.core.config import Settings
from server.core.documents import utcnow
from server.core.ports import Broadcaster, NotificationLookup
from server.meds.claims import BATCH, DoseClaims
from server.meds.confirming import Confirmations
from server.meds.delivery import POLL_S, DueDelivery
from server.meds.documents import Medication
from server.meds.medications import Medications, drawers
from server.meds.missed import MissedDoses
from server.meds.planning import PLAN_EVERY, Planner
from server.meds.reminders import Reminders

log = logging.getLogger(__name__)
Tick = Callable[[datetime], Awaitable[None]]


class Scheduler:
    """The loop that runs the parts in turn, and what the medicine box (``devices/box_service.py``) uses, the
    ``DoseSchedule`` of ``server.core.ports``: ``on_due``, ``on_confirmed`` and ``ticks`` hooks, ``doses``,
    ``claim``, ``confirm``, ``wake``, ``drawers``."""

    def __init__(self, settings: Settings, broadcaster: Broadcaster, notifier: NotificationLookup,
                 meds: Medications) -> None:
        grace = timedelta(seconds=settings.dose_grace_s)
        # Looking for what dead processes left is a scan of the waiting doses: not every pass.
        self.recover_every = timedelta(seconds=settings.dose_recover_s)
        self.claims = DoseClaims()
        self.planner = Planner(self.claims, self.wake)
        self.delivery = DueDelivery(self.claims, broadcaster, grace)
        self.missed = MissedDoses(self.claims, broadcaster, notifier, grace)
        self.reminders = Reminders(self.claims, notifier, self.delivery)
        self.confirmations = Confirmations(self.claims, broadcaster, meds)
        self.on_due = self.delivery.on_due  # the medicine box commands its drawers
        self.on_confirmed = self.confirmations.on_confirmed
        self.ticks: list[Tick] = []  # extra work each pass (box command retries)
        self._wake = asyncio.Event()
        self._loops = Background()
        self._planned_at: datetime | None = None
        self._recovered_at: datetime | None = None
        self._swept_at: datetime | None = None
        meds.on_change.append(self.planner.replan)

    # --- what the medicine box and the profile (a new time zone) use ---------------------------------

    @property
    def doses(self) -> AsyncCollection[Any]:
        return self.claims.doses

    async def claim(self, query: dict[str, Any], update: dict[str, Any], owner: str = "lease_owner",
                    limit: int = BATCH) -> tuple[str, list[dict[str, Any]]]:
        return await self.claims.claim(query, update, owner, limit)

    async def release(self, owner: str, token: str, claimed: list[dict[str, Any]], changes: dict[str, Any]) -> None:
        await self.claims.release(owner, token, claimed, changes)

    async def confirm(self, dose_id: Any, patient_id: PydanticObjectId, via: str,
                      by: PydanticObjectId | None) -> dict[str, Any] | None:
        return await self.confirmations.confirm(dose_id, patient_id, via, by)

    async def plan(self, med: Medication, now: datetime, start: datetime | None = None) -> int:
        return await self.planner.plan(med, now, start)

    async def replan_patient(self, patient_id: PydanticObjectId) -> None:
        await self.planner.replan_patient(patient_id)

    @staticmethod
    async def drawers(patient_id: PydanticObjectId) -> list[dict[str, Any]]:
        return await drawers(patient_id)

    def wake(self) -> None:
        """Run a pass now (new doses, or box commands to resend)."""
        self._wake.set()

    # --- the loop -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loops.spawn(self._run(), name="dose-scheduler")
        self._loops.spawn(self.reminders.run(), name="dose-reminder-notifications")

    async def stop(self) -> None:
        await self._loops.stop()
        with contextlib.suppress(Exception):  # what is not marked is delivered again after LEASE
            await self.delivery.mark_delivered(final=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once(utcnow())
                delay = await self.delivery.until_next(utcnow())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler pass failed")
                delay = POLL_S
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # (not wait_for: on 3.11 it may swallow a stop's cancel)
                    await self._wake.wait()

    async def run_once(self, now: datetime) -> None:
        if self._planned_at is None or now - self._planned_at >= PLAN_EVERY:
            self._planned_at = now
            await self.planner.plan_all(now)
        if self._recovered_at is None or now - self._recovered_at >= self.recover_every:
            self._recovered_at = now
            await self.missed.recover(now)
            await self.delivery.redeliver(now)
            await self.reminders.renotify(now)
        if self._swept_at is None or now - self._swept_at >= timedelta(seconds=POLL_S):
            self._swept_at = now
            await self.delivery.mark_delivered()
            await self.missed.mark(now)
            await self.missed.notify(now)
        await self.delivery.fire()
        for tick in self.ticks:
            await tick(now)
