"""Due-dose delivery: at due time a process claims the due doses, a batch at a time: it stores the batch's claim
(``DoseClaim``: its token, leased), then marks the doses with one conditional update in the store (scheduled →
reminded, ``due_owner`` the token; a dose can leave "scheduled" only once, so no two processes claim it), pushes
``dose:due`` to the patient's room, tells the box (``on_due`` hooks: once the next batch is pushed, so that
its box commands do not hold back the next patients' reminders), and at its next sweep (within a second; at
shutdown too), once the batch's reminder notifications are stored, deletes the claim: nothing more is written
to each dose. Should a process die before that, its claim's lease (``LEASE``) runs out and another process (or
the restarted one) takes the claim over, conditionally, and pushes again the doses still waiting (reminded,
neither confirmed nor missed) and sends their notifications unless already stored: ``dose:due`` is delivered at
least once, and clients tell a repeat by the dose's ``id``. Doses due while the server was down whose grace
window has not ended are reminded at once (late, ``late_ms`` says by how much)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from server.core.documents import aware, passed, utcnow
from server.core.ports import Broadcaster
from server.core.urgency import URGENCY
from server.meds.claims import BATCH, DoseClaims
from server.meds.documents import DoseClaim, dose_json

log = logging.getLogger(__name__)
LEASE = timedelta(minutes=5)  # a claim not completed by then (its process died) is taken back
POLL_S = 1.0  # longest sleep: doses planned by another process are noticed within this
CLEAR = timedelta(milliseconds=250)  # doses falling due within this keep the store to the reminders
DueHook = Callable[[list[dict[str, Any]]], Awaitable[None]]
Reminded = Callable[[str, list[dict[str, Any]], bool], None]


class DueDelivery:
    def __init__(self, claims: DoseClaims, broadcaster: Broadcaster, grace: timedelta) -> None:
        self.claims = claims
        self.out = broadcaster
        self.grace = grace
        self.on_due: list[DueHook] = []  # the medicine box commands its drawers
        self.reminded = asyncio.Event()  # set when doses were delivered: their notifications are due
        self.next_due_at = utcnow()
        self._firing = False
        # The claims (tokens) whose doses were delivered, deleted at the next sweep once their reminder
        # notifications (if the claim took them, ``on_reminded``) are stored.
        self._delivered: set[str] = set()
        # The reminder notifications (``Reminders``) take a claim's doses (True: a dead process's, some may be stored)
        self.on_reminded: Reminded | None = None
        self._notifying: set[str] = set()  # claims whose reminder notifications are not all stored yet
        self._unsent: set[str] = set()  # claims whose reminder notifications failed
        self.batch = BATCH  # doses per claim
        self._untold: tuple[str, list[dict[str, Any]]] | None = None  # the batch pushed last, its box not yet told

    def busy(self) -> bool:
        """Doses are being reminded, or fall due within ``CLEAR``: other work leaves the store to them."""
        return self._firing or self.next_due_at - utcnow() <= CLEAR

    async def fire(self) -> None:
        """Claim and deliver every due dose, a batch at a time."""
        self._firing = True
        try:
            while await self._remind_due(utcnow()) == self.batch:
                pass
        finally:
            self._firing = False
        await self._tell()  # (after a failure: at the next pass)

    async def until_next(self, now: datetime) -> float:
        """Seconds until the next dose falls due (at most ``POLL_S``)."""
        soon = self.claims.doses.find(
            {"state": "scheduled", "due_at": {"$gt": now, "$lte": now + timedelta(seconds=POLL_S)}},
            {"due_at": 1}).limit(1000)
        dues = [aware(d["due_at"]) async for d in soon]
        self.next_due_at = min(dues) if dues else now + timedelta(seconds=POLL_S)
        return max(0.0, (self.next_due_at - now).total_seconds())

    @property
    def ledger(self) -> Any:
        return DoseClaim.get_pymongo_collection()

    async def _remind_due(self, now: datetime) -> int:
        """Claim the due doses by marking them reminded (one conditional write each: a dose goes from scheduled
        to reminded once, in whichever process gets there first), the claim stored first, then deliver them. The
        claim takes their reminder notifications too, handed to ``on_reminded``."""
        notes = self.on_reminded is not None

        async def store_claim(token: str) -> None:
            await DoseClaim(id=token, owner=self.claims.owner, lease_until=now + LEASE, notes=notes).insert()

        token, claimed = await self.claims.claim(
            {"state": "scheduled", "due_at": {"$lte": now, "$gt": now - self.grace}},
            {"$set": {"state": "reminded", "reminded_at": now, **({"reminder_notified_at": now} if notes else {})}},
            owner="due_owner", limit=self.batch, before=store_claim)
        await self._hand_over(token, claimed, notes)
        return len(claimed)

    async def _hand_over(self, token: str, doses: list[dict[str, Any]], notes: bool, again: bool = False,
                         push: bool = True) -> None:
        """Push the claim's doses (``push``) and hand their notifications (``notes``) to ``on_reminded``."""
        if not doses:
            return
        if notes and self.on_reminded:
            self._notifying.add(token)
            self.on_reminded(token, doses, again)
        if push:  # (not: only the notifications were left, and ``on_reminded`` has them)
            await self._deliver(token, doses)
        else:
            self._delivered.add(token)

    def notified(self, token: str, ok: bool) -> None:
        """A claim's reminder notifications are stored (``ok``), or failed: then the claim is kept (``pushed``) for
        its lease to run out, and the process taking it over sends what was not stored."""
        self._notifying.discard(token)
        if not ok:
            self._unsent.add(token)

    async def redeliver(self, now: datetime) -> None:
        """Claims whose process died before finishing them (the lease ran out): taken over (a conditional update,
        so by one process), their doses still waiting pushed again and their notifications sent unless stored."""
        for claim in await self.ledger.find({"lease_until": passed(now)}).limit(BATCH).to_list(None):
            taken = await self.ledger.find_one_and_update(
                {"_id": claim["_id"], "lease_until": claim["lease_until"]},
                {"$set": {"lease_until": now + LEASE, "owner": self.claims.owner}})
            if taken is None:
                continue  # another process took it over
            token = claim["_id"]
            # State first: the embedded store looks up the reminded doses (those not yet confirmed or missed).
            doses = await self.claims.doses.find({"state": "reminded", "due_owner": token}).to_list(None)
            if not doses:
                await self.ledger.delete_one({"_id": token})
                continue
            if not claim["pushed"]:
                log.warning("pushing %d doses again whose process died before pushing them", len(doses))
            await self._hand_over(token, doses, claim["notes"], again=True, push=not claim["pushed"])
        await self._tell()

    async def _deliver(self, token: str, claimed: list[dict[str, Any]]) -> None:
        """Push ``dose:due``, then tell the box of the batch pushed before this one: a batch's box commands (a
        store update and a send per box: 2-3 s for 500 doses under the ``rush`` bench at 800 patients) no longer
        hold back the next batch's reminders. The claim is deleted at the next sweep once its box was told (one
        write a second rather than one more per batch on the reminders' path)."""
        for d in claimed:
            await URGENCY.give_way()  # an alert being raised goes first
            dose = dose_json(d)
            dose["late_ms"] = round((utcnow() - aware(d["due_at"])).total_seconds() * 1000)
            await self.out.to_patient(d["patient_id"], "dose:due", dose)
        self.reminded.set()
        await self._tell()
        self._untold = (token, claimed)

    async def _tell(self) -> None:
        """Tell the box of the batch pushed last; its claim is then delivered. (A batch not told when the process
        stops keeps its claim, delivered again once its lease runs out.)"""
        if self._untold is None:
            return
        (token, claimed), self._untold = self._untold, None
        for hook in self.on_due:
            try:
                await hook(claimed)
            except Exception:
                log.exception("dose hook failed")
        self._delivered.add(token)

    async def mark_delivered(self, final: bool = False) -> None:
        """Delete the claims delivered since the last sweep whose notifications are stored (``final``, at
        shutdown: every delivered claim; those whose notifications are not all stored are kept, ``pushed``, for
        their lease to run out and another process to send what was not stored)."""
        ready = {t for t in self._delivered if final or t not in self._notifying}
        self._delivered -= ready
        kept = {t for t in ready if t in self._notifying or t in self._unsent}
        self._unsent &= self._delivered | self._notifying  # (a claim whose delivery failed is forgotten)
        if done := sorted(ready - kept):
            await self.ledger.delete_many({"_id": {"$in": done}})
        if kept:
            await self.ledger.update_many({"_id": {"$in": sorted(kept)}}, {"$set": {"pushed": True}})
