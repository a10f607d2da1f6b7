"""What the alerts concern stores and what its clients send: alerts and their per-device receipts,
notifications, push registrations, and the request models of their events."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from beanie import Document, PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator
from pymongo import ASCENDING, DESCENDING, IndexModel

from server.core.documents import StoredDocument, VersionedDocument, iso, utcnow
from server.core.i18n import Text
from server.core.ports import Urgency

Status = Literal["open", "acknowledged", "resolved"]
ProviderName = Literal["fcm", "apns", "apns-voip", "webpush", "webhook"]  # apns-voip: a PushKit token, for calls


# --- alerts ----------------------------------------------------------------------------------------

class Alert(VersionedDocument):
    patient_id: PydanticObjectId
    patient_name: str = ""
    kind: str
    title: str  # in English, as every recipient's device is sent it (``alert:new``)
    body: str = ""
    title_text: Text | None = None  # what each recipient's notification renders in their language
    body_text: Text | None = None
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
            # a recipient's open alerts (redelivered on reconnect), and a page of theirs by status over a span of
            # ``_id`` (cursor_page)
            IndexModel([("recipient_ids", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)],
                       name="recipient_status_recent"),
            IndexModel([("recipient_ids", ASCENDING), ("_id", DESCENDING)], name="recipient_recent"),
            IndexModel([("patient_id", ASCENDING), ("_id", DESCENDING)], name="patient_recent"),
            # a patient's open alerts (``open_of``: every crisis reading's check, the overview's count): without it
            # the embedded store read all of the patient's past alerts (500 of them: 14.7 ms a check, 0.76 ms with it)
            IndexModel([("patient_id", ASCENDING), ("status", ASCENDING), ("kind", ASCENDING)], name="patient_open"),
            IndexModel([("emitted_at", ASCENDING), ("emit_lease_until", ASCENDING)], name="pending_emit"),
            IndexModel([("status", ASCENDING), ("escalate_at", ASCENDING)], name="pending_escalation"),
            IndexModel([("status", ASCENDING), ("escalation_lease_until", ASCENDING)], name="stalled_escalation"),
        ]

    @staticmethod
    def open_of(patient_id: PydanticObjectId, kind: str | None = None) -> dict[str, Any]:
        """The filter of the patient's open alerts (of one kind: at most one, no alert storm)."""
        return {"patient_id": patient_id, "status": "open", **({"kind": kind} if kind is not None else {})}

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


class AlertRecipients(BaseModel):
    """An alert's recipients alone (a projection: checking a receipt needs no more of the alert)."""

    recipient_ids: list[PydanticObjectId] = Field(default_factory=list)


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


class DailyCount(StoredDocument):
    """How often something happened for a patient on one UTC day (``what``: alerts raised on demand, emergency
    webhook calls), attempts past the cap included. Counted with one atomic update, so every process sees the
    same count. Kept ``KEPT_DAYS`` for the operator, then the store deletes it (TTL index)."""

    KEPT_DAYS: ClassVar[int] = 30
    id: str  # type: ignore[assignment]  # "<what>:<patient>:<YYYY-MM-DD>"
    times: int = 0
    expires_at: datetime | None = None

    class Settings:
        name = "daily_counts"
        indexes = [IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="expiry")]


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
            # The unread count, and a page of the unread over a span of ``_id`` (cursor_page)
            IndexModel([("user_id", ASCENDING), ("read_at", ASCENDING), ("deleted_at", ASCENDING), ("_id", DESCENDING)],
                       name="user_unread_recent"),
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
    token: str | None = Field(None, min_length=8, max_length=4096, pattern=r"^[A-Za-z0-9_:.\-]+$",
                              description="fcm, apns and apns-voip (hex), webhook")
    subscription: Subscription | None = None

    @model_validator(mode="after")
    def one_target(self) -> RegisterIn:
        if (self.provider == "webpush") != (self.subscription is not None) or \
                (self.provider != "webpush") != (self.token is not None):
            raise ValueError("webpush takes a subscription; fcm, apns, apns-voip and webhook take a token")
        if self.provider in ("apns", "apns-voip") and not all(c in "0123456789abcdefABCDEF" for c in self.token or ""):
            raise ValueError("an APNs device token is hexadecimal")
        return self


class UnregisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: ProviderName | None = None


