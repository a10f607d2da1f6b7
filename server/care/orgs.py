"""Organisations (a clinic, a home-care agency) and the clinicians they vouch for.

The operator makes an organisation and its first admin (``healthmate org create``); an admin invites clinicians
with a single-use, expiring link bound to one email address (shown to the admin, and mailed where SMTP is
configured); accepting it makes a clinician account that belongs to the organisation, or attaches the organisation
to the invited account. An admin can suspend a member: every session and socket of theirs ends at once, in every
process, and they cannot log in while suspended.

A clinician account is *verified* while an organisation counts it as an active member; an unverified one (a
clinician who registered before invitations existed) acts with a caregiver's powers (``User.acting_role``).
``standing`` keeps the account's ``verified`` and ``suspended`` flags, and the role its care-team links carry, in
step with its memberships.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from beanie import PydanticObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from server.care import audit
from server.care.auth import AuthService
from server.care.documents import AcceptIn, Invitation, InviteIn, Link, Membership, Organisation, OrgRole, User
from server.care.security import check_password, normalise_email
from server.core.documents import aware, iso, utcnow
from server.core.errors import ApiError, forbidden, not_found
from server.core.identity import Client, Principal, as_object_id
from server.infra.mailer import Mailer


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invitation_link(base_url: str, token: str) -> str:
    """The dashboard opens the accept form from the fragment, which browsers send to no server (nor in Referer)."""
    return f"{base_url.rstrip('/')}/#invitation={token}"


def _invalid() -> ApiError:
    return ApiError("invitation_invalid", "This invitation is unknown, used, revoked or expired; ask for a new one",
                    410)


def _mismatch() -> ApiError:
    return ApiError("invitation_email_mismatch", "This invitation is for another email address", 403,
                    {"field": "email"})


def _patient() -> ApiError:
    return ApiError("role_conflict", "A patient account cannot join an organisation; use another email", 409)


def _org_json(org: Organisation) -> dict[str, Any]:
    return {"id": str(org.id), "name": org.name, "created_at": iso(org.created_at)}


def _member_json(m: Membership, user: User | None) -> dict[str, Any]:
    return {"user_id": str(m.user_id), "name": user.name if user else None, "email": user.email if user else None,
            "role": m.role, "status": m.status, "joined_at": iso(m.joined_at), "suspended_at": iso(m.suspended_at)}


async def standing(user_id: PydanticObjectId) -> User:
    """Bring the account's flags (and its links' role) in line with its memberships."""
    user = await User.get(user_id)
    assert user is not None
    kept = await Membership.find(Membership.user_id == user_id).to_list()
    suspended = any(m.status == "suspended" for m in kept)
    verified = user.role == "clinician" and any(m.status == "active" for m in kept)
    if (user.verified, user.suspended) != (verified, suspended):
        await user.set({User.verified: verified, User.suspended: suspended})
    if user.role == "clinician":
        role = user.acting_role
        await Link.get_pymongo_collection().update_many({"member_id": user_id, "member_role": {"$ne": role}},
                                                        {"$set": {"member_role": role}})
    return user


async def join(org_id: PydanticObjectId, user: User, role: OrgRole, invited_by: PydanticObjectId | None) -> User:
    """Make ``user`` an active member; a member joins as a clinician (a caregiver account becomes one)."""
    assert user.id is not None
    if user.role == "patient":
        raise _patient()
    if user.role != "clinician":
        await user.set({User.role: "clinician"})
    await Membership.get_pymongo_collection().update_one(
        {"_id": Membership.key(org_id, user.id)},
        {"$set": {"role": role, "status": "active", "suspended_at": None, "suspended_by": None},
         "$setOnInsert": {"org_id": org_id, "user_id": user.id, "joined_at": utcnow(), "invited_by": invited_by,
                          "schema_version": 1}}, upsert=True)
    return await standing(user.id)


async def new_invitation(org_id: PydanticObjectId, email: str, role: OrgRole, ttl_s: int,
                         created_by: PydanticObjectId | None) -> tuple[Invitation, str]:
    token = secrets.token_urlsafe(32)
    invitation = Invitation(token_hash=token_hash(token), org_id=org_id, email=email, role=role, created_by=created_by,
                            expires_at=utcnow() + timedelta(seconds=ttl_s))
    await invitation.insert()
    return invitation, token


async def create_org(name: str, admin_email: str, ttl_s: int) -> tuple[Organisation, User | None, str | None]:
    """The operator's ``healthmate org create``: the organisation, and its first admin: the account with that
    email made admin at once, or, with no such account, a single-use invitation (its token returned)."""
    name = name.strip()
    if not 1 <= len(name) <= 100 or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ApiError("invalid_name", "An organisation's name is 1 to 100 printable characters", 422)
    email = normalise_email(admin_email)
    user = await User.find_one(User.email == email)
    if user is not None and user.role == "patient":
        raise _patient()
    org = Organisation(name=name)
    await org.insert()
    assert org.id is not None
    if user is not None:
        user = await join(org.id, user, "admin", None)
        await audit.record("org.create", user_id=None, role="operator", org_id=str(org.id), admin=email)
        return org, user, None
    _, token = await new_invitation(org.id, email, "admin", ttl_s, None)
    await audit.record("org.create", user_id=None, role="operator", org_id=str(org.id), invited=email)
    return org, None, token


class Organisations:
    def __init__(self, auth: AuthService, mailer: Mailer | None, ttl_s: int, public_url: str | None) -> None:
        self.auth = auth
        self.mailer = mailer
        self.ttl_s = ttl_s
        self.public_url = public_url

    async def _admin(self, principal: Principal, org_id: str, action: str, client: Client,
                     **details: Any) -> PydanticObjectId:
        """The organisation's id if the principal administers it; the same refusal whether it exists or not."""
        oid = as_object_id(org_id, "org_id")
        m = await Membership.get(Membership.key(oid, principal.user_id))
        allowed = m is not None and m.role == "admin" and m.status == "active"
        await audit.record(action, principal=principal, outcome="ok" if allowed else "denied", client=client,
                           org_id=str(oid), **details)
        if not allowed:
            raise forbidden("Only an administrator of this organisation may do that")
        return oid

    async def mine(self, principal: Principal) -> list[dict[str, Any]]:
        kept = await Membership.find(Membership.user_id == principal.user_id).to_list()
        orgs = {o.id: o for o in await Organisation.find({"_id": {"$in": [m.org_id for m in kept]}}).to_list()}
        return [{"org": _org_json(orgs[m.org_id]), "role": m.role, "status": m.status} for m in kept
                if m.org_id in orgs]

    async def members(self, principal: Principal, org_id: str, client: Client) -> dict[str, Any]:
        oid = await self._admin(principal, org_id, "org.members", client)
        kept = await Membership.find(Membership.org_id == oid).sort(+Membership.joined_at).to_list()
        users = {u.id: u for u in await User.find({"_id": {"$in": [m.user_id for m in kept]}}).to_list()}
        pending = await Invitation.find(Invitation.org_id == oid, Invitation.accepted_at == None,  # noqa: E711
                                        Invitation.revoked_at == None, Invitation.expires_at > utcnow()  # noqa: E711
                                        ).sort(-Invitation.id).limit(200).to_list()
        return {"members": [_member_json(m, users.get(m.user_id)) for m in kept],
                "invitations": [i.public() for i in pending]}

    async def invite(self, principal: Principal, org_id: str, body: InviteIn, origin: str,
                     client: Client) -> dict[str, Any]:
        oid = await self._admin(principal, org_id, "org.invite", client, email=body.email, role=body.role)
        org = await Organisation.get(oid)
        assert org is not None
        existing = await User.find_one(User.email == body.email)
        if existing is not None and existing.id is not None:
            member = await Membership.get(Membership.key(oid, existing.id))
            if member is not None and member.status == "active" and member.role == body.role:
                raise ApiError("already_member", "That account is already an active member", 409, {"field": "email"})
        invitation, token = await new_invitation(oid, body.email, body.role, self.ttl_s, principal.user_id)
        link = invitation_link(self.public_url or origin, token)
        mailed = False
        if self.mailer is not None:
            mailed = await self.mailer.send(body.email, f"Join {org.name} on Health Mate", (
                f"{principal.name} invites you to join {org.name} on Health Mate as a {body.role}.\n\n"
                f"Open this link to accept; it works once, for {body.email}, until {iso(invitation.expires_at)}:\n"
                f"{link}\n\nIf you did not expect this invitation, ignore this mail.\n"))
        return {"invitation": invitation.public(), "link": link, "mailed": mailed}

    async def revoke_invitation(self, principal: Principal, org_id: str, invitation_id: str,
                                client: Client) -> dict[str, Any]:
        oid = await self._admin(principal, org_id, "org.invitation_revoke", client, invitation_id=invitation_id)
        doc = await Invitation.get_pymongo_collection().find_one_and_update(
            {"_id": as_object_id(invitation_id, "invitation_id"), "org_id": oid, "accepted_at": None},
            {"$set": {"revoked_at": utcnow()}}, return_document=ReturnDocument.AFTER)
        if doc is None:
            raise not_found("pending invitation")
        return Invitation.model_validate(doc).public()

    async def accept(self, principal: Principal | None, body: AcceptIn, client: Client) -> tuple[dict[str, Any], bool]:
        """Accept with a new account (``True``: made now, logged in) or as the invited, logged-in account."""
        invitation = await Invitation.find_one(Invitation.token_hash == token_hash(body.token))
        if invitation is None or invitation.accepted_at or invitation.revoked_at or \
                aware(invitation.expires_at) <= utcnow():
            await audit.record("org.join", principal=principal, outcome="denied", client=client, reason="invalid")
            raise _invalid()
        user, password_hash = await self._who_accepts(principal, body, invitation, client)
        claimed = await Invitation.get_pymongo_collection().find_one_and_update(  # single use, even in a race
            {"_id": invitation.id, "accepted_at": None, "revoked_at": None, "expires_at": {"$gt": utcnow()}},
            {"$set": {"accepted_at": utcnow()}})
        if claimed is None:
            raise _invalid()
        if user is None:
            assert body.name is not None and password_hash is not None
            user = User(email=invitation.email, password_hash=password_hash, name=body.name, role="clinician")
            try:
                await user.insert()
            except DuplicateKeyError:
                await invitation.set({Invitation.accepted_at: None})  # an account was made meanwhile: still usable
                raise ApiError("account_exists", "An account with this email exists: log in as it, then accept",
                               409, {"field": "email"}) from None
        assert user.id is not None
        await invitation.set({Invitation.accepted_by: user.id})
        user = await join(invitation.org_id, user, invitation.role, invitation.created_by)
        await audit.record("org.join", user_id=user.id, role=user.acting_role, client=client,
                           org_id=str(invitation.org_id), as_role=invitation.role)
        org = await Organisation.get(invitation.org_id)
        result = {"user": user.public(), "org": _org_json(org) if org else None, "role": invitation.role}
        if principal is not None:
            return result, False
        return {**result, **await self.auth.new_session(user, client)}, True

    async def _who_accepts(self, principal: Principal | None, body: AcceptIn, invitation: Invitation,
                           client: Client) -> tuple[User | None, str | None]:
        """The invited account (logged in) or, for a new account, the password's hash; refused for anyone else."""
        if principal is not None:
            user = await User.get(principal.user_id)
            if user is None or user.email != invitation.email:
                await audit.record("org.join", principal=principal, outcome="denied", client=client, reason="email")
                raise _mismatch()
            if user.role == "patient":
                raise _patient()
            return user, None
        if body.email is None or body.name is None or body.password is None:
            raise ApiError("invalid_payload", "Give the invited email, a name and a password (or send the invited "
                           "account's access token)", 422, {"problems": [{"field": "password", "problem": "missing"}]})
        try:
            email = normalise_email(body.email)
        except ValueError:
            email = ""
        if email != invitation.email:
            await audit.record("org.join", outcome="denied", client=client, reason="email")
            raise _mismatch()
        if await User.find_one(User.email == email) is not None:
            raise ApiError("account_exists", "An account with this email exists: log in as it, then accept", 409,
                           {"field": "email"})
        check_password(body.password, email)
        return None, await self.auth.passwords.hash(body.password)  # bounded like every request's Argon2

    async def _set_status(self, principal: Principal, org_id: str, user_id: str, suspend: bool,
                          client: Client) -> dict[str, Any]:
        action = "org.suspend" if suspend else "org.reinstate"
        oid = await self._admin(principal, org_id, action, client, member_id=user_id)
        uid = as_object_id(user_id, "user_id")
        if suspend and uid == principal.user_id:
            raise ApiError("cannot_suspend_self", "An administrator cannot suspend themselves", 409)
        changes = {"status": "suspended", "suspended_at": utcnow(), "suspended_by": principal.user_id} if suspend \
            else {"status": "active", "suspended_at": None, "suspended_by": None}
        doc = await Membership.get_pymongo_collection().find_one_and_update(
            {"_id": Membership.key(oid, uid)}, {"$set": changes}, return_document=ReturnDocument.AFTER)
        if doc is None:
            raise not_found("member")
        user = await standing(uid)
        if suspend:  # at once, in every process: their sessions end, their sockets close
            await self.auth.end_all_sessions(uid, "suspended")
        return _member_json(Membership.model_validate(doc), user)

    async def suspend(self, principal: Principal, org_id: str, user_id: str, client: Client) -> dict[str, Any]:
        return await self._set_status(principal, org_id, user_id, True, client)

    async def reinstate(self, principal: Principal, org_id: str, user_id: str, client: Client) -> dict[str, Any]:
        return await self._set_status(principal, org_id, user_id, False, client)
