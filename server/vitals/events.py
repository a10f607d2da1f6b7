"""Vital events from the live analysis (tachycardia, bradycardia, irregular rhythm, frequent ectopy, poor
signal, no signal, stalled stream): persisted before they are pushed to the patient's room; and the
per-patient thresholds a verified, linked clinician sets, within clinical limits."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from beanie import PydanticObjectId
from pymongo.errors import DuplicateKeyError

from ml.rhythm_events import Thresholds
from server.care import audit
from server.care.access import care_team, require_patient
from server.core.documents import iso, utcnow
from server.core.errors import ApiError, forbidden
from server.core.i18n import Text
from server.core.identity import Client, Principal, as_object_id
from server.core.ports import Broadcaster, Notifier
from server.infra.pubsub import ControlBus
from server.vitals.documents import PatientThresholds, ThresholdsIn, VitalEvent

EventSink = Callable[[VitalEvent], Awaitable[None]]
log = logging.getLogger(__name__)


class Vitals:
    def __init__(self, broadcaster: Broadcaster, bus: ControlBus, notes: Notifier) -> None:
        self.broadcaster = broadcaster
        self.bus = bus
        self.notes = notes
        self._thresholds: dict[PydanticObjectId, dict[str, float]] = {}
        self.sinks: list[EventSink] = []  # e.g. the alert path, for critical events
        self.on_thresholds_changed: list[Callable[[PydanticObjectId, Thresholds], None]] = []
        bus.on("thresholds_changed", self._reload)

    def thresholds_for(self, patient_id: PydanticObjectId) -> Thresholds:
        return Thresholds(**self._thresholds.get(patient_id, {}))

    async def load_thresholds(self, patient_id: PydanticObjectId) -> Thresholds:
        doc = await PatientThresholds.get(patient_id)
        self._thresholds[patient_id] = dict(doc.values) if doc else {}
        return self.thresholds_for(patient_id)

    async def record(self, patient_id: PydanticObjectId, stream_id: PydanticObjectId | None, signal: str | None,
                     event: dict[str, Any]) -> VitalEvent:
        """Persist, then push: an event is never shown that is not stored."""
        # ``started_at`` / ``ended_at`` from the analysis are seconds of signal since the stream began.
        detail = {**event.get("detail", {}),
                  **{k: event[k] for k in ("started_at", "ended_at") if event.get(k) is not None}}
        doc = VitalEvent(patient_id=patient_id, stream_id=stream_id, signal=signal, type=event["type"],
                         phase=event.get("state") or event.get("phase") or "started",
                         severity=event.get("severity", "warning"), detail=detail)
        await doc.insert()
        await self.broadcaster.to_patient(patient_id, "vitals:event", doc.public())
        for sink in self.sinks:
            try:
                await sink(doc)
            except Exception:
                log.exception("vital event sink failed for %s", doc.id)
        return doc

    async def get_thresholds(self, principal: Principal, patient_id: str, client: Client) -> dict[str, Any]:
        pid = await require_patient(principal, patient_id, "thresholds.read", client)
        return {"patient_id": str(pid), **vars(await self.load_thresholds(pid))}

    async def set_thresholds(self, principal: Principal, body: ThresholdsIn, client: Client) -> dict[str, Any]:
        """A verified, linked clinician's values (within ``THRESHOLD_LIMITS``, checked by the model), checked
        together with the ones kept; the change is audited with the old and new values, announced to the patient's
        room (``vitals:thresholds-changed``), notified to the patient and the care team, applied in every process."""
        changes = body.model_dump(exclude_none=True, exclude={"patient_id"})
        if principal.role != "clinician":  # an unverified clinician acts as a caregiver
            await audit.record("thresholds.write", principal=principal, patient_id=as_object_id(body.patient_id),
                               outcome="denied", client=client, **changes)
            raise forbidden("Only a verified clinician linked to the patient sets their alert thresholds")
        pid = await require_patient(principal, body.patient_id, "thresholds.write", client, **changes)
        before, after = await self._save(pid, changes, principal.user_id)
        changed = {k: {"old": before[k], "new": after[k]} for k in changes if before[k] != after[k]}
        if changed:
            await audit.record("thresholds.changed", principal=principal, patient_id=pid, client=client,
                               old={k: c["old"] for k, c in changed.items()},
                               new={k: c["new"] for k, c in changed.items()})
            await self.bus.publish("thresholds_changed", patient_id=str(pid))
            await self._announce(pid, principal, changed, after)
        return {"patient_id": str(pid), **after}

    async def _save(self, pid: PydanticObjectId, changes: dict[str, float],
                    by: PydanticObjectId) -> tuple[dict[str, Any], dict[str, Any]]:
        """Compare-and-swap on ``set_at``, so the old values audited are the ones replaced; the effective
        thresholds (defaults filled in) before and after."""
        for _ in range(5):
            current = await PatientThresholds.get(pid)
            kept = dict(current.values) if current else {}
            values = {**kept, **changes}
            th = Thresholds(**values)
            if th.tachycardia_critical_hr < th.tachycardia_hr or th.bradycardia_critical_hr > th.bradycardia_hr \
                    or th.bradycardia_hr >= th.tachycardia_hr:
                raise ApiError("invalid_thresholds", "Critical rates must lie beyond their warning rates, and the "
                               "bradycardia rate below the tachycardia rate", 422, {"thresholds": vars(th)})
            fields = {"values": values, "set_by": by, "set_at": utcnow()}
            if current is None:
                with contextlib.suppress(DuplicateKeyError):
                    await PatientThresholds(id=pid, **fields).insert()
                    return vars(Thresholds()), vars(th)
            elif (await PatientThresholds.get_pymongo_collection().update_one(
                    {"_id": pid, "set_at": current.set_at}, {"$set": fields})).matched_count:
                return vars(Thresholds(**kept)), vars(th)
        raise ApiError("conflict", "The thresholds were changed meanwhile; try again", 409)

    async def _announce(self, pid: PydanticObjectId, by: Principal, changed: dict[str, dict[str, Any]],
                        thresholds: dict[str, Any]) -> None:
        await self.broadcaster.to_patient(pid, "vitals:thresholds-changed", {
            "patient_id": str(pid), "thresholds": thresholds, "changed": changed,
            "by": {"id": by.id, "name": by.name}, "at": iso(utcnow())})
        team = [pid, *[link.member_id for link in await care_team(pid) if link.member_id != by.user_id]]
        summary = [Text("thresholds.change", name=THRESHOLD_NAMES.get(k, k), old=c["old"], new=c["new"])
                   for k, c in changed.items()]
        await self.notes.notify(team, "thresholds_changed", Text("thresholds.changed.title"),
                                Text("thresholds.changed.body", by=by.name, changes=summary),
                                patient_id=pid, data={"changed": changed, "by": by.id})

    async def _reload(self, msg: dict[str, Any]) -> None:
        """Thresholds changed (in any process): reload them and apply them to running streams."""
        pid = PydanticObjectId(msg["patient_id"])
        thresholds = await self.load_thresholds(pid)
        for listener in self.on_thresholds_changed:
            listener(pid, thresholds)


RHYTHM_EVENTS = {"tachycardia": Text("vital.tachycardia.title"), "bradycardia": Text("vital.bradycardia.title"),
                 "irregular_rhythm": Text("vital.irregular_rhythm.title"),
                 "frequent_ectopy": Text("vital.frequent_ectopy.title")}
SIGNAL_EVENTS = {"poor_signal": Text("vital.poor_signal.title"), "no_signal": Text("vital.no_signal.title"),
                 "stalled": Text("vital.stalled.title")}
THRESHOLD_NAMES = {"tachycardia_hr": Text("threshold.tachycardia_hr"),
                   "tachycardia_critical_hr": Text("threshold.tachycardia_critical_hr"),
                   "tachycardia_s": Text("threshold.tachycardia_s"), "bradycardia_hr": Text("threshold.bradycardia_hr"),
                   "bradycardia_critical_hr": Text("threshold.bradycardia_critical_hr"),
                   "bradycardia_s": Text("threshold.bradycardia_s"), "poor_quality": Text("threshold.poor_quality"),
                   "poor_signal_s": Text("threshold.poor_signal_s"), "stalled_s": Text("threshold.stalled_s"),
                   "frequent_ectopy_per_min": Text("threshold.frequent_ectopy_per_min"),
                   "frequent_ectopy_s": Text("threshold.frequent_ectopy_s")}


def alerts_to(notes: Notifier) -> EventSink:
    """A sink turning started events into notifications: rhythm events to the patient and the whole care
    team, signal problems to the patient, to check the sensor. Critical ones are left to the emergency
    alert path (``server.alerts.alerts``), which escalates them."""

    async def sink(event: VitalEvent) -> None:
        if event.phase != "started" or event.severity == "critical" or event.type not in RHYTHM_EVENTS | SIGNAL_EVENTS:
            return
        rate = event.detail.get("rate") or event.detail.get("hr") or event.detail.get("ectopic_per_min")
        signal, n = event.signal or Text("vital.sensor"), round(rate) if isinstance(rate, (int, float)) else None
        body = "" if n is None else Text("vital.ectopy.body", signal=signal, rate=n) \
            if event.type == "frequent_ectopy" else Text("vital.rate.body", signal=signal, rate=n)
        if event.type in SIGNAL_EVENTS:
            await notes.notify([event.patient_id], "alert", SIGNAL_EVENTS[event.type], Text("vital.check_sensor"),
                               patient_id=event.patient_id, data={"vital_event_id": str(event.id)}, urgency="low")
            return
        team = [event.patient_id, *[link.member_id for link in await care_team(event.patient_id)]]
        await notes.notify(team, "alert", RHYTHM_EVENTS[event.type], body, patient_id=event.patient_id,
                           data={"vital_event_id": str(event.id), "type": event.type},
                           urgency="high")

    return sink
