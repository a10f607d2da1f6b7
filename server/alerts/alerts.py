"""Emergency alerts that are never lost.

An alert (a hypertensive-crisis reading, a critical event from the live analysis, later triage) goes
to every caregiver and clinician linked to the patient and lists the patient's emergency contacts.

- **Persisted before emitted.** The alert is stored with an emit lease; then it is pushed, and marked
  emitted. If the raising process dies in between, any process's sweep finds the expired lease,
  claims it with a conditional update (one winner) and emits it: nothing is lost.
- **Every connected device of every recipient.** The push travels on the control bus; each process
  sends it to its own sockets in the recipients' user rooms, each socket at most once per alert.
- **Exactly once per device after its ack.** A client confirms receipt with ``alert:received``; the
  confirmation is stored per device (an ``AlertDelivery`` keyed ``<alert>:<user>:<device>``, device id
  from the Socket.IO auth ``device_id``, else the socket id; one small document each, written in
  batches, because rewriting one alert document per receipt does not scale to a thousand recipients).
  On connect, a device gets every open alert it has not confirmed, oldest first.
- **First acknowledgement wins** (``alert:ack``, a conditional update) and is shown to all recipients.
- **Escalation, at least once per level.** Unacknowledged after ``alert_escalation_s``: pushed again with
  urgency ``critical`` (level 1); after as long again: to the clinicians once more and to the emergency
  contacts' notification channel, a signed webhook (level 2). A process claims a level with a
  conditional update that also marks the step pending under a lease (``escalation_pending``,
  ``escalation_lease_until``, ``alert_emit_lease_s``; renewed while the webhook retries); it clears the
  mark once the push is published, the notifications are stored and, at level 2, the webhook's outcome
  is recorded. If it dies before, any process's sweep re-claims the expired lease (one winner) and runs
  that step again, unless the alert has been acknowledged or resolved meanwhile. So a step is never
  lost but may run twice: a socket that already got it and is still connected does not get it again
  (push keys ``<alert>/<level>``, remembered per socket), but a device that reconnected can get the same
  ``alert:escalated`` (same ``id`` and ``escalation``) twice, a recipient a second notification and the
  webhook a second call (same alert id and level).

Where: raising and the sweep here; reaching recipients in ``fanout``; the levels in ``escalation``;
receipts, acknowledgement and resolution in ``acks``; reading in ``reads``; the events and routes in ``api``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any

from beanie import PydanticObjectId

from server.alerts.acks import Acknowledgements
from server.alerts.caps import count_one, until_tomorrow
from server.alerts.documents import Alert
from server.alerts.escalation import SWEEP_BATCH, Escalation
from server.alerts.fanout import Fanout
from server.care.access import care_team
from server.care.contacts import emergency_contacts
from server.care.documents import User
from server.core.background import Background
from server.core.config import Settings
from server.core.documents import utcnow
from server.core.errors import ApiError
from server.core.i18n import Text, render
from server.core.identity import Principal
from server.core.ports import Broadcaster, Notifier
from server.core.urgency import URGENCY
from server.infra.group_commit import COMMITS
from server.infra.pubsub import ControlBus
from server.infra.store import URGENT_LANE

log = logging.getLogger(__name__)
CRITICAL = {"tachycardia": Text("alert.vital.tachycardia.title"), "bradycardia": Text("alert.vital.bradycardia.title")}


class Alerts:
    """Raises alerts (the ``AlertRaiser`` of ``server.core.ports``) and sweeps for what a dead process left:
    emits not done, escalation steps not finished, and escalations due. ``fanout`` reaches the recipients,
    ``escalation`` runs the levels, ``acks`` takes receipts, acknowledgements and resolutions."""

    def __init__(self, settings: Settings, bus: ControlBus, broadcaster: Broadcaster,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.node = f"{os.getpid()}"
        self.background = Background()
        self.fanout = Fanout(bus, broadcaster, notifier, self.background)
        self.escalation = Escalation(settings, self.fanout, self.background, self.node)
        self.acks = Acknowledgements(self.fanout)

    async def start(self) -> None:
        self.background.spawn(self._sweep_forever(), name="alert-sweeper")

    async def stop(self) -> None:
        await self.background.stop()  # the sweep, redeliveries, notifications, webhook calls
        await self.escalation.stop()

    # --- raising -----------------------------------------------------------------------------------

    async def raise_alert(self, patient_id: PydanticObjectId | str, kind: str, title: str | Text,
                          body: str | Text = "", *,
                          source: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                          raised_by: Principal | None = None, on_demand: bool = False,
                          after: Awaitable[Any] | None = None) -> Alert:
        """Raise an alert to the patient's care team, or return the open one of this kind (no storm). One raised
        on demand (triage) is refused past ``alerts_on_demand_per_day`` new ones for the patient that day.
        ``after``: what must be durable before the alert is stored (its reading), awaited after the lookups."""
        pid = PydanticObjectId(patient_id)
        # The patient's name: from the patient's own session when they raised it (no lookup on the urgent path).
        own = raised_by.name if raised_by is not None and raised_by.role == "patient" and raised_by.user_id == pid \
            else None

        async def patient_name() -> str:
            if own is not None:
                return own
            patient = await User.get(pid)
            return patient.name if patient else ""

        # What the alert needs, asked at once (one round trip's wait, not four, when the store is busy); only
        # reads, so an open alert of this kind or a refusal below changes nothing.
        existing, name, links, contacts = await asyncio.gather(
            URGENT_LANE.find(Alert, Alert.open_of(pid, kind)), patient_name(),
            care_team(pid, urgent=True), emergency_contacts(pid))
        if after is not None:
            await after
        if existing:
            return existing[0]
        if on_demand:
            await self._on_demand_allowed(pid)
        # Names are looked up only when the lifecycle is read: a thousand-user lookup here would delay the alert.
        recipients = [{"user_id": str(lk.member_id), "role": lk.member_role} for lk in links]
        now = utcnow()
        alert = Alert(patient_id=pid, patient_name=name, kind=kind[:40],
                      title=render(title, None)[:200], body=render(body, None)[:1000],
                      title_text=title if isinstance(title, Text) else None,
                      body_text=body if isinstance(body, Text) else None, source=source or {}, data=data or {},
                      recipients=recipients, recipient_ids=[lk.member_id for lk in links],
                      emergency_contacts=contacts, raised_at=now,
                      raised_by={"user_id": raised_by.id, "role": raised_by.role} if raised_by else None,
                      emit_lease_until=now + timedelta(seconds=self.settings.alert_emit_lease_s),
                      escalate_at=now + timedelta(seconds=self.settings.alert_escalation_s))
        await COMMITS.insert_documents([alert], urgent=True)
        if self.settings.fault_injection == "crash_after_alert_persist":
            os._exit(70)  # a process dying between persisting and emitting (tests only)
        await self._emit(alert, {lk.member_id for lk in links})  # (the team just read, not read again)
        return alert

    async def _on_demand_allowed(self, patient_id: PydanticObjectId) -> None:
        now, cap = utcnow(), self.settings.alerts_on_demand_per_day
        count = await count_one("on_demand_alert", patient_id, now)
        if count > cap:
            log.warning("on-demand alert for patient %s refused: attempt %d today, over the cap of %d "
                        "(HEALTHMATE_ALERTS_ON_DEMAND_PER_DAY)", patient_id, count, cap)
            retry = until_tomorrow(now)
            raise ApiError("too_many_alerts", f"No more than {cap} alerts can be raised on demand for this patient "
                           "today and no new one was sent; in an emergency call your local emergency number now",
                           429, {"retry_after_s": retry, "limit": cap}, headers={"Retry-After": str(retry)})

    async def _emit(self, alert: Alert, team: set[PydanticObjectId] | None = None) -> None:
        await self.fanout.push("alert:new", alert.push(), alert, alert.recipient_ids, key=str(alert.id), team=team)
        await URGENT_LANE(Alert.get_pymongo_collection()).update_one(
            {"_id": alert.id, "emitted_at": None}, {"$set": {"emitted_at": utcnow(), "emitted_by": self.node}})
        # In the background: a notification document per recipient (and push to their offline devices).
        self.background.spawn(self.fanout.notify(alert, alert.recipient_ids, team))

    # --- the sweep: stalled emits and escalations, claimed in the store --------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("alert sweep failed: %s", exc)
            await asyncio.sleep(self.settings.alert_sweep_s)

    async def sweep(self) -> None:
        """Resume stalled emits and unfinished escalation steps (leases expired), then escalate due alerts."""
        now = utcnow()
        lease = now + timedelta(seconds=self.settings.alert_emit_lease_s)
        await self._resume_emits(now, lease)
        await self.escalation.resume(now, lease)
        await self.escalation.escalate_due(now, lease)

    async def _resume_emits(self, now: datetime, lease: datetime) -> None:
        stalled = await Alert.find({"emitted_at": None, "emit_lease_until": {"$lt": now}}) \
            .limit(SWEEP_BATCH).to_list()
        for alert in stalled:
            claimed = await Alert.get_pymongo_collection().update_one(
                {"_id": alert.id, "emitted_at": None, "emit_lease_until": alert.emit_lease_until},
                {"$set": {"emit_lease_until": lease}})
            if claimed.modified_count:
                log.warning("resuming the stalled emit of alert %s", alert.id)
                await self._emit(alert)

    # --- sources (wired in server/app.py) ----------------------------------------------------------

    async def on_bp_crisis(self, reading: Any, principal: Principal, stored: Awaitable[Any] | None = None) -> None:
        """A reading in crisis: its alert's lookups go while the reading is being stored (``stored``), the alert
        once it is."""
        async with URGENCY.urgent():  # bulk work (reminders, box commands, notifications) holds back
            await self.raise_alert(
                reading.patient_id, "bp_crisis", Text("alert.bp_crisis.title"),
                Text("alert.bp_crisis.body", systolic=reading.systolic, diastolic=reading.diastolic),
                source={"type": "bp_reading", "id": str(reading.id)}, raised_by=principal,
                data={"systolic": reading.systolic, "diastolic": reading.diastolic, "reading_id": str(reading.id)},
                after=stored)

    async def on_vital_event(self, event: Any) -> None:
        if event.severity == "critical" and event.phase == "started":
            title = CRITICAL.get(event.type) or Text("alert.vital.title", event=event.type)
            await self.raise_alert(event.patient_id, f"vital_{event.type}", title,
                                   source={"type": "vital_event", "id": str(event.id)}, data=event.detail)
