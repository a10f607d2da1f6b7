"""What the vitals concern sends: blood pressure readings and statistics, vital events and thresholds,
forecasts and triage answers, as replies and pushed events."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from server.core.wire import Time, Wire
from server.vitals.documents import Arm, Position, Window

Category = Literal["normal", "elevated", "hypertension_stage_1", "hypertension_stage_2", "hypertensive_crisis"]


class BPReadingOut(Wire):
    id: str
    patient_id: str
    systolic: float = Field(description="mmHg")
    diastolic: float = Field(description="mmHg")
    pulse: float | None = Field(description="/min")
    measured_at: Time
    position: Position | None
    arm: Arm | None
    note: str | None
    category: Category = Field(description="ACC/AHA 2017")
    source: Literal["app", "device"]
    entered_by: str
    entered_by_role: Literal["patient", "caregiver", "clinician", "device"]
    device_id: str | None
    created_at: Time
    updated_at: Time | None
    deleted_at: Time | None


class BPDeleted(Wire):
    id: str
    patient_id: str


class MeanMinMax(Wire):
    mean: float | None
    min: float | None
    max: float | None


class PartOfDay(Wire):
    count: int
    systolic: float | None
    diastolic: float | None


class Trend(Wire):
    systolic: float | None = Field(description="mmHg per day")
    diastolic: float | None


class BPStats(Wire):
    patient_id: str
    window: Window
    start: Time
    end: Time
    timezone: str = Field(description="The patient's, for morning (04-12) and evening (18-24)")
    count: int
    systolic: MeanMinMax
    diastolic: MeanMinMax
    pulse: MeanMinMax
    time_in_range: float | None = Field(description="Share of readings with 90 <= systolic < 130 and diastolic < 80")
    morning: PartOfDay
    evening: PartOfDay
    trend_per_day: Trend


class VitalEventOut(Wire):
    id: str
    patient_id: str
    stream_id: str | None
    signal: str | None
    type: str = Field(examples=["tachycardia", "bradycardia", "irregular_rhythm", "poor_signal"])
    phase: str = Field(examples=["started", "ended"])
    severity: str = Field(examples=["warning", "critical"])
    at: Time
    detail: dict[str, Any]


class Thresholds(Wire):
    """A patient's alert thresholds (those left unset are the defaults)."""

    tachycardia_hr: float
    tachycardia_critical_hr: float
    tachycardia_s: float
    bradycardia_hr: float
    bradycardia_critical_hr: float
    bradycardia_s: float
    irregular_cv: float
    irregular_nrmssd: float
    irregular_window_s: float
    irregular_coverage: float
    irregular_min_rr: int
    irregular_s: float
    poor_quality: float
    poor_signal_s: float
    stalled_s: float
    frequent_ectopy_per_min: float
    frequent_ectopy_s: float
    rate_beats: int
    tolerance_s: float
    clear_s: float


class PatientThresholds(Thresholds):
    patient_id: str


class Change(Wire):
    old: float
    new: float


class ByName(Wire):
    id: str
    name: str


class ThresholdsChanged(Wire):
    patient_id: str
    thresholds: Thresholds
    changed: dict[str, Change]
    by: ByName
    at: Time


class Reason(Wire):
    code: str
    message: str
    details: dict[str, Any]


class ModelRef(Wire):
    name: str
    version: int
    synthetic: bool


class MeanBP(Wire):
    systolic: float
    diastolic: float


class BasedOn(Wire):
    readings_28d: int
    days_since_last: float


class Forecast(Wire):
    """A forecast (`available: true`), or why there is none yet (`available: false`, `reason`)."""

    patient_id: str
    available: bool
    disclaimer: str
    reason: Reason | None = Field(None, description="Why no forecast (available: false)")
    id: str | None = None
    as_of: Time | None = None
    horizon_days: int | None = None
    next_7d_mean: MeanBP | None = None
    p_stage2_week: float | None = None
    based_on: BasedOn | None = None
    model: ModelRef | None = None
    synthetic: bool | None = None
    label: str | None = None


class ForecastPushed(Forecast):
    reading_id: str


class Fired(Wire):
    rule: str
    level: str
    reason: str
    matched: list[str]


class Recognised(Wire):
    symptoms: list[str]
    from_text: list[str]


class TriageBP(Wire):
    systolic: float | None
    diastolic: float | None
    crisis: bool
    source: Literal["given", "latest"]


class TriageModel(Wire):
    name: str
    version: int
    probabilities: dict[str, float]
    level: str
    escalated: bool


class TriageOut(Wire):
    level: Literal["routine", "urgent", "emergency"]
    fired: list[Fired]
    recognised: Recognised
    bp: TriageBP | None
    rules_version: str
    model: TriageModel | None
    advice: str
    disclaimer: str
    patient_id: str
    alert_id: str | None = Field(description="The emergency alert raised, if any")
