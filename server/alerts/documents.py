"""What the alerts concern stores and what its clients send: alerts and their per-device receipts,
notifications, push registrations, and the request models of their events."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from beanie import Document, PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator
from pymongo import ASCENDING, DESCENDING, IndexModel

from server.core.documents import VersionedDocument, iso, utcnow
from server.core.ports import Urgency

Status = Literal["open", "acknowledged", "resolved"]
ProviderName = Literal["fcm", "apns", "webpush", "webhook"]


# --- alerts ----------------------------------------------------------------------------------------

class Alert(VersionedDocument):
    patient_id: PydanticObjectId
    patient_name: str = ""
    kind: str
    title: str
    body: str = ""
    urgency: Literal["high", "critical"] = "high"
    level: int = 0  # escalation level: 0 raised, 1 repeated louder, 2 outward
    source: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    recipients: list[dict[str, Any]] = Field(default_factory=list)  # {user_id, role}
    recipient_ids: list[PydanticObjectId] = Field(default_factory=list)
    emergency_contacts: list[dict[str, Any]] = Field(default_factory=list)
    raised_at: datetime = Field(default_factory=utcnow)
    raised_by: dict[str, Any] | None = None
    status: Status = "open"
    emit_lease_until: datetime
    emitted_at: datetime | None = None
    emitted_by: str | None = None
    escalate_at: datetime | None = None
    escalations: list[dict[str, Any]] = Field(default_factory=list)
    escalation_pending: int | None = None  # the level claimed whose step has not finished yet
    escalation_lease_until: datetime | None = None  # then another process runs that step again
    acknowledged_at: datetime | None = None
    acknowledged_by: dict[str, Any] | None = None
    resolved_at: datetime | None = None
    resolved_by: dict[str, Any] | None = None
    resolution_note: str | None = None

    class Settings:
        name = "alerts"
        indexes = [
            IndexModel([("recipient_ids", ASCENDING), ("status", ASCENDING), ("raised_at", ASCENDING)],
                       name="recipient_status"),
            IndexModel([("recipient_ids", ASCENDING), ("_id", DESCENDING)], name="recipient_recent"),
            IndexModel([("patient_id", ASCENDING), ("_id", DESCENDING)], name="patient_recent"),
            IndexModel([("emitted_at", ASCENDING), ("emit_lease_until", ASCENDING)], name="pending_emit"),
            IndexModel([("status", ASCENDING), ("escalate_at", ASCENDING)], name="pending_escalation"),
            IndexModel([("status", ASCENDING), ("escalation_lease_until", ASCENDING)], name="stalled_escalation"),
        ]

    def push(self) -> dict[str, Any]:
        """What a recipient's device is sent: small, whatever the number of recipients."""
        return {"id": str(self.id), "patient": {"id": str(self.patient_id), "name": self.patient_name},
                "kind": self.kind, "title": self.title, "body": self.body, "urgency": self.urgency,
                "level": self.level, "status": self.status, "raised_at": iso(self.raised_at), "data": self.data,
                "emergency_contacts": self.emergency_contacts, "recipients": len(self.recipients),
                "acknowledged_by": self._who(self.acknowledged_by, self.acknowledged_at)}

    def public(self) -> dict[str, Any]:
        """The lifecycle: raised, emitted, escalated, acknowledged by whom, resolved (deliveries: ``lifecycle``)."""
        return {**self.push(), "source": self.source, "recipients": self.recipients,
                "raised_by": self.raised_by, "emitted_at": iso(self.emitted_at), "escalations": [
                    {**e, "at": iso(e.get("at"))} for e in self.escalations],
                "acknowledged_at": iso(self.acknowledged_at),
                "resolved_at": iso(self.resolved_at), "resolved_by": self._who(self.resolved_by, self.resolved_at),
                "resolution_note": self.resolution_note}

    @staticmethod
    def _who(who: dict[str, Any] | None, at: datetime | None) -> dict[str, Any] | None:
        return None if who is None else {**who, "at": iso(at)}


