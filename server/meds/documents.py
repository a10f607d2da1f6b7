"""What the meds concern stores and what its clients send: medications with their schedules and change
history, the planned doses (``DoseEvent``), and the request models of their events."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from beanie import Document, PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pymongo import ASCENDING, DESCENDING, IndexModel

from server.core.documents import VersionedDocument, aware, iso, utcnow
from server.core.patch import Patch
from server.meds.dose_times import WEEKDAYS

DoseState = Literal["scheduled", "reminded", "confirmed", "missed"]

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120)]
Short = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=60)]
HourMinute = Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Form = Literal["tablet", "capsule", "liquid", "injection", "inhaler", "drops", "patch", "cream", "powder", "other"]
UploadId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Id = Annotated[str, StringConstraints(max_length=64)]


class Schedule(BaseModel):
    """Times of day (``HH:MM``, the patient's own time zone) on the given days of the week, between
    optional first and last dates; ``as_needed`` medications have no fixed times and get no reminders."""

    model_config = ConfigDict(extra="forbid")
    times: list[HourMinute] = Field(default_factory=list, max_length=12)
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1, max_length=7)
    start_date: date | None = None
    end_date: date | None = None
    as_needed: bool = False

    @model_validator(mode="after")
    def _coherent(self) -> Schedule:
        if not self.as_needed and not self.times:
            raise ValueError("a scheduled medication needs at least one time of day (or as_needed)")
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValueError("end_date is before start_date")
        self.times = sorted(set(self.times))
        self.days = sorted(set(self.days), key=WEEKDAYS.index)
        return self


class MedFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text
    strength: Short | None = None
    form: Form = "tablet"
    dose: Short | None = None
    instructions: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] | None = None
    schedule: Schedule
    drawer: int | None = Field(None, ge=1, le=32)
    stock: int | None = Field(None, ge=0, le=100_000)
    low_stock_at: int = Field(5, ge=0, le=10_000)
    image_id: UploadId | None = None


class MedCreate(MedFields):
    patient_id: Id


class MedUpdate(Patch):
    keep = frozenset({"name", "form", "schedule", "low_stock_at"})
    patient_id: Id
    medication_id: Id
    name: Text | None = None
    strength: Short | None = None
    form: Form | None = None
    dose: Short | None = None
    instructions: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] | None = None
    schedule: Schedule | None = None
    drawer: int | None = Field(None, ge=1, le=32)
    stock: int | None = Field(None, ge=0, le=100_000)
    low_stock_at: int | None = Field(None, ge=0, le=10_000)
    image_id: UploadId | None = None


class MedRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: Id
    medication_id: Id


class MedList(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: Id
    include_archived: bool = False


class Medication(VersionedDocument):
    patient_id: PydanticObjectId
    name: str
    strength: str | None = None
    form: str = "tablet"
    dose: str | None = None
    instructions: str | None = None
    schedule: dict[str, Any]  # a Schedule, dates as ISO strings
    drawer: int | None = None
    stock: int | None = None
    low_stock_at: int = 5
    image_id: str | None = None
    revision: int = 1
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    archived_at: datetime | None = None
    planned_until: datetime | None = None  # the scheduler has created doses due before this

    class Settings:
        name = "medications"
        indexes = [IndexModel([("patient_id", ASCENDING), ("archived_at", ASCENDING)], name="patient_active"),
                   IndexModel([("archived_at", ASCENDING), ("planned_until", ASCENDING)], name="plan_due")]

    @property
    def low_stock(self) -> bool:
        return self.stock is not None and self.stock <= self.low_stock_at

    def plan(self) -> Schedule:
        return Schedule.model_validate(self.schedule)

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "patient_id": str(self.patient_id), "name": self.name,
                "strength": self.strength, "form": self.form, "dose": self.dose, "instructions": self.instructions,
                "schedule": self.schedule, "drawer": self.drawer, "stock": self.stock,
                "low_stock_at": self.low_stock_at, "low_stock": self.low_stock, "image_id": self.image_id,
                "revision": self.revision, "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
                "archived_at": iso(self.archived_at)}


class MedicationChange(VersionedDocument):
    """One change to a medication: who made it and each field's value before and after."""

    patient_id: PydanticObjectId
    medication_id: PydanticObjectId
    at: datetime = Field(default_factory=utcnow)
    actor_id: PydanticObjectId | None = None
    actor_role: str | None = None
    change: str  # created | updated | archived | stock
    changes: dict[str, dict[str, Any]] = Field(default_factory=dict)

    class Settings:
        name = "medication_changes"
        indexes = [
            IndexModel([("patient_id", ASCENDING), ("_id", DESCENDING)], name="patient_recent"),
            IndexModel([("medication_id", ASCENDING), ("_id", DESCENDING)], name="medication_recent"),
        ]

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "patient_id": str(self.patient_id), "medication_id": str(self.medication_id),
                "at": iso(self.at), "actor_id": str(self.actor_id) if self.actor_id else None,
                "actor_role": self.actor_role, "change": self.change, "changes": self.changes}


