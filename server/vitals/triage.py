"""``ml:triage``: symptom triage for a patient (by the patient, or a linked caregiver or clinician),
access-checked and audited with its outcome. The rules live in ``ml.triage``; the pressure they look at
is the one given, or else the patient's latest reading of the last ``RECENT_BP`` hours. An emergency
raises the same emergency alert as a hypertensive-crisis reading, to every linked caregiver and clinician.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ml.triage import TriageModel, triage
from server.care import audit
from server.care.access import require_patient
from server.core.documents import utcnow
from server.core.errors import ApiError
from server.core.i18n import Text, sentences
from server.core.identity import Client, Principal
from server.core.ports import AlertRaiser
from server.vitals.bp_history import readings
from server.vitals.documents import TriageIn

RECENT_BP = timedelta(hours=2)
CLOCK_SLACK = timedelta(minutes=5)
# What the emergency rules of ``ml.triage`` tell, in each recipient's language (English: the rules' own reasons).
REASONS = {"chest_pain": Text("triage.chest_pain"), "stroke_fast": Text("triage.stroke_fast"),
           "severe_breathlessness": Text("triage.severe_breathlessness"), "fainting": Text("triage.fainting"),
           "sudden_confusion": Text("triage.sudden_confusion"),
           "bp_crisis_with_symptoms": Text("triage.bp_crisis_with_symptoms")}


class Triage:
    def __init__(self, alerts: AlertRaiser, model: TriageModel | None = None) -> None:
        self.alerts = alerts
        self.model = model  # a trained classifier, if one is plugged in

    async def assess(self, principal: Principal, body: TriageIn, client: Client) -> dict[str, Any]:
        if not body.symptoms and not (body.free_text or "").strip():
            raise ApiError("invalid_payload", "Give symptoms, free_text or both", 422)
        if body.patient_id is None and principal.role != "patient":
            raise ApiError("invalid_payload", "patient_id is required", 422, {"field": "patient_id"})
        pid = await require_patient(principal, body.patient_id or principal.user_id, "ml.triage", client)
        systolic, diastolic, bp_source = body.systolic, body.diastolic, "given"
        if systolic is None and diastolic is None:
            now = utcnow()
            latest = await readings(pid, now - RECENT_BP, now + CLOCK_SLACK, limit=1)
            if latest["times"].size:
                systolic, diastolic, bp_source = float(latest["systolic"][0]), float(latest["diastolic"][0]), "latest"
        answer = triage(body.symptoms, body.free_text, systolic, diastolic, self.model)
        if answer["bp"] is not None:
            answer["bp"]["source"] = bp_source
        answer["patient_id"] = str(pid)
        answer["alert_id"] = None
        if answer["level"] == "emergency":
            reasons = [REASONS.get(f["rule"], f["reason"]) for f in answer["fired"] if f["level"] == "emergency"]
            try:
                alert = await self.alerts.raise_alert(
                    pid, "symptom_emergency", Text("alert.symptoms.title"),
                    sentences(reasons) if reasons else Text("alert.symptoms.body"),
                    source={"type": "triage", "rules": [f["rule"] for f in answer["fired"]]}, raised_by=principal,
                    data={"symptoms": answer["recognised"]["symptoms"], "bp": answer["bp"]}, on_demand=True)
            except ApiError as exc:  # the day's cap of alerts raised on demand
                await audit.record("ml.triage.outcome", principal=principal, patient_id=pid, client=client,
                                   outcome="denied", level=answer["level"], alert_refused=exc.code)
                raise
            answer["alert_id"] = str(alert.id)
        await audit.record("ml.triage.outcome", principal=principal, patient_id=pid, client=client,
                           level=answer["level"], rules=[f["rule"] for f in answer["fired"]],
                           alert_id=answer["alert_id"])
        return answer
