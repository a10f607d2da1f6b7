"""Due-dose delivery: at due time a process claims the due doses with one conditional update in the store
(scheduled → reminded, stamped with its token and a push lease, ``due_lease_until``; a dose can leave
"scheduled" only once, so no two processes claim it), pushes ``dose:due`` to the patient's room, tells the
box (``on_due`` hooks), and marks the doses delivered (``due_pushed_at``) at its next sweep (within a
second; at shutdown too). Should a process die before that, its doses' lease (``LEASE``) runs out and
another process (or the restarted one) claims them again, conditionally, and pushes them again if they are
still waiting (reminded, neither confirmed nor missed): ``dose:due`` is delivered at least once, and
clients tell a repeat by the dose's ``id``. Doses due while the server was down whose grace window has not
ended are reminded at once (late, ``late_ms`` says by how much)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from server.core.documents import aware, passed, utcnow
from server.core.ports import Broadcaster
from server.meds.claims import BATCH, DoseClaims
from server.meds.documents import dose_json

log = logging.getLogger(__name__)
LEASE = timedelta(minutes=5)  # a claim not completed by then (its process died) is taken back
POLL_S = 1.0  # longest sleep: doses planned by another process are noticed within this
CLEAR = timedelta(milliseconds=250)  # doses falling due within this keep the store to the reminders
DueHook = Callable[[list[dict[str, Any]]], Awaitable[None]]
Reminded = Callable[[str, list[dict[str, Any]]], None]


class DueDelivery:
    def __init__(self, claims: DoseClaims, broadcaster: Broadcaster, grace: timedelta) -> None:
        self.claims = claims
        self.out = broadcaster
        self.grace = grace
        self.on_due: list[DueHook] = []  # the medicine box commands its drawers
        self.reminded = asyncio.Event()  # set when doses were delivered: their notifications are due
        self.next_due_at = utcnow()
        self._firing = False
        # The claims (tokens) whose doses were delivered, marked at the next sweep; True: the claim also took their
        # reminder notifications (``on_reminded``), whose lease the mark gives back once they are all stored.
        self._delivered: dict[str, bool] = {}
        self.on_reminded: Reminded | None = None  # the reminder notifications (``Reminders``) take a fresh claim
        self._notifying: set[str] = set()  # fresh claims whose reminder notifications are not all stored yet
        self._unsent: set[str] = set()  # fresh claims whose reminder notifications failed

    def busy(self) -> bool:
        """Doses are being reminded, or fall due within ``CLEAR``: other work leaves the store to them."""
        return self._firing or self.next_due_at - utcnow() <= CLEAR

    async def fire(self) -> None:
        """Claim and deliver every due dose, a batch at a time."""
        self._firing = True
        try:
            while await self._remind_due(utcnow()) == BATCH:
                pass
        finally:
            self._firing = False

    async def until_next(self, now: datetime) -> float:
        """Seconds until the next dose falls due (at most ``POLL_S``)."""
        soon = self.claims.doses.find(
            {"state": "scheduled", "due_at": {"$gt": now, "$lte": now + timedelta(seconds=POLL_S)}},
            {"due_at": 1}).limit(1000)
        dues = [aware(d["due_at"]) async for d in soon]
        self.next_due_at = min(dues) if dues else now + timedelta(seconds=POLL_S)
        return max(0.0, (self.next_due_at - now).total_seconds())

    async def _remind_due(self, now: datetime) -> int:
        """Claim the due doses by marking them reminded (one conditional write each: a dose goes from
        scheduled to reminded once, in whichever process gets there first), leased, then deliver them. The same
        write claims their reminder notifications (leased as ``Reminders`` claims them; one update a dose, not
        three: the embedded store's cost is per document updated), handed to ``on_reminded``."""
        notes = {"reminder_notified_at": now, "reminder_lease_until": now + LEASE} if self.on_reminded else {}
        token, claimed = await self.claims.claim(
            {"state": "scheduled", "due_at": {"$lte": now, "$gt": now - self.grace}},
            {"$set": {"state": "reminded", "reminded_at": now, "due_pushed_at": None, "due_lease_until": now + LEASE,
                      **notes}},
            owner="due_owner")
        if claimed and self.on_reminded:
            self._notifying.add(token)
            self.on_reminded(token, claimed)
        await self._deliver(token, claimed, fresh=bool(notes))
        return len(claimed)

    def notified(self, token: str, ok: bool) -> None:
        """A fresh claim's reminder notifications are stored (``ok``), or failed: then their lease is left to run
        out, and ``Reminders.renotify`` sends what was not stored."""
        self._notifying.discard(token)
        if not ok:
            self._unsent.add(token)

    async def redeliver(self, now: datetime) -> None:
        """Reminded doses whose claimer died before delivering them (the lease ran out): claimed again
        (a conditional update, so by one process) and delivered again."""
        token, claimed = await self.claims.claim(
            {"state": "reminded", "due_pushed_at": None, "due_lease_until": passed(now)},
            {"$set": {"due_lease_until": now + LEASE}}, owner="due_owner")
        if claimed:
            log.warning("pushing %d doses again whose process died before pushing them", len(claimed))
        await self._deliver(token, claimed)

    async def _deliver(self, token: str, claimed: list[dict[str, Any]], fresh: bool = False) -> None:
        """Push ``dose:due`` and tell the box; the doses are marked delivered at the next sweep (one write a
        second rather than one more per batch on the reminders' path)."""
        if not claimed:
            return
        for d in claimed:
            dose = dose_json(d)
            dose["late_ms"] = round((utcnow() - aware(d["due_at"])).total_seconds() * 1000)
            await self.out.to_patient(d["patient_id"], "dose:due", dose)
        self.reminded.set()
        for hook in self.on_due:
            try:
                await hook(claimed)
            except Exception:
                log.exception("dose hook failed")
        self._delivered[token] = fresh

    async def mark_delivered(self, final: bool = False) -> None:
        """Mark the doses delivered since the last sweep (those our claims still hold), a fresh claim's once its
        reminder notifications are stored too (``final``, at shutdown: all; the unstored notifications' lease
        is left to run out)."""
        ready = {t: notes and t not in self._notifying and t not in self._unsent
                 for t, notes in self._delivered.items() if final or t not in self._notifying}
        for t in ready:
            del self._delivered[t]
        self._unsent &= self._delivered.keys() | self._notifying  # (a claim whose delivery failed is forgotten)
        delivered = {"due_pushed_at": utcnow(), "due_owner": None, "due_lease_until": None}
        for notes in (True, False):  # every dose of these claims was delivered
            if tokens := [t for t, n in ready.items() if n == notes]:
                await self.claims.doses.update_many(
                    {"due_owner": {"$in": tokens}},
                    {"$set": {**delivered, **({"reminder_lease_until": None} if notes else {})}})
