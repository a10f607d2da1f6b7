"""Symptom triage: a transparent rule table for red flags, answering emergency / urgent / routine with
the rules that fired, and a pluggable interface for a trained classifier.

The rules are the whole logic and read as a table (``RULES``): a rule fires when any of its symptoms
is present (and, for the blood-pressure rules, when the pressure is above 180/120, the ACC/AHA 2017
crisis threshold). The most severe fired rule decides the level. Symptoms come as codes from
``SYMPTOMS`` and are also recognised in free text by plain phrases (``PHRASES``), skipping negated
mentions ("no chest pain"). A classifier (``TriageModel``) may add its opinion, but it can only raise
the level the rules give, never lower it. Nothing here is a diagnosis, and every answer says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Level = Literal["emergency", "urgent", "routine"]
RANK: dict[str, int] = {"routine": 0, "urgent": 1, "emergency": 2}
RULES_VERSION = "triage-rules/1"
CRISIS_SYS, CRISIS_DIA = 180.0, 120.0
MODEL_THRESHOLD = 0.5  # a classifier's level counts when its probability reaches this
DISCLAIMER = ("This is an automated check for warning signs, not a diagnosis or medical advice. If you think it is "
              "an emergency, call your local emergency number now.")
ADVICE: dict[str, str] = {
    "emergency": "Call your local emergency number (e.g. 112 or 911) now. Do not drive yourself. "
                 "Your care team has been alerted.",
    "urgent": "Contact your clinician today, or an urgent care service if you cannot reach them. "
              "If symptoms get worse, call your local emergency number.",
    "routine": "No warning sign found. Keep monitoring and mention it at your next visit; triage again or seek care "
               "if symptoms change or worsen.",
}

SYMPTOMS: dict[str, str] = {
    "chest_pain": "chest pain, pressure or tightness",
    "face_droop": "one side of the face drooping or numb",
    "arm_weakness": "weakness or numbness of an arm or leg, on one side",
    "speech_difficulty": "slurred speech, or trouble speaking or understanding",
    "severe_shortness_of_breath": "severe shortness of breath, cannot breathe",
    "shortness_of_breath": "shortness of breath",
    "fainting": "fainting, passing out (syncope)",
    "confusion": "sudden confusion",
    "severe_headache": "sudden or severe headache",
    "vision_change": "blurred, double or lost vision",
    "palpitations": "racing, pounding or irregular heartbeat",
    "dizziness": "dizziness or light-headedness",
    "nausea": "nausea or vomiting",
    "nosebleed": "nosebleed",
    "leg_swelling": "swollen ankles or legs",
    "headache": "headache",
    "fatigue": "tiredness",
    "cough": "cough",
    "fever": "fever",
}

# Phrases recognised in free text (lower-cased, word-bounded regular expressions).
PHRASES: dict[str, str] = {
    "chest_pain": r"chest (pain|pressure|tightness|hurts)|pain in (my |the )?chest|crushing",
    "face_droop": r"face (is )?(droop|drooping|numb)|drooping face|one side of (my |the )?face",
    "arm_weakness": r"(arm|leg|hand) (is |feels )?(weak|numb)|can'?t (lift|raise|move) (my )?(arm|leg)"
                    r"|weakness (on|in) one side",
    "speech_difficulty": r"slurr(ed|ing)|can'?t (speak|talk)|trouble (speaking|talking)|words (are )?jumbled",
    "severe_shortness_of_breath": r"can'?t breathe|cannot breathe|struggling to breathe|gasping",
    "shortness_of_breath": r"short(ness)? of breath|breathless|hard to breathe",
    "fainting": r"faint(ed|ing)?|passed out|black(ed)? out|lost consciousness|syncope|collapsed",
    "confusion": r"confus(ed|ion)|disoriented",
    "severe_headache": r"(severe|worst|terrible|excruciating|sudden|thunderclap) headache",
    "vision_change": r"blurr(ed|y) vision|double vision|seeing double|can'?t see|lost (my )?(sight|vision)",
    "palpitations": r"palpitations?|heart (is )?(racing|pounding|fluttering)|irregular heart ?beat",
    "dizziness": r"dizz(y|iness)|light-?headed|vertigo",
    "nausea": r"nause(a|ous)|vomit(ing|ed)?|throwing up",
    "nosebleed": r"nose ?bleed|bleeding nose",
    "headache": r"headache",
}
_NEGATION = re.compile(r"\b(no|not|without|denies|never|don'?t have|do not have)\b[\w\s,]{0,20}$")


@dataclass(frozen=True)
class Rule:
    id: str
    level: Level
    reason: str
    any_of: frozenset[str]
    needs_crisis_bp: bool = False  # fires only with a pressure above 180/120
    crisis_alone: bool = False  # fires on a pressure above 180/120 whatever the symptoms


def _rule(id_: str, level: Level, reason: str, *symptoms: str, crisis: bool = False) -> Rule:
    return Rule(id_, level, reason, frozenset(symptoms), needs_crisis_bp=crisis, crisis_alone=crisis and not symptoms)


RULES: list[Rule] = [
    _rule("chest_pain", "emergency", "Chest pain or pressure can be a heart attack.", "chest_pain"),
    _rule("stroke_fast", "emergency", "Face drooping, arm weakness or speech difficulty are stroke signs (FAST).",
          "face_droop", "arm_weakness", "speech_difficulty"),
    _rule("severe_breathlessness", "emergency", "Severe shortness of breath needs help at once.",
          "severe_shortness_of_breath"),
    _rule("fainting", "emergency", "Fainting (loss of consciousness) needs to be checked at once.", "fainting"),
    _rule("sudden_confusion", "emergency", "Sudden confusion can be a sign of stroke.", "confusion"),
    _rule("bp_crisis_with_symptoms", "emergency",
          "Blood pressure above 180/120 with symptoms of organ damage (hypertensive emergency).",
          "severe_headache", "confusion", "vision_change", "chest_pain", "shortness_of_breath",
          "severe_shortness_of_breath", "arm_weakness", "face_droop", "speech_difficulty", "nausea", crisis=True),
    _rule("bp_crisis", "urgent", "Blood pressure above 180/120: rest 5 minutes and measure again; contact your "
                                 "clinician today.", crisis=True),
    _rule("severe_headache", "urgent", "A sudden or severe headache needs a clinician's opinion today.",
          "severe_headache"),
    _rule("vision_change", "urgent", "A change in vision needs a clinician's opinion today.", "vision_change"),
    _rule("breathlessness", "urgent", "New shortness of breath needs a clinician's opinion today.",
          "shortness_of_breath"),
    _rule("palpitations", "urgent", "A racing or irregular heartbeat needs a clinician's opinion today.",
          "palpitations"),
]


class TriageModel(Protocol):
    """A trained classifier plugged in beside the rules: probabilities per level for the symptoms."""

    name: str
    version: str

    def predict(self, symptoms: frozenset[str], free_text: str | None) -> Mapping[str, float]: ...


def symptoms_in_text(text: str) -> set[str]:
    """Symptom codes mentioned (and not negated) in free text."""
    lowered = text.lower()
    found = set()
    for code, pattern in PHRASES.items():
        for m in re.finditer(rf"\b(?:{pattern})\b", lowered):
            if not _NEGATION.search(lowered[max(0, m.start() - 40):m.start()]):
                found.add(code)
                break
    return found


def crisis(systolic: float | None, diastolic: float | None) -> bool:
    return (systolic is not None and systolic > CRISIS_SYS) or (diastolic is not None and diastolic > CRISIS_DIA)


def triage(symptoms: Iterable[str], free_text: str | None = None, systolic: float | None = None,
           diastolic: float | None = None, model: TriageModel | None = None) -> dict[str, Any]:
    """The level, the rules that fired (most severe first), advice and the disclaimer."""
    given = set(symptoms)
    unknown = given - SYMPTOMS.keys()
    if unknown:
        raise ValueError(f"unknown symptom codes: {sorted(unknown)}")
    from_text = symptoms_in_text(free_text) if free_text else set()
    present = frozenset(given | from_text)
    is_crisis = crisis(systolic, diastolic)
    fired = [r for r in RULES if (r.crisis_alone and is_crisis)
             or (r.any_of & present and (is_crisis or not r.needs_crisis_bp))]
    fired.sort(key=lambda r: -RANK[r.level])
    level: str = fired[0].level if fired else "routine"
    answer: dict[str, Any] = {
        "level": level,
        "fired": [{"rule": r.id, "level": r.level, "reason": r.reason,
                   "matched": sorted(r.any_of & present)} for r in fired],
        "recognised": {"symptoms": sorted(present), "from_text": sorted(from_text - given)},
        "bp": {"systolic": systolic, "diastolic": diastolic, "crisis": is_crisis} if systolic or diastolic else None,
        "rules_version": RULES_VERSION,
        "model": None,
    }
    if model is not None:
        probs = {k: float(v) for k, v in model.predict(present, free_text).items() if k in RANK}
        top = max(probs, key=lambda k: (probs[k] >= MODEL_THRESHOLD, RANK[k]), default="routine")
        escalates = probs.get(top, 0.0) >= MODEL_THRESHOLD and RANK[top] > RANK[level]
        answer["model"] = {"name": model.name, "version": model.version, "probabilities": probs,
                           "level": top, "escalated": escalates}
        if escalates:
            level = answer["level"] = top
    answer["advice"] = ADVICE[level]
    answer["disclaimer"] = DISCLAIMER
    return answer
