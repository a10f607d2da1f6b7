"""What the care concern stores (Beanie documents) and the requests it accepts (pydantic models).

Every document carries ``schema_version``; ``server.infra.migrations`` brings older documents
up to date. Indexes are declared here and created at start-up by ``init_beanie``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from beanie import Document, PydanticObjectId
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pymongo import ASCENDING, DESCENDING, IndexModel

from server.care.security import normalise_email
from server.core.documents import VersionedDocument, iso, utcnow
from server.core.identity import as_object_id
from server.core.patch import Patch

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
    # Kept by ``server.care.orgs`` from the account's memberships: a clinician is verified while an organisation
    # counts them as an active member; a member an organisation suspended may not log in.
    verified: bool = False
    suspended: bool = False

    class Settings:
        name = "users"
        indexes = [IndexModel([("email", ASCENDING)], unique=True, name="email_unique")]

    @property
    def acting_role(self) -> str:
        """The role the account acts with: an unverified clinician has a caregiver's powers only."""
        return "caregiver" if self.role == "clinician" and not self.verified else self.role

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
            "verified": self.verified,
            "acting_role": self.acting_role,
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


ContactKind = Literal["doctor", "clinic", "pharmacy", "emergency"]


class MedicalContact(VersionedDocument):
    """A patient's doctor, clinic, pharmacy or emergency contact."""

    patient_id: PydanticObjectId
    kind: ContactKind
    name: str
    phone: str | None = None
    email: str | None = None
    organization: str | None = None
    relationship: str | None = None
    address: str | None = None
    notes: str | None = None
    created_by: PydanticObjectId
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime | None = None

    class Settings:
        name = "medical_contacts"
        indexes = [IndexModel([("patient_id", ASCENDING), ("kind", ASCENDING)], name="patient_kind")]

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "patient_id": str(self.patient_id), "kind": self.kind, "name": self.name,
                "phone": self.phone, "email": self.email, "organization": self.organization,
                "relationship": self.relationship, "address": self.address, "notes": self.notes,
                "created_by": str(self.created_by), "created_at": iso(self.created_at),
                "updated_at": iso(self.updated_at)}


OrgRole = Literal["admin", "clinician"]


class Organisation(VersionedDocument):
    """A clinic or a home-care agency: it vouches for the clinicians it counts as members."""

    name: str
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "organisations"


class Membership(VersionedDocument):
    """An account's place in an organisation. The id is ``"<org>:<user>"`` so an account joins an org once.
    An ``admin`` invites and suspends members; both roles verify a clinician account while ``active``."""

    id: str  # type: ignore[assignment]
    org_id: PydanticObjectId
    user_id: PydanticObjectId
    role: OrgRole
    status: Literal["active", "suspended"] = "active"
    joined_at: datetime = Field(default_factory=utcnow)
    invited_by: PydanticObjectId | None = None  # None: the operator (``healthmate org create``)
    suspended_at: datetime | None = None
    suspended_by: PydanticObjectId | None = None

    class Settings:
        name = "memberships"
        indexes = [IndexModel([("user_id", ASCENDING)], name="user"), IndexModel([("org_id", ASCENDING)], name="org")]

    @staticmethod
    def key(org_id: PydanticObjectId, user_id: PydanticObjectId) -> str:
        return f"{org_id}:{user_id}"


class Invitation(VersionedDocument):
    """A single-use, expiring invitation to join ``org_id`` as ``role``, for ``email`` only. The link carries a
    random token (256 bits); only its SHA-256 is stored, so the collection read back gives no usable link."""

    token_hash: str
    org_id: PydanticObjectId
    email: str
    role: OrgRole
    created_by: PydanticObjectId | None = None  # None: the operator
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    accepted_at: datetime | None = None
    accepted_by: PydanticObjectId | None = None
    revoked_at: datetime | None = None

    class Settings:
        name = "invitations"
        indexes = [IndexModel([("token_hash", ASCENDING)], unique=True, name="token_unique"),
                   IndexModel([("org_id", ASCENDING), ("_id", DESCENDING)], name="org_recent")]

    def public(self) -> dict[str, Any]:
        return {"id": str(self.id), "org_id": str(self.org_id), "email": self.email, "role": self.role,
                "created_at": iso(self.created_at), "expires_at": iso(self.expires_at),
                "accepted_at": iso(self.accepted_at), "revoked_at": iso(self.revoked_at)}


DOCUMENTS: list[type[Document]] = [User, AuthSession, Link, LinkCode, AuditEntry, MedicalContact, Organisation,
                                   Membership, Invitation]


