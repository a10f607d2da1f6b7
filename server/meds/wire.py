"""What the meds concern sends: medications and their changes, doses and adherence, as replies and pushed
events."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import Field

from server.core.wire import Time, Wire
from server.meds.documents import DoseState, Form, Weekday


class ScheduleOut(Wire):
    times: list[str] = Field(description="HH:MM in the patient's time zone")
    days: list[Weekday]
    start_date: date | None
    end_date: date | None
    as_needed: bool


class MedicationOut(Wire):
    id: str
    patient_id: str
    name: str
    strength: str | None
    form: Form
    dose: str | None
    instructions: str | None
    schedule: ScheduleOut
    drawer: int | None = Field(description="The medicine box's drawer (1-32)")
    stock: int | None
    low_stock_at: int
    low_stock: bool
    image_id: str | None
    revision: int
    created_at: Time
    updated_at: Time
    archived_at: Time | None


class ActorRef(Wire):
    id: str
    role: str


class MedChanged(Wire):
    change: Literal["created", "updated", "archived", "stock"]
    medication: MedicationOut
    by: ActorRef | None = Field(description="Null when the server changed it (stock used by a confirmed dose)")


class MedicationChangeOut(Wire):
    id: str
    patient_id: str
    medication_id: str
    at: Time
    actor_id: str | None
    actor_role: str | None
    change: Literal["created", "updated", "archived", "stock"]
    changes: dict[str, dict[str, Any]] = Field(description="Each field's value before and after")


class DoseOut(Wire):
    id: str
    patient_id: str
    medication_id: str
    medication_name: str
    dose: str | None
    drawer: int | None
    planned_at: str = Field(description="The planned local date and time, e.g. 2026-03-08T08:00")
    timezone: str
    due_at: Time
    state: DoseState
    reminded_at: Time | None
    confirmed_at: Time | None
    confirmed_via: Literal["app", "box"] | None
    missed_at: Time | None


class DoseDue(DoseOut):
    late_ms: int = Field(description="How late the push is after due_at")


class Tally(Wire):
    due: int
    confirmed: int
    missed: int
    pending: int
    adherence: float | None = Field(description="confirmed / (confirmed + missed)")


class MedicationTally(Tally):
    medication_id: str
    name: str


class WeekTally(Tally):
    week_start: date
    medications: dict[str, Tally]


class Adherence(Wire):
    patient_id: str
    timezone: str
    since: Time
    medications: list[MedicationTally]
    weeks: list[WeekTally]
