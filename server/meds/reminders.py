"""Reminder notifications, apart from the firing loop so their cost (a stored notification each) never
delays a reminder. The firing loop's claim of due doses (``DoseClaim``, leased) claims their notifications too
and hands them here (``take``); this loop stores them in batches that leave the store to the firing loop in
between, each batch's notifications one insert (``server.infra.group_commit``, bulk: they wait while an alert
is being written), and tells the delivery, which then deletes the claim. A claim taken over from a dead process
is handed here the same way, and a notification that process had stored is not sent again. Reminded doses whose
notification no claim took are claimed here with a conditional write (so each is sent by one process), leased
(``reminder_lease_until``); one whose process died before the lease ran out is claimed again and sent, unless
the dead process had already stored it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

from server.core.documents import aware, iso, passed, utcnow
from server.core.i18n import Text
from server.core.ports import NotificationLookup
from server.core.urgency import URGENCY
from server.infra.group_commit import COMMITS
from server.meds.claims import DoseClaims
from server.meds.delivery import LEASE, POLL_S, DueDelivery
from server.meds.medications import bounded, notify_quietly

log = logging.getLogger(__name__)
NOTIFY_BATCH = 100  # a claim's notifications are stored together (the group commit): one insert per batch
UNBATCHED = 32  # with the group commit off: a claim's worth of inserts at a time, as before it
UNNOTIFIED = {"state": "reminded", "reminder_notified_at": None}


class Reminders:
    def __init__(self, claims: DoseClaims, notifier: NotificationLookup, delivery: DueDelivery) -> None:
        self.claims = claims
        self.notifier = notifier
        self.delivery = delivery
        # claims from the delivery, oldest first (True: a dead process's, some notifications may be stored)
        self._taken: list[tuple[str, list[dict[str, Any]], bool]] = []
        delivery.on_reminded = self.take

    def take(self, token: str, doses: list[dict[str, Any]], again: bool = False) -> None:
        """The delivery claimed these doses' notifications (claim ``token``; ``again``: taken over from a dead
        process): send them next."""
        self._taken.append((token, doses, again))
        self.delivery.reminded.set()

    @staticmethod
    def batch() -> int:
        return NOTIFY_BATCH if COMMITS.enabled else UNBATCHED

    async def run(self) -> None:
        """The loop: woken when doses were delivered, else every ``POLL_S``."""
        while True:
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_S):
                        await self.delivery.reminded.wait()
                self.delivery.reminded.clear()
                while self._taken:
                    await self._send_taken(*self._taken.pop(0))
                while await self._notify_some() == self.batch():
                    await self._yield_to_reminders()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reminder notifications failed")
                await asyncio.sleep(POLL_S)

    async def _yield_to_reminders(self) -> None:
        """The store is shared: while doses are being reminded or about to fall due, wait (up to 2 s)."""
        for _ in range(40):
            if not self.delivery.busy():
                return
            await asyncio.sleep(0.05)

    async def _send_taken(self, token: str, doses: list[dict[str, Any]], again: bool) -> None:
        ok = False
        try:
            for i in range(0, len(doses), self.batch()):
                await self._yield_to_reminders()
                await URGENCY.until_clear()  # an alert being raised goes first
                batch = doses[i:i + self.batch()]
                await bounded([self._remind_patient(d, again) for d in batch], width=len(batch))
            ok = True
        finally:
            self.delivery.notified(token, ok)

    async def _notify_some(self, query: dict[str, Any] = UNNOTIFIED, again: bool = False) -> int:
        """Claim and send up to NOTIFY_BATCH reminder notifications matching ``query`` (leased), then release."""
        await URGENCY.until_clear()  # an alert being raised goes first
        now = utcnow()
        token, claimed = await self.claims.claim(
            query, {"$set": {"reminder_notified_at": now, "reminder_lease_until": now + LEASE}}, limit=self.batch())
        await bounded([self._remind_patient(d, again) for d in claimed], width=self.batch())
        await self.claims.release("lease_owner", token, claimed, {"reminder_lease_until": None})
        return len(claimed)

    async def renotify(self, now: datetime) -> None:
        """Reminder notifications whose claimer died before sending them (the lease ran out)."""
        await self._notify_some({"state": "reminded", "reminder_lease_until": passed(now)}, again=True)

    async def _remind_patient(self, d: dict[str, Any], again: bool = False) -> None:
        """The ``reminder`` notification; ``again`` (a dead process's claim): not if that process stored it."""
        if again and await self.notifier.notified(d["patient_id"], "reminder", {"dose_id": str(d["_id"])}):
            return
        drawer = Text("dose.reminder.drawer", drawer=d["drawer"]) if d.get("drawer") else None
        body = Text("dose.reminder.body", dose=d["dose"], drawer=drawer) if d.get("dose") and drawer \
            else d.get("dose") or drawer or ""
        await notify_quietly(self.notifier, [d["patient_id"]], "reminder",
                             Text("dose.reminder.title", medication=d["medication_name"]), body,
                             patient_id=d["patient_id"],
                             data={"dose_id": str(d["_id"]), "due_at": iso(aware(d["due_at"]))})
