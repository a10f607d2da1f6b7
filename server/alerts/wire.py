"""What the alerts concern sends: alerts (the short form pushed to devices and the full lifecycle),
notifications and push registrations, as replies and pushed events."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from server.alerts.documents import ProviderName, Status
from server.core.ports import Urgency
from server.core.wire import Page, Time, Wire

Role = Literal["patient", "caregiver", "clinician"]


class Who(Wire):
    """Who acknowledged or resolved an alert, and when."""

    user_id: str
    role: Role
    name: str | None
    note: str | None = None
    at: Time | None


class PatientName(Wire):
    id: str
    name: str


class EmergencyContact(Wire):
    id: str
    name: str
    phone: str | None
    email: str | None
    relationship: str | None


class AlertPush(Wire):
    """An alert as a recipient's device is sent it (`alert:new`): small whatever the number of recipients."""

    id: str
    patient: PatientName
    kind: str = Field(examples=["bp_crisis", "vital_tachycardia", "triage"])
    title: str
    body: str
    urgency: Literal["high", "critical"]
    level: int = Field(description="Escalation level: 0 raised, 1 repeated, 2 outward")
    status: Status
    raised_at: Time
    data: dict[str, Any] = Field(description="What raised it (the reading, the vital event, the triage)")
    emergency_contacts: list[EmergencyContact]
    recipients: int = Field(description="How many people received it")
    acknowledged_by: Who | None


class AlertEscalated(AlertPush):
    escalation: int = Field(description="The escalation level reached")


class AlertAckReply(AlertPush):
    """The alert after the acknowledgement, in its short form."""

    acknowledged_by_you: bool = Field(description="False when someone else had acknowledged it first")


class Recipient(Wire):
    user_id: str
    role: Role
    name: str | None = Field(None, description="Only in alert:get and GET /api/alerts/{id}")


class Delivery(Wire):
    user_id: str
    device_id: str
    received_at: Time


class AlertOut(Wire):
    """An alert's lifecycle: raised, emitted, escalated, acknowledged by whom, resolved."""

    id: str
    patient: PatientName
    kind: str
    title: str
    body: str
    urgency: Literal["high", "critical"]
    level: int
    status: Status
    raised_at: Time
    data: dict[str, Any]
    emergency_contacts: list[EmergencyContact]
    recipients: list[Recipient]
    acknowledged_by: Who | None
    source: dict[str, Any]
    raised_by: dict[str, Any] | None
    emitted_at: Time | None
    escalations: list[dict[str, Any]]
    acknowledged_at: Time | None
    resolved_at: Time | None
    resolved_by: Who | None
    resolution_note: str | None


class AlertDetail(AlertOut):
    deliveries: list[Delivery] = Field(description="Which device confirmed receipt when")


class Received(Wire):
    alert_id: str
    device_id: str


class AlertAcknowledged(Wire):
    alert_id: str
    patient_id: str
    by: Who | None
    message: str = Field(examples=["Maria is handling it"])


class AlertResolved(Wire):
    alert_id: str
    patient_id: str
    by: Who | None
    note: str | None


class NotificationOut(Wire):
    id: str
    kind: str = Field(examples=["alert", "reminder", "dose_missed", "missed_call", "device_disconnected"])
    title: str
    body: str
    urgency: Urgency
    patient_id: str | None
    data: dict[str, Any]
    created_at: Time
    read_at: Time | None


class NotificationPage(Page[NotificationOut]):
    """A page of notifications with the unread count."""

    unread: int


class Unread(Wire):
    unread: int


class Marked(Unread):
    marked: int


class Deleted(Unread):
    deleted: str


class Registered(Wire):
    device_id: str
    provider: ProviderName
    created_at: Time
    enabled: bool = Field(description="Whether this server has the provider configured")


class Removed(Wire):
    removed: int



class DoseReceipt(Wire):
    dose_id: str
    device_id: str


class NotificationReceipt(Wire):
    id: str
    device_id: str


class Outbox(Wire):
    waiting: int = Field(description="Pushes waiting now")
    in_flight: int = Field(description="Of those, claimed under a lease")
    retrying: int = Field(description="Of those, failed and waiting for their next attempt")
    oldest_waiting_s: float | None = Field(description="The oldest waiting one's age")


class PushHistory(Wire):
    kept_s: float = Field(description="How long outcomes are kept (`HEALTHMATE_PUSH_HISTORY_S`)")
    outcomes: dict[str, dict[str, int]] = Field(
        description="Per provider, per outcome (`sent`, `retried`, `dead_token`, `gave_up`, `obsolete`): how many")
    sent_last_hour: int
    latency_ms_p50: float | None = Field(description="From a push's writing to its send, over the last hour")
    latency_ms_p99: float | None


class PushStats(Wire):
    """Counts only, no user's data. The same counters, per process, are Prometheus'
    `healthmate_push_total{provider,outcome}` and `healthmate_push_outbox_depth`."""

    providers: list[str] = Field(description="The providers this server has configured")
    workers: int
    outbox: Outbox
    history: PushHistory


class VapidKey(Wire):
    public_key: str = Field(description="base64url of the uncompressed P-256 point")