class AlertDelivery(VersionedDocument):
    """One device's confirmation that it has an alert; the id makes the first one win."""

    id: str  # type: ignore[assignment]  # "<alert>:<user>:<device>"
    alert_id: PydanticObjectId
    user_id: PydanticObjectId
    device_id: str
    received_at: datetime

    class Settings:
        name = "alert_deliveries"
        indexes = [IndexModel([("alert_id", ASCENDING), ("received_at", ASCENDING)], name="alert")]

    @staticmethod
    def key(alert_id: Any, user_id: Any, device_id: str) -> str:
        return f"{alert_id}:{user_id}:{device_id}"


class DailyCount(Document):
    """How often something happened for a patient on one UTC day (``what``: alerts raised on demand, emergency
    webhook calls), attempts past the cap included. Counted with one atomic update, so every process sees the
    same count."""

    id: str  # type: ignore[assignment]  # "<what>:<patient>:<YYYY-MM-DD>"
    times: int = 0

    class Settings:
        name = "daily_counts"


class AlertRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alert_id: str = Field(max_length=64)


class AlertNote(AlertRef):
    note: str | None = Field(None, max_length=500)


class HelpIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(None, max_length=500)


class AlertQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str | None = Field(None, max_length=64)
    status: Status | None = None
    before: str | None = Field(None, max_length=64)
    limit: int = Field(50, ge=1, le=200)


# --- notifications --------------------------------------------------------------------------------

class Notification(VersionedDocument):
    user_id: PydanticObjectId
    kind: str = Field(max_length=40)
    title: str
    body: str = ""
    urgency: Urgency = "normal"
    patient_id: PydanticObjectId | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    read_at: datetime | None = None
    deleted_at: datetime | None = None

    class Settings:
        name = "notifications"
        indexes = [
            IndexModel([("user_id", ASCENDING), ("deleted_at", ASCENDING), ("_id", DESCENDING)], name="user_recent"),
            IndexModel([("user_id", ASCENDING), ("read_at", ASCENDING), ("deleted_at", ASCENDING)], name="user_unread"),
        ]

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "kind": self.kind, "title": self.title, "body": self.body,
                "urgency": self.urgency, "patient_id": str(self.patient_id) if self.patient_id else None,
                "data": self.data, "created_at": iso(self.created_at), "read_at": iso(self.read_at)}


class NotificationRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=64)


class MarkRead(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=64)  # one notification, or all when absent
    all: bool = False


class ListIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    before: str | None = Field(None, max_length=64)
    limit: int = Field(50, ge=1, le=200)
    unread_only: bool = False


# --- push registrations ---------------------------------------------------------------------------

class PushToken(VersionedDocument):
    """One device's address at one provider; the id is ``<user>:<device>:<provider>`` so a device
    re-registering replaces its token."""

    id: str  # type: ignore[assignment]
    user_id: PydanticObjectId
    device_id: str
    provider: ProviderName
    token: str | None = None
    subscription: dict[str, Any] | None = None  # Web Push
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "push_tokens"
        indexes = [IndexModel([("user_id", ASCENDING)], name="user")]

    @property
    def target(self) -> Any:
        return self.subscription if self.provider == "webpush" else self.token

    def public(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "provider": self.provider, "created_at": iso(self.created_at)}


class SubscriptionKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")
    p256dh: str = Field(min_length=20, max_length=200, pattern=r"^[A-Za-z0-9_=-]+$")
    auth: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_=-]+$")


class Subscription(BaseModel):
    model_config = ConfigDict(extra="ignore")  # browsers add expirationTime
    endpoint: HttpUrl
    keys: SubscriptionKeys


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: ProviderName
    token: str | None = Field(None, min_length=8, max_length=4096, pattern=r"^[A-Za-z0-9_:.\-]+$")
    subscription: Subscription | None = None

    @model_validator(mode="after")
    def one_target(self) -> RegisterIn:
        if (self.provider == "webpush") != (self.subscription is not None) or \
                (self.provider != "webpush") != (self.token is not None):
            raise ValueError("webpush takes a subscription; fcm, apns and webhook take a token")
        if self.provider == "apns" and not all(c in "0123456789abcdefABCDEF" for c in self.token or ""):
            raise ValueError("an APNs device token is hexadecimal")
        return self


class UnregisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: ProviderName | None = None


DOCUMENTS: list[type[Document]] = [Alert, AlertDelivery, Notification, PushToken, DailyCount]
