"""Escalation, at least once per level: an alert unacknowledged after ``alert_escalation_s`` is pushed
again with urgency ``critical`` (level 1); after as long again, to the clinicians once more and to the
emergency contacts' channel, a signed webhook (level 2). Each step is claimed in the store under a lease
(``escalation_pending``, ``escalation_lease_until``) and marked done only once all of it has happened, so
a step whose process died is run again by another (see ``server.alerts.alerts``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

import httpx
from beanie import PydanticObjectId

from server.alerts.caps import count_one
from server.alerts.documents import Alert
from server.alerts.fanout import Fanout
from server.core.background import Background
from server.core.config import Settings
from server.core.documents import utcnow
from server.infra.webhook import post_signed

log = logging.getLogger(__name__)
SWEEP_BATCH = 50
WEBHOOK_ATTEMPTS = 4
WEBHOOK_TIMEOUT_S = 10.0


class Escalation:
    def __init__(self, settings: Settings, fanout: Fanout, background: Background, node: str) -> None:
        self.settings = settings
        self.fanout = fanout
        self.background = background
        self.node = node
        self._http: httpx.AsyncClient | None = None

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def resume(self, now: datetime, lease: datetime) -> None:
        """Steps claimed by a process that did not finish them (their lease ran out): claimed again, run again."""
        # A step's lease is set while it is pending and cleared with it: the filter is stalled_escalation's.
        unfinished = await Alert.find({"status": "open", "escalation_lease_until": {"$lt": now}}) \
            .limit(SWEEP_BATCH).to_list()
        for alert in unfinished:
            claimed = await Alert.get_pymongo_collection().update_one(
                {"_id": alert.id, "status": "open", "escalation_pending": alert.escalation_pending,
                 "escalation_lease_until": alert.escalation_lease_until},
                {"$set": {"escalation_lease_until": lease}})
            if claimed.modified_count:
                log.warning("resuming escalation level %s of alert %s", alert.escalation_pending, alert.id)
                await self._run(alert)

    async def escalate_due(self, now: datetime, lease: datetime) -> None:
        """Open alerts whose escalation time has come: the next level, claimed by one process."""
        due = await Alert.find({"status": "open", "escalation_pending": None,
                                "escalate_at": {"$lt": now}}).limit(SWEEP_BATCH).to_list()
        for alert in due:
            level = alert.level + 1
            nxt = now + timedelta(seconds=self.settings.alert_escalation_s) if level < 2 else None
            claimed = await Alert.get_pymongo_collection().update_one(
                {"_id": alert.id, "status": "open", "level": alert.level, "escalation_pending": None},
                {"$set": {"level": level, "urgency": "critical", "escalate_at": nxt,
                          "escalation_pending": level, "escalation_lease_until": lease},
                 "$push": {"escalations": {"level": level, "at": now, "by": self.node}}})
            if claimed.modified_count:
                alert.level, alert.urgency = level, "critical"
                await self._run(alert)

    async def _run(self, alert: Alert) -> None:
        """Run the claimed step ``alert.level``; it is marked done when all of it has happened."""
        data = {**alert.push(), "escalation": alert.level}
        users = alert.recipient_ids if alert.level == 1 else [
            PydanticObjectId(r["user_id"]) for r in alert.recipients if r["role"] == "clinician"]
        await self.fanout.push("alert:escalated", data, alert, users, key=f"{alert.id}/{alert.level}")
        await self.fanout.notify(alert, users)
        if alert.level >= 2 and self.settings.emergency_webhook_url and alert.emergency_contacts \
                and await self._webhook_allowed(alert):
            self.background.spawn(self._call_webhook(alert))  # marks the step done once its outcome is stored
        else:
            await self._step_done(alert)

    async def _webhook_allowed(self, alert: Alert) -> bool:
        """At most ``emergency_webhook_per_day`` calls per patient per day; one past it is logged for the operator
        and recorded on the alert (the care team sees the contacts were not called), not made."""
        now, cap = utcnow(), self.settings.emergency_webhook_per_day
        count = await count_one("emergency_webhook", alert.patient_id, now)
        if count <= cap:
            return True
        log.warning("emergency webhook NOT called for alert %s of patient %s: call %d today, over the cap of %d "
                    "(HEALTHMATE_EMERGENCY_WEBHOOK_PER_DAY); %d held back today", alert.id, alert.patient_id, count,
                    cap, count - cap)
        await Alert.get_pymongo_collection().update_one({"_id": alert.id}, {"$push": {"escalations": {
            "channel": "webhook", "ok": False, "level": alert.level, "at": now, "suppressed": "daily_cap",
            "calls_today": count, "cap": cap}}})
        return False

    async def _step_done(self, alert: Alert) -> None:
        await Alert.get_pymongo_collection().update_one(
            {"_id": alert.id, "escalation_pending": alert.level},
            {"$set": {"escalation_pending": None, "escalation_lease_until": None}})

    async def _call_webhook(self, alert: Alert) -> None:
        """Tell the emergency contacts' channel, retrying with backoff; the outcome is kept on the alert.
        The step's lease is renewed before each attempt so that no other process calls it meanwhile."""
        assert self.settings.emergency_webhook_url
        self._http = self._http or httpx.AsyncClient(trust_env=False)
        coll = Alert.get_pymongo_collection()
        payload = {"alert": alert.push(), "emergency_contacts": alert.emergency_contacts,
                   "message": f"{alert.patient_name or 'A patient'}: {alert.title}. Nobody has answered yet."}
        outcome: dict[str, Any] = {"channel": "webhook", "ok": False}
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            backoff = min(2 ** attempt * 0.5, 30)
            hold = self.settings.alert_emit_lease_s + WEBHOOK_TIMEOUT_S + backoff
            await coll.update_one({"_id": alert.id, "escalation_pending": alert.level},
                                  {"$set": {"escalation_lease_until": utcnow() + timedelta(seconds=hold)}})
            try:
                await post_signed(self._http, self.settings.emergency_webhook_url, self.settings.signing_secret,
                                  "alert.escalated", payload, timeout_s=WEBHOOK_TIMEOUT_S)
                outcome = {"channel": "webhook", "ok": True}
                break
            except Exception as exc:
                outcome["error"] = str(exc)[:200]
                await asyncio.sleep(backoff)
        await coll.update_one({"_id": alert.id}, {"$push": {"escalations": {
            **outcome, "level": alert.level, "at": utcnow(), "attempts": attempt}}})
        await self._step_done(alert)