# --- the push outbox -------------------------------------------------------------------------------

class PushEntry(StoredDocument):
    """One message to send to one registration (``server.alerts.push_outbox``), written before it is attempted.
    The id ``<token id>/<message key>`` makes writing it twice a no-op. Due when ``next_attempt_at`` has come;
    a claim moves ``next_attempt_at`` to the end of its lease, so an entry whose process died is due again
    when the lease runs out. A rung call (``kind`` call, sent) keeps ``next_attempt_at`` None and ``sent_at``
    until it is cancelled or its deadline passes, so that the cancel reaches the devices that rang."""

    id: str  # type: ignore[assignment]
    token_id: str
    user_id: PydanticObjectId
    device_id: str
    provider: ProviderName
    target: Any  # the device token, or the Web Push subscription, as registered
    message: dict[str, Any]  # PushMessage's fields
    kind: str  # the notification's kind; call / call_cancel for VoIP pushes
    collapse_id: str
    alert_id: PydanticObjectId | None = None  # an alert's pushes end when it is no longer open
    alert_level: int = 0
    call_id: str | None = None
    attempt: int = 0
    next_attempt_at: datetime | None
    lease_owner: str | None = None  # the process: host:pid:random
    lease_until: datetime | None = None
    claim: str | None = None  # the batch that claimed it last
    deadline: datetime
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None
    last_error: str | None = None

    class Settings:
        name = "push_outbox"
        indexes = [IndexModel([("next_attempt_at", ASCENDING)], name="due"),
                   IndexModel([("token_id", ASCENDING)], name="token"),
                   IndexModel([("call_id", ASCENDING)], name="call"),
                   IndexModel([("alert_id", ASCENDING)], name="alert")]


class PushOutcome(StoredDocument):
    """What became of one outbox entry, kept ``push_history_s`` for the operator (``GET /api/admin/push-stats``)."""

    at: datetime
    provider: str
    outcome: str  # sent | retried | dead_token | gave_up | obsolete
    kind: str
    attempt: int
    latency_ms: float | None = None  # from the entry's writing to this outcome

    class Settings:
        name = "push_outcomes"
        indexes = [IndexModel([("at", ASCENDING)], name="at")]



# --- per-device delivery --------------------------------------------------------------------------

Confirmable = Literal["alert", "dose", "notification"]


class PushWatch(StoredDocument):
    """A stored notification that each registered device must confirm (``server.alerts.device_delivery``): at
    ``due_at`` one process claims it (``owner``, the due time moved on by a lease), pushes it to the devices that
    have neither confirmed ``ref`` nor been pushed it already, and deletes it. The id is the notification's."""

    id: PydanticObjectId  # type: ignore[assignment]
    user_id: PydanticObjectId
    confirm: Confirmable  # what confirms it: alert:received, dose:received or notification:received
    ref: str  # of that: the alert, dose or notification id
    due_at: datetime
    since: datetime | None = None  # only confirmations from then on count (an escalation's)
    owner: str | None = None
    pushed: list[str] = Field(default_factory=list)  # devices pushed it at once (no socket then)

    class Settings:
        name = "push_watches"
        indexes = [IndexModel([("due_at", ASCENDING)], name="due"), IndexModel([("owner", ASCENDING)], name="owner")]


class DeviceReceipt(StoredDocument):
    """A device's confirmation that it has a due dose or an urgent notification (alerts have ``AlertDelivery``);
    the id ``<ref>:<user>:<device>`` makes the first one win. Only needed until its push would be due: expires."""

    id: str  # type: ignore[assignment]
    ref: str
    user_id: PydanticObjectId
    device_id: str
    received_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "device_receipts"
        indexes = [IndexModel([("ref", ASCENDING)], name="ref"),
                   IndexModel([("received_at", ASCENDING)], expireAfterSeconds=7 * 24 * 3600, name="expiry")]

    @staticmethod
    def key(ref: str, user_id: Any, device_id: str) -> str:
        return f"{ref}:{user_id}:{device_id}"


class DoseReceived(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dose_id: str = Field(max_length=64)


DOCUMENTS: list[type[Document]] = [Alert, AlertDelivery, Notification, PushToken, DailyCount, PushEntry, PushOutcome,
                                   PushWatch, DeviceReceipt]
