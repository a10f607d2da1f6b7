"""What the care concern sends: accounts, tokens, organisations, care-team links, patients, contacts,
uploads and the audit log, as replies (acks' data, REST bodies) and pushed events."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from server.care.documents import ContactKind, OrgRole
from server.care.documents import Role as UserRole
from server.core.wire import Time, Wire


class UserOut(Wire):
    """An account (a patient's profile as their care team sees it)."""

    id: str
    email: str
    name: str
    role: UserRole
    phone: str | None
    timezone: str = Field(description="IANA time zone, e.g. Europe/Lisbon")
    language: str
    avatar_id: str | None
    created_at: Time
    verified: bool = Field(description="A clinician an organisation vouches for")
    acting_role: UserRole = Field(description="The role the account acts with: an unverified clinician is a caregiver")


class Tokens(Wire):
    access_token: str
    refresh_token: str | None = Field(None, description="Absent when asked for in the HttpOnly cookie (`cookie: true`)")
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="Seconds the access token lives")


class AuthResult(Tokens):
    user: UserOut


class OrgOut(Wire):
    id: str
    name: str
    created_at: Time


class AcceptResult(Wire):
    """Accepting an invitation: the account, its organisation and role; a new account also gets its tokens."""

    user: UserOut
    org: OrgOut | None
    role: OrgRole
    access_token: str | None = None
    refresh_token: str | None = None
    token_type: Literal["Bearer"] | None = None
    expires_in: int | None = None


class MyOrg(Wire):
    org: OrgOut
    role: OrgRole
    status: Literal["active", "suspended"]


class Member(Wire):
    user_id: str
    name: str | None
    email: str | None
    role: OrgRole
    status: Literal["active", "suspended"]
    joined_at: Time
    suspended_at: Time | None


class InvitationOut(Wire):
    id: str
    org_id: str
    email: str
    role: OrgRole
    created_at: Time
    expires_at: Time
    accepted_at: Time | None
    revoked_at: Time | None


class Members(Wire):
    members: list[Member]
    invitations: list[InvitationOut] = Field(description="Pending invitations")


class Invited(Wire):
    invitation: InvitationOut
    link: str = Field(description="The single-use link to hand to the invited person (it holds the token)")
    mailed: bool


class LinkCode(Wire):
    code: str = Field(description="8 characters, single use; case, spaces and dashes do not matter")
    expires_at: Time
    qr_url: str
    qr_payload: str


class Named(Wire):
    id: str
    name: str | None


class LinkMember(Named):
    role: Literal["caregiver", "clinician"]


class LinkOut(Wire):
    id: str
    patient: Named
    member: LinkMember
    created_at: Time
    revoked_at: Time | None


class LinksChanged(Wire):
    change: Literal["added", "revoked"]
    link: LinkOut


class ContactOut(Wire):
    id: str
    patient_id: str
    kind: ContactKind
    name: str
    phone: str | None
    email: str | None
    organization: str | None
    relationship: str | None
    address: str | None
    notes: str | None
    created_by: str
    created_at: Time
    updated_at: Time | None


class ContactsChanged(Wire):
    change: Literal["added", "updated", "deleted"]
    contact: ContactOut


class UploadOut(Wire):
    id: str
    purpose: Literal["avatar", "medication"]
    content_type: str
    width: int
    height: int
    size: int
    owner_id: str
    patient_id: str | None
    created_at: Time
    url: str


class AuditEntryOut(Wire):
    id: str
    at: Time
    actor_id: str | None
    actor_role: str | None
    action: str
    patient_id: str | None
    outcome: str
    client_addr: str | None
    details: dict[str, Any]
