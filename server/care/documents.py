"""Beanie documents: what the platform core stores.

Every document carries ``schema_version``; ``server.infra.migrations`` brings older documents
up to date. Indexes are declared here and created at start-up by ``init_beanie``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from beanie import Document, PydanticObjectId
from pydantic import Field
from pymongo import ASCENDING, DESCENDING, IndexModel

from server.core.documents import VersionedDocument, iso, utcnow

Role = Literal["patient", "caregiver", "clinician"]


class User(VersionedDocument):
    email: str
    password_hash: str
    name: str
    role: Role
    phone: str | None = None
    timezone: str = "UTC"
    language: str = "en"
    avatar_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    password_changed_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "users"
        indexes = [IndexModel([("email", ASCENDING)], unique=True, name="email_unique")]

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "email": self.email,
            "name": self.name,
            "role": self.role,
            "phone": self.phone,
            "timezone": self.timezone,
            "language": self.language,
            "avatar_id": self.avatar_id,
            "created_at": iso(self.created_at),
        }


class AuthSession(VersionedDocument):
    """A login: one refresh-token family. Access tokens name it (``sid``) so revoking it
    revokes them too. ``current_jti`` is the only refresh token that may be used next;
    any other validly signed one from this family is a replay and revokes the family."""

    user_id: PydanticObjectId
    current_jti: str
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    revoked_at: datetime | None = None
    revoked_reason: str | None = None
    client_addr: str | None = None
    user_agent: str | None = None

    class Settings:
        name = "auth_sessions"
        indexes = [IndexModel([("user_id", ASCENDING), ("revoked_at", ASCENDING)], name="user_active")]


class Link(VersionedDocument):
    """A care-team link: ``member`` (caregiver or clinician) may read and write ``patient``'s data
    while ``revoked_at`` is None. The id is ``"<patient>:<member>"`` so a pair has one link."""

    id: str  # type: ignore[assignment]
    patient_id: PydanticObjectId
    member_id: PydanticObjectId
    member_role: Role
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
    revoked_by: PydanticObjectId | None = None

    class Settings:
        name = "links"
        indexes = [
            IndexModel([("patient_id", ASCENDING), ("revoked_at", ASCENDING)], name="patient_active"),
            IndexModel([("member_id", ASCENDING), ("revoked_at", ASCENDING)], name="member_active"),
        ]

    @staticmethod
    def key(patient_id: PydanticObjectId, member_id: PydanticObjectId) -> str:
        return f"{patient_id}:{member_id}"


class LinkCode(VersionedDocument):
    """A short single-use code a patient hands to a caregiver or clinician (also shown as a QR)."""

    code: str
    patient_id: PydanticObjectId
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    redeemed_at: datetime | None = None
    redeemed_by: PydanticObjectId | None = None

    class Settings:
        name = "link_codes"
        indexes = [
            IndexModel([("code", ASCENDING)], unique=True, name="code_unique"),
            IndexModel([("patient_id", ASCENDING)], name="patient"),
        ]


class AuditEntry(VersionedDocument):
    """Append-only record of who did what to whose data. Nothing in the API updates or deletes it."""

    at: datetime = Field(default_factory=utcnow)
    actor_id: PydanticObjectId | None = None
    actor_role: str | None = None
    action: str
    patient_id: PydanticObjectId | None = None
    outcome: Literal["ok", "denied", "failed"] = "ok"
    client_addr: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    class Settings:
        name = "audit"
        indexes = [
            IndexModel([("patient_id", ASCENDING), ("_id", DESCENDING)], name="patient_recent"),
            IndexModel([("actor_id", ASCENDING), ("_id", DESCENDING)], name="actor_recent"),
        ]


DOCUMENTS: list[type[Document]] = [User, AuthSession, Link, LinkCode, AuditEntry]