# --- requests ----------------------------------------------------------------------------------------

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PatientRef(Strict):
    patient_id: str = Field(max_length=64)


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("not an IANA time zone (e.g. Europe/Lisbon)") from None
    return value


def _object_id(value: str) -> str:
    return str(as_object_id(value, "avatar_id"))


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Secret = Annotated[str, Field(min_length=1, max_length=256)]
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class RegisterIn(Strict):
    email: Annotated[str, Field(max_length=254)]
    password: Secret
    name: Name
    role: Role
    cookie: bool = Field(False, description="The refresh token in the `hm_refresh` HttpOnly cookie instead of the "
                                            "body, as for a login")


class LoginIn(Strict):
    email: Annotated[str, Field(max_length=254)]
    password: Secret
    cookie: bool = False  # the refresh token in an HttpOnly cookie rather than in the body


class RefreshIn(Strict):
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)] | None = None  # else the cookie's
    cookie: bool = False


class ProfilePatch(Patch):
    keep = frozenset({"name", "timezone", "language"})
    name: Name | None = None
    phone: Annotated[str, StringConstraints(pattern=_E164)] | None = None
    timezone: Annotated[str, Field(max_length=64), AfterValidator(_timezone)] | None = None
    language: Annotated[str, StringConstraints(pattern=re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")), Field(
        description="BCP 47; notifications and pushes are written in it (English and Spanish; others fall back to "
                    "English)")] | None = None
    avatar_id: Annotated[str, AfterValidator(_object_id)] | None = None


class PasswordChange(Strict):
    current_password: Secret
    new_password: Secret


# Typed by hand: case, spaces and dashes do not matter.
Code = Annotated[str, StringConstraints(min_length=4, max_length=24, pattern=r"^[A-Za-z0-9 -]+$"),
                 AfterValidator(lambda v: v.replace("-", "").replace(" ", "").upper())]


class RedeemIn(Strict):
    code: Code


class RevokeIn(Strict):
    link_id: Annotated[str, StringConstraints(max_length=60)]


_PHONE_NOISE = re.compile(r"[\s().\-/]")


def normalise_phone(value: str) -> str:
    """E.164: ``+`` and 7 to 15 digits; spaces, dots, dashes and brackets are dropped, ``00`` becomes ``+``."""
    phone = _PHONE_NOISE.sub("", value)
    if phone.startswith("00"):
        phone = "+" + phone[2:]
    if not _E164.match(phone):
        raise ValueError("phone must be an international number like +44 20 7946 0958 (E.164)")
    return phone


def check_reachable(kind: str, phone: str | None, email: str | None) -> None:
    if kind == "emergency" and not phone:
        raise ValueError("an emergency contact needs a phone number")
    if not phone and not email:
        raise ValueError("give a phone number or an email")


Phone = Annotated[str, Field(max_length=40), AfterValidator(normalise_phone)]
Email = Annotated[str, Field(max_length=254), AfterValidator(normalise_email)]
Text = Annotated[str, Field(min_length=1, max_length=200)]


class ContactFields(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    kind: ContactKind | None = None
    name: Text | None = None
    phone: Phone | None = None
    email: Email | None = None
    organization: Text | None = None
    relationship: Annotated[str, Field(min_length=1, max_length=60)] | None = None
    address: Annotated[str, Field(min_length=1, max_length=300)] | None = None
    notes: Annotated[str, Field(max_length=1000)] | None = None


class ContactIn(ContactFields):
    kind: ContactKind
    name: Text

    @model_validator(mode="after")
    def reachable(self) -> ContactIn:
        check_reachable(self.kind, self.phone, self.email)
        return self


class ContactAdd(ContactIn):
    patient_id: str = Field(max_length=64)


class ContactPatch(ContactFields, Patch):
    keep = frozenset({"kind", "name"})


class ContactUpdate(ContactPatch):
    contact_id: str = Field(max_length=64)


class ContactRef(Strict):
    contact_id: str = Field(max_length=64)


class InviteIn(Strict):
    email: Email
    role: OrgRole = "clinician"


class AcceptIn(Strict):
    """Accepting an invitation: with a new account (the invited ``email`` again, a name and a password), or,
    sent with the access token of the invited account, with none of them."""

    token: Annotated[str, StringConstraints(min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]
    email: Annotated[str, Field(max_length=254)] | None = None
    name: Name | None = None
    password: Secret | None = None
    cookie: bool = Field(False, description="A new account's refresh token in the `hm_refresh` HttpOnly cookie "
                                            "instead of the body, as for a login")
