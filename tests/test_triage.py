"""Symptom triage: the rule table case by case, the classifier interface (it may raise the level, never
lower it), and ``ml:triage`` over a real socket raising the emergency alert to the care team."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from ml.triage import DISCLAIMER, RULES, SYMPTOMS, symptoms_in_text, triage
from server.care.documents import AuditEntry
from tests.helpers import Api

CASES = [
    # (symptoms, free text, systolic, diastolic, level, rules expected to fire)
    (["chest_pain"], None, None, None, "emergency", {"chest_pain"}),
    (["face_droop"], None, None, None, "emergency", {"stroke_fast"}),
    (["arm_weakness"], None, None, None, "emergency", {"stroke_fast"}),
    ([], "His speech is slurred and his face is drooping", None, None, "emergency", {"stroke_fast"}),
    (["severe_shortness_of_breath"], None, None, None, "emergency", {"severe_breathlessness"}),
    ([], "I fainted in the kitchen this morning", None, None, "emergency", {"fainting"}),
    (["confusion"], None, None, None, "emergency", {"sudden_confusion", }),
    (["severe_headache"], None, 192, 110, "emergency", {"bp_crisis_with_symptoms", "bp_crisis", "severe_headache"}),
    (["vision_change"], None, 150, 125, "emergency", {"bp_crisis_with_symptoms", "bp_crisis", "vision_change"}),
    (["severe_headache"], None, None, None, "urgent", {"severe_headache"}),
    ([], "feeling fine", 185, 95, "urgent", {"bp_crisis"}),
    (["vision_change"], None, 150, 95, "urgent", {"vision_change"}),
    (["palpitations"], None, None, None, "urgent", {"palpitations"}),
    (["shortness_of_breath"], None, 120, 80, "urgent", {"breathlessness"}),
    (["cough", "fever"], None, None, None, "routine", set()),
    (["headache"], None, 170, 110, "routine", set()),
    ([], "No chest pain, just a mild headache and I am a bit dizzy", None, None, "routine", set()),
]


@pytest.mark.parametrize(("symptoms", "text", "sys_", "dia", "level", "rules"), CASES)
def test_rule_table(symptoms: list[str], text: str | None, sys_: float | None, dia: float | None, level: str,
                    rules: set[str]) -> None:
    answer = triage(symptoms, text, sys_, dia)
    assert answer["level"] == level, answer
    assert {f["rule"] for f in answer["fired"]} == rules
    assert [f["level"] for f in answer["fired"]] == sorted((f["level"] for f in answer["fired"]),
                                                           key=["emergency", "urgent", "routine"].index)
    assert all(f["reason"] for f in answer["fired"])
    assert answer["disclaimer"] == DISCLAIMER and "not a diagnosis" in answer["disclaimer"] and answer["advice"]


def test_free_text_recognition_and_vocabulary() -> None:
    assert symptoms_in_text("I have crushing chest pain and can't breathe") == {"chest_pain",
                                                                                 "severe_shortness_of_breath"}
    assert symptoms_in_text("no chest pain, not dizzy") == set()
    assert symptoms_in_text("Worst headache of my life, sudden headache, blurry vision") >= {"severe_headache",
                                                                                             "vision_change"}
    answer = triage([], "no chest pain, just a mild headache and I am a bit dizzy")
    assert answer["recognised"]["from_text"] == ["dizziness", "headache"]
    assert all(r.any_of <= SYMPTOMS.keys() for r in RULES)
    with pytest.raises(ValueError):
        triage(["not_a_symptom"])


class _Model:
    """A classifier plugged in through the ``TriageModel`` interface."""

    name, version = "fixed", "1"

    def __init__(self, probabilities: Mapping[str, float]) -> None:
        self.probabilities = probabilities
        self.seen: list[frozenset[str]] = []

    def predict(self, symptoms: frozenset[str], free_text: str | None) -> Mapping[str, float]:
        self.seen.append(symptoms)
        return self.probabilities


def test_a_model_may_raise_the_level_but_never_lower_it() -> None:
    worried = _Model({"routine": 0.1, "urgent": 0.8, "emergency": 0.1})
    answer = triage(["cough"], "coughing for a week", model=worried)
    assert answer["level"] == "urgent" and answer["model"]["escalated"] is True and answer["fired"] == []
    assert worried.seen == [frozenset({"cough"})]
    relaxed = _Model({"routine": 0.99})
    answer = triage(["chest_pain"], model=relaxed)
    assert answer["level"] == "emergency" and answer["model"]["escalated"] is False
    unsure = _Model({"emergency": 0.3, "routine": 0.7})
    assert triage(["cough"], model=unsure)["level"] == "routine"


async def test_triage_event_raises_the_emergency_alert(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    await api.link(patient, carer)
    me, carer_sock = await api.socket(patient), await api.socket(carer)

    routine = await carer_sock.ok("ml:triage", {"patient_id": patient.id, "symptoms": ["cough"]})
    assert routine["level"] == "routine" and routine["alert_id"] is None and routine["bp"] is None

    answer = await me.ok("ml:triage", {"symptoms": ["face_droop"], "free_text": "my arm feels weak"})
    assert answer["level"] == "emergency" and answer["alert_id"] and "not a diagnosis" in answer["disclaimer"]
    assert answer["recognised"]["from_text"] == ["arm_weakness"]
    (alert,) = await carer_sock.events.wait("alert:new")
    assert alert["kind"] == "symptom_emergency" and alert["id"] == answer["alert_id"]

    # The latest reading of the last two hours is the pressure the BP rules look at.
    await me.ok("bp:add", {"systolic": 186, "diastolic": 100, "measured_at": datetime.now(UTC).isoformat()})
    crisis = await carer_sock.ok("ml:triage", {"patient_id": patient.id, "symptoms": ["severe_headache"]})
    assert crisis["level"] == "emergency" and crisis["bp"] == {"systolic": 186, "diastolic": 100, "crisis": True,
                                                               "source": "latest"}
    assert "bp_crisis_with_symptoms" in {f["rule"] for f in crisis["fired"]}

    outcomes = await AuditEntry.find(AuditEntry.action == "ml.triage.outcome").to_list()
    assert [e.details["level"] for e in outcomes if str(e.patient_id) == patient.id] == ["routine", "emergency",
                                                                                         "emergency"]
    for bad in ({"patient_id": patient.id}, {"patient_id": patient.id, "symptoms": ["bogus"]},
                {"symptoms": ["cough"]}, {"patient_id": patient.id, "symptoms": ["cough"], "extra": 1}):
        reply = await carer_sock.call("ml:triage", bad)
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload", bad
