"""What the vitals concern stores (blood pressure readings, vital events, per-patient thresholds, model
versions and predictions) and the requests it accepts."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from beanie import Document, PydanticObjectId
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from pymongo import ASCENDING, DESCENDING, IndexModel

from ml.triage import SYMPTOMS
from server.core.documents import VersionedDocument, iso, utcnow
from server.core.patch import Patch

Position = Literal["sitting", "standing", "lying"]
Arm = Literal["left", "right"]
Window = Literal["day", "week", "month"]


class BPReading(VersionedDocument):
    patient_id: PydanticObjectId
    systolic: float
    diastolic: float
    pulse: float | None = None
    measured_at: datetime
    position: Position | None = None
    arm: Arm | None = None
    note: str | None = None
    category: str
    source: Literal["app", "device"] = "app"
    entered_by: PydanticObjectId  # the user, or for a device its patient (see device_id)
    entered_by_role: str
    device_id: PydanticObjectId | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime | None = None
    updated_by: PydanticObjectId | None = None
    deleted_at: datetime | None = None
    deleted_by: PydanticObjectId | None = None

    class Settings:
        name = "bp_readings"
        indexes = [
            # A page of the history: the patient's readings not deleted, over a span of ``_id`` (cursor_page)
            IndexModel([("patient_id", ASCENDING), ("deleted_at", ASCENDING), ("_id", DESCENDING)],
                       name="patient_live"),
            IndexModel([("patient_id", ASCENDING), ("measured_at", ASCENDING)], name="patient_measured"),
        ]

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "patient_id": str(self.patient_id), "systolic": self.systolic,
                "diastolic": self.diastolic, "pulse": self.pulse, "measured_at": iso(self.measured_at),
                "position": self.position, "arm": self.arm, "note": self.note, "category": self.category,
                "source": self.source, "entered_by": str(self.entered_by), "entered_by_role": self.entered_by_role,
                "device_id": str(self.device_id) if self.device_id else None, "created_at": iso(self.created_at),
                "updated_at": iso(self.updated_at), "deleted_at": iso(self.deleted_at)}


class BPValues(BaseModel):
    model_config = ConfigDict(extra="forbid")
    systolic: float = Field(ge=0, le=1000)
    diastolic: float = Field(ge=0, le=1000)
    pulse: float | None = Field(None, ge=0, le=1000)
    measured_at: AwareDatetime
    position: Position | None = None
    arm: Arm | None = None
    note: str | None = Field(None, max_length=500)


class BPIn(BPValues):
    """``patient_id`` may be left out by the patient and by a cuff (it is theirs)."""

    patient_id: str | None = Field(None, max_length=64)


class BPUpdate(Patch):
    keep = frozenset({"systolic", "diastolic", "measured_at"})
    reading_id: str = Field(max_length=64)
    systolic: float | None = Field(None, ge=0, le=1000)
    diastolic: float | None = Field(None, ge=0, le=1000)
    pulse: float | None = Field(None, ge=0, le=1000)
    measured_at: AwareDatetime | None = None
    position: Position | None = None
    arm: Arm | None = None
    note: str | None = Field(None, max_length=500)


class BPDelete(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reading_id: str = Field(max_length=64)
    reason: str | None = Field(None, max_length=200)


class BPList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(max_length=64)
    before: str | None = Field(None, max_length=64)
    limit: int = Field(50, ge=1, le=200)


class BPStatsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(max_length=64)
    window: Window = "week"
    end: AwareDatetime | None = None


# --- vital events ------------------------------------------------------------------------------------

class VitalEvent(VersionedDocument):
    patient_id: PydanticObjectId
    stream_id: PydanticObjectId | None = None
    signal: str | None = None
    type: str
    phase: str = "started"  # started | ended
    severity: str = "warning"
    at: datetime = Field(default_factory=utcnow)
    detail: dict[str, Any] = Field(default_factory=dict)

    class Settings:
        name = "vital_events"
        indexes = [IndexModel([("patient_id", ASCENDING), ("_id", DESCENDING)], name="patient_recent")]

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "patient_id": str(self.patient_id),
                "stream_id": str(self.stream_id) if self.stream_id else None, "signal": self.signal,
                "type": self.type, "phase": self.phase, "severity": self.severity, "at": iso(self.at),
                "detail": self.detail}


# The clinical limits of what a clinician may set (docs/client-guide.md, "Alert thresholds"): beyond them a
# threshold would silence an alarm a patient needs (a critical tachycardia at 300/min never fires, a critical
# bradycardia at 15/min fires only in asystole, an alarm held back for ten minutes) or fire on normal rhythm.
THRESHOLD_LIMITS: dict[str, tuple[float, float]] = {
    "tachycardia_hr": (90, 200),  # /min
    "tachycardia_critical_hr": (100, 220),  # /min
    "tachycardia_s": (5, 120),  # seconds a fast rate lasts before it is an event
    "bradycardia_hr": (35, 70),
    "bradycardia_critical_hr": (30, 60),
    "bradycardia_s": (5, 120),
    "poor_quality": (0.2, 0.8),  # signal quality (0..1) below which the signal is poor
    "poor_signal_s": (3, 60),
    "stalled_s": (2, 60),  # seconds without samples before the stream counts as stalled
    "frequent_ectopy_per_min": (1, 30),  # ectopic beats a minute above which frequent ectopy is told
    "frequent_ectopy_s": (10, 300),
}


def _limit(name: str) -> Any:
    low, high = THRESHOLD_LIMITS[name]
    return Field(None, ge=low, le=high)


class ThresholdsIn(BaseModel):
    """What a clinician may tune, within ``THRESHOLD_LIMITS``; anything left out keeps its value."""

    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(max_length=64)
    # Names are those of ``ml.rhythm_events.Thresholds``.
    tachycardia_hr: float | None = _limit("tachycardia_hr")
    tachycardia_critical_hr: float | None = _limit("tachycardia_critical_hr")
    tachycardia_s: float | None = _limit("tachycardia_s")
    bradycardia_hr: float | None = _limit("bradycardia_hr")
    bradycardia_critical_hr: float | None = _limit("bradycardia_critical_hr")
    bradycardia_s: float | None = _limit("bradycardia_s")
    poor_quality: float | None = _limit("poor_quality")
    poor_signal_s: float | None = _limit("poor_signal_s")
    stalled_s: float | None = _limit("stalled_s")
    frequent_ectopy_per_min: float | None = _limit("frequent_ectopy_per_min")
    frequent_ectopy_s: float | None = _limit("frequent_ectopy_s")


class PatientThresholds(VersionedDocument):
    id: PydanticObjectId  # type: ignore[assignment]  # the patient's id
    values: dict[str, float] = Field(default_factory=dict)
    set_by: PydanticObjectId | None = None
    set_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "patient_thresholds"


# --- models ------------------------------------------------------------------------------------------

class ModelVersion(VersionedDocument):
    name: str
    version: int
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str
    training_data: dict[str, Any]
    synthetic: bool
    metrics: dict[str, Any]
    features: list[str]
    kept: bool
    card: dict[str, Any]
    file_id: PydanticObjectId
    size: int
    sha256: str
    active: bool = False
    activated_at: datetime | None = None
    activated_by: str | None = None

    class Settings:
        name = "model_versions"
        indexes = [IndexModel([("name", ASCENDING), ("version", ASCENDING)], unique=True, name="name_version"),
                   IndexModel([("name", ASCENDING), ("active", ASCENDING)], name="name_active")]

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "created_at": iso(self.created_at),
                "created_by": self.created_by, "training_data": self.training_data, "synthetic": self.synthetic,
                "metrics": self.metrics, "features": self.features, "kept": self.kept, "active": self.active,
                "activated_at": iso(self.activated_at), "size": self.size, "sha256": self.sha256}


class Prediction(VersionedDocument):
    """One prediction, with the model version that made it and whether that model is synthetic-trained."""

    patient_id: PydanticObjectId
    model_name: str
    model_version: int
    synthetic: bool
    label: str | None = None
    made_at: datetime = Field(default_factory=utcnow)
    as_of: datetime
    trigger: str  # "request" | "reading"
    requested_by: PydanticObjectId | None = None
    output: dict[str, Any]

    class Settings:
        name = "predictions"
        indexes = [IndexModel([("patient_id", ASCENDING), ("_id", DESCENDING)], name="patient_recent")]


class ForecastIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(max_length=64)


class TriageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str | None = Field(None, max_length=64)
    symptoms: list[str] = Field(default_factory=list, max_length=30)
    free_text: str | None = Field(None, max_length=2000)
    systolic: float | None = Field(None, ge=40, le=300)
    diastolic: float | None = Field(None, ge=20, le=200)

    @field_validator("symptoms")
    @classmethod
    def known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - SYMPTOMS.keys())
        if unknown:
            raise ValueError(f"unknown symptom codes {unknown[:5]}; known: {sorted(SYMPTOMS)}")
        return value


DOCUMENTS: list[type[Document]] = [BPReading, VitalEvent, PatientThresholds, ModelVersion, Prediction]


def measured_between(pid: PydanticObjectId, start: datetime, end: datetime | None = None) -> dict[str, Any]:
    """The patient's readings measured in ``[start, end)``, deleted ones too: the filter of ``patient_measured``
    alone, which the embedded store reads just the window of (with ``deleted_at`` too, it reads every reading of
    the patient). The caller leaves out the deleted."""
    return {"patient_id": pid, "measured_at": {"$gte": start, **({"$lt": end} if end else {})}}


def live_between(pid: PydanticObjectId, start: datetime, end: datetime, order: int, limit: int,
                 ) -> list[dict[str, Any]]:
    """An aggregation of the patient's readings not deleted, measured in ``[start, end)``, by ``measured_at``
    (``order`` 1 or -1), at most ``limit``: its first stage is ``measured_between`` alone, the deleted left out in
    the next, so that the limit counts live readings only."""
    return [{"$match": measured_between(pid, start, end)}, {"$match": {"deleted_at": None}},
            {"$sort": {"measured_at": order}}, {"$limit": limit}]