# --- doses -----------------------------------------------------------------------------------------

class DoseEvent(VersionedDocument):
    patient_id: PydanticObjectId
    medication_id: PydanticObjectId
    slot: str  # the planned local date and time, "2026-03-08T02:30": unique per medication
    timezone: str
    due_at: datetime  # UTC
    medication_name: str
    dose: str | None = None
    drawer: int | None = None
    state: DoseState = "scheduled"
    reminded_at: datetime | None = None
    confirmed_at: datetime | None = None
    confirmed_via: str | None = None  # app | box
    confirmed_by: PydanticObjectId | None = None
    due_owner: str | None = None  # the claim (``DoseClaim``) that reminded it at due time
    reminder_notified_at: datetime | None = None  # the reminder notification claimed (by a ``DoseClaim``, or leased)
    reminder_lease_until: datetime | None = None
    missed_at: datetime | None = None
    missed_notified_at: datetime | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    box_owner: str | None = None
    box_attempts: int = 0
    box_next_at: datetime | None = None  # the next time the box is (re)commanded, while unacknowledged
    box_acked_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "dose_events"
        indexes = [
            IndexModel([("medication_id", ASCENDING), ("slot", ASCENDING)], unique=True, name="slot_unique"),
            IndexModel([("state", ASCENDING), ("due_at", ASCENDING)], name="state_due"),
            IndexModel([("state", ASCENDING), ("missed_notified_at", ASCENDING)], name="missed_unnotified"),
            IndexModel([("state", ASCENDING), ("reminder_notified_at", ASCENDING)], name="reminded_unnotified"),
            IndexModel([("state", ASCENDING), ("lease_until", ASCENDING)], name="state_lease"),
            # The polls for leases that ran out and box commands to resend (with ``passed``: not the nulls).
            IndexModel([("state", ASCENDING), ("reminder_lease_until", ASCENDING)], name="reminder_lease"),
            IndexModel([("state", ASCENDING), ("box_next_at", ASCENDING)], name="box_next"),
            IndexModel([("patient_id", ASCENDING), ("due_at", DESCENDING)], name="patient_due"),
        ]


class DoseClaim(VersionedDocument):
    """A batch of doses one process claimed at due time (each dose's ``due_owner`` is this ``id``): it pushes
    ``dose:due``, tells the box, stores the reminder notifications (``notes``), then deletes this. The claim's
    state lives here, once a batch, rather than as a lease and a "delivered" mark on every dose: a second write
    of each dose, and the embedded store's cost is per document written and index entry. A claim whose lease ran
    out (its process died) is taken over by another process, which finishes it (``pushed``: only the
    notifications were left)."""

    id: str  # type: ignore[assignment]
    owner: str  # the process
    lease_until: datetime
    notes: bool = False  # the claim took the doses' reminder notifications too
    pushed: bool = False  # dose:due pushed and the box told; the notifications were not all stored

    class Settings:
        name = "dose_claims"
        indexes = [IndexModel([("lease_until", ASCENDING)], name="lease")]


def dose_json(d: dict[str, Any]) -> dict[str, Any]:
    """A dose as clients see it, from its stored form."""
    due = aware(d["due_at"])
    return {"id": str(d["_id"]), "patient_id": str(d["patient_id"]), "medication_id": str(d["medication_id"]),
            "medication_name": d["medication_name"], "dose": d.get("dose"), "drawer": d.get("drawer"),
            "planned_at": d["slot"], "timezone": d["timezone"], "due_at": iso(due), "state": d["state"],
            "reminded_at": iso(d.get("reminded_at")), "confirmed_at": iso(d.get("confirmed_at")),
            "confirmed_via": d.get("confirmed_via"), "missed_at": iso(d.get("missed_at"))}


class ConfirmIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(max_length=64)
    dose_id: str = Field(max_length=64)


DOCUMENTS: list[type[Document]] = [Medication, MedicationChange, DoseEvent, DoseClaim]
