"""The care concern's transport: REST routes and Socket.IO events of accounts, care-team links, patients,
the audit log, medical contacts and uploads, each handler bound once to its service."""

from __future__ import annotations

from typing import Any

from aiohttp import BodyPartReader, web

from server.care import audit
from server.care.accounts import Profiles
from server.care.auth import AuthService
from server.care.contacts import Contacts
from server.care.documents import (
    AcceptIn,
    AuditEntry,
    ContactAdd,
    ContactIn,
    ContactPatch,
    ContactRef,
    ContactUpdate,
    InviteIn,
    LoginIn,
    PasswordChange,
    PatientRef,
    ProfilePatch,
    RedeemIn,
    RefreshIn,
    RegisterIn,
    RevokeIn,
)
from server.care.linking import Linking
from server.care.orgs import Organisations
from server.care.patients import get_patient, list_patients
from server.care.uploads import FIELDS, Uploads, read_field
from server.care.uploads import public as upload_json
from server.care.wire import (
    AcceptResult,
    AuditEntryOut,
    AuthResult,
    ContactOut,
    ContactsChanged,
    InvitationOut,
    Invited,
    LinkCode,
    LinkOut,
    LinksChanged,
    Member,
    Members,
    MyOrg,
    Tokens,
    UploadOut,
    UserOut,
)
from server.core.errors import ApiError
from server.core.wire import Items, Page
from server.transport.events import EventContext
from server.transport.http import PageQuery, cursor_page, page_params, read_json, send_grid_file
from server.transport.mount import Mount

NO_CONTENT = 204
# The refresh token as a cookie: out of reach of scripts (HttpOnly), sent only over TLS (localhost counts)
# and only by this site's own pages (SameSite=Strict), and only to /api/auth/refresh and /api/auth/logout.
REFRESH_COOKIE = "hm_refresh"
REFRESH_COOKIE_ATTRS: dict[str, Any] = {"path": "/api/auth", "secure": True, "httponly": True, "samesite": "Strict"}


def mount(m: Mount, auth: AuthService, profiles: Profiles, linking: Linking, contacts: Contacts,
          uploads: Uploads, orgs: Organisations) -> None:
    m.events.push("links:changed", LinksChanged, "To both users of a link when it is created or revoked.")
    m.events.push("patient:updated", UserOut, "To a patient's room when the patient's profile changes.")
    m.events.push("contacts:changed", ContactsChanged, "To a patient's room when a medical contact is added, "
                  "changed or deleted.")
    _accounts(m, auth, profiles)
    _orgs(m, orgs)
    _links(m, linking)
    _patients(m)
    _contacts(m, contacts)
    _uploads(m, uploads)

    async def list_audit(request: web.Request) -> web.Response:
        """Audit entries about the caller's data (as a patient) and the caller's own actions, newest first

        Append-only; nothing in the API edits or deletes entries."""
        principal = await m.rest.principal(request)
        before, limit = page_params(request)
        return web.json_response(await cursor_page(AuditEntry, audit.concerning(principal.user_id), before, limit,
                                                   audit.entry_json))

    m.route("GET", "/api/audit", list_audit, Page[AuditEntryOut], query=PageQuery)


def _tokens(result: dict[str, Any], cookie: bool, max_age_s: int, status: int = 200) -> web.Response:
    """A token pair; with ``cookie`` the refresh token leaves the body for the refresh cookie."""
    if not cookie or "refresh_token" not in result:
        return web.json_response(result, status=status)
    response = web.json_response({k: v for k, v in result.items() if k != "refresh_token"}, status=status)
    response.set_cookie(REFRESH_COOKIE, result["refresh_token"], max_age=max_age_s, **REFRESH_COOKIE_ATTRS)
    return response


def _accounts(m: Mount, auth: AuthService, profiles: Profiles) -> None:
    rest = m.rest
    refresh_ttl_s = auth.settings.refresh_token_ttl_s

    async def register(request: web.Request) -> web.Response:
        """Create an account and log in

        Passwords: at least 10 characters, not a common password, not the email. Emails are normalised (trimmed,
        lower case) and unique. Role `patient` or `caregiver`: `clinician` is refused with
        `clinician_invite_required` (403) and nothing is created; clinicians join through an organisation's
        invitation (`/api/invitations/accept`). Throttled: 20 registrations per client address (and 5 attempts per
        email) in a 15-minute window; past that, 429 `too_many_attempts` with `Retry-After`."""
        body = await read_json(request, RegisterIn)
        result = await auth.register(body.email, body.password, body.name, body.role, rest.client(request))
        return _tokens(result, body.cookie, refresh_ttl_s, 201)

    async def login(request: web.Request) -> web.Response:
        """Log in

        Throttled per account (5 failures) and per client address (20 failures) in a 15-minute window; past that,
        429 `too_many_attempts` with `Retry-After`. Each attempt is counted before the password is checked (a right
        one is then given back), so attempts sent in parallel cannot all pass. Password hashing runs one per core
        with a bounded queue: past it, 503 `busy` with `Retry-After` at once (nothing counted). A member an
        organisation suspended gets `account_suspended` (403), told only with the right password."""
        body = await read_json(request, LoginIn)
        return _tokens(await auth.login(body.email, body.password, rest.client(request)), body.cookie, refresh_ttl_s)

    async def refresh(request: web.Request) -> web.Response:
        """The refresh token from the body, else from the cookie (then the new one goes back in the cookie)."""
        body = await read_json(request, RefreshIn)
        token = body.refresh_token or request.cookies.get(REFRESH_COOKIE, "")
        result = await auth.refresh(token, rest.client(request))
        return _tokens(result, body.cookie or body.refresh_token is None, refresh_ttl_s)

    async def logout(request: web.Request) -> web.Response:
        """End this login session (its tokens stop working; its sockets are disconnected)"""
        await auth.logout(await rest.principal(request), rest.client(request))
        response = web.Response(status=NO_CONTENT)
        response.del_cookie(REFRESH_COOKIE, **REFRESH_COOKIE_ATTRS)
        return response

    async def get_me(request: web.Request) -> web.Response:
        """The caller's profile"""
        return web.json_response(await profiles.get(await rest.principal(request)))

    async def patch_me(request: web.Request) -> web.Response:
        """Change the caller's profile

        Only the fields given change; `null` removes `phone` or `avatar_id` and is refused (422) on the others. A
        patient's change is pushed live (`patient:updated`) to their care team; a new time zone re-plans the doses
        not yet due in it."""
        principal = await rest.principal(request)
        changes = (await read_json(request, ProfilePatch)).model_dump(exclude_unset=True)
        return web.json_response(await profiles.update(principal, changes, rest.client(request)))

    async def change_password(request: web.Request) -> web.Response:
        """Change password; every other login session of the user is revoked

        A wrong `current_password` is 403 `invalid_credentials`; wrong ones are throttled like logins (5 per
        account, 20 per client address in 15 minutes; then 429 `too_many_attempts`)."""
        principal = await rest.principal(request)
        body = await read_json(request, PasswordChange)
        await auth.change_password(principal, body.current_password, body.new_password, rest.client(request))
        return web.Response(status=NO_CONTENT)

    m.route("POST", "/api/auth/register", register, AuthResult, body=RegisterIn, status=201, public=True)
    m.route("POST", "/api/auth/login", login, AuthResult, body=LoginIn, public=True)
    m.route("POST", "/api/auth/refresh", refresh, Tokens, body=RefreshIn, public=True)
    m.route("POST", "/api/auth/logout", logout, status=NO_CONTENT)
    m.route("GET", "/api/me", get_me, UserOut)
    m.route("PATCH", "/api/me", patch_me, UserOut, body=ProfilePatch)
    m.route("POST", "/api/me/password", change_password, body=PasswordChange, status=NO_CONTENT)


def _orgs(m: Mount, orgs: Organisations) -> None:
    rest = m.rest

    async def mine(request: web.Request) -> web.Response:
        """The caller's memberships (organisation, role admin or clinician, status)"""
        return web.json_response({"items": await orgs.mine(await rest.principal(request))})

    async def members(request: web.Request) -> web.Response:
        """(org admin) The members and the pending invitations"""
        principal = await rest.principal(request)
        return web.json_response(await orgs.members(principal, request.match_info["org_id"], rest.client(request)))

    async def invite(request: web.Request) -> web.Response:
        """(org admin) Invite an email address to join as a clinician (or an admin)

        A single-use link, valid `HEALTHMATE_INVITATION_TTL_S` (3 days), for that email only. It is returned here
        (shown to the admin) and, where the operator configured SMTP, mailed (`mailed`). Only its SHA-256 is
        stored. `already_member` (409) if the account is already an active member in that role."""
        principal = await rest.principal(request)
        body = await read_json(request, InviteIn)
        result = await orgs.invite(principal, request.match_info["org_id"], body, f"{request.scheme}://{request.host}",
                                   rest.client(request))
        return web.json_response(result, status=201, headers={"Cache-Control": "no-store"})

    async def revoke(request: web.Request) -> web.Response:
        """(org admin) Revoke a pending invitation; its link stops working"""
        principal = await rest.principal(request)
        return web.json_response(await orgs.revoke_invitation(
            principal, request.match_info["org_id"], request.match_info["invitation_id"], rest.client(request)))

    async def accept(request: web.Request) -> web.Response:
        """With no Authorization header: a new account; with one: the invited account joins."""
        principal = await rest.principal(request) if "Authorization" in request.headers else None
        body = await read_json(request, AcceptIn)
        result, created = await orgs.accept(principal, body, rest.client(request))
        return _tokens(result, body.cookie, orgs.auth.settings.refresh_token_ttl_s, 201 if created else 200)

    async def set_status(suspend: bool, request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        change = orgs.suspend if suspend else orgs.reinstate
        return web.json_response(await change(principal, request.match_info["org_id"], request.match_info["user_id"],
                                              rest.client(request)))

    async def suspend(request: web.Request) -> web.Response:
        """Suspend a member (an administrator; not themselves): a suspended clinician is no longer verified."""
        return await set_status(True, request)

    async def reinstate(request: web.Request) -> web.Response:
        """Reinstate a suspended member."""
        return await set_status(False, request)

    m.route("GET", "/api/orgs", mine, Items[MyOrg])
    m.route("GET", "/api/orgs/{org_id}/members", members, Members)
    m.route("POST", "/api/orgs/{org_id}/invitations", invite, Invited, body=InviteIn, status=201)
    m.route("DELETE", "/api/orgs/{org_id}/invitations/{invitation_id}", revoke, InvitationOut)
    m.route("POST", "/api/orgs/{org_id}/members/{user_id}/suspend", suspend, Member)
    m.route("POST", "/api/orgs/{org_id}/members/{user_id}/reinstate", reinstate, Member)
    m.route("POST", "/api/invitations/accept", accept, AcceptResult, body=AcceptIn, status=(201, 200),
            public=True)


def _links(m: Mount, linking: Linking) -> None:
    rest = m.rest

    async def post_code(request: web.Request) -> web.Response:
        """(patient) Create a single-use link code, valid 10 minutes"""
        principal = await rest.principal(request)
        return web.json_response(await linking.create_code(principal, rest.client(request)), status=201)

    async def get_qr(request: web.Request) -> web.Response:
        """(patient) The link code as a QR image, while it is unused and unexpired"""
        png = await linking.qr_png(await rest.principal(request), request.match_info["code"])
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})

    async def post_redeem(request: web.Request) -> web.Response:
        """(caregiver, clinician) Redeem a patient's link code

        Case, spaces and dashes in the code do not matter. Wrong codes in 15 minutes: 10 per account, 30 per client
        address, 10,000 over everyone; past any, 429 `too_many_attempts` with `retry_after_s` and `Retry-After` (a
        right code is not counted)."""
        principal = await rest.principal(request)
        body = await read_json(request, RedeemIn)
        return web.json_response(await linking.redeem(principal, body.code, rest.client(request)), status=201)

    async def get_links(request: web.Request) -> web.Response:
        """The caller's active links (a patient's care team, or a member's patients)"""
        return web.json_response({"items": await linking.links(await rest.principal(request))})

    async def delete_link(request: web.Request) -> web.Response:
        """End a link (the patient or the member); effective on live connections at once"""
        principal = await rest.principal(request)
        return web.json_response(await linking.revoke(principal, request.match_info["link_id"], rest.client(request)))

    m.route("POST", "/api/links/codes", post_code, LinkCode, status=201)
    m.route("GET", "/api/links/codes/{code}/qr.png", get_qr, media="image/png")
    m.route("POST", "/api/links/redeem", post_redeem, LinkOut, body=RedeemIn, status=201)
    m.route("GET", "/api/links", get_links, Items[LinkOut])
    m.route("DELETE", "/api/links/{link_id}", delete_link, LinkOut)

    @m.events.event("links:create-code", reply=LinkCode)
    async def _create(ctx: EventContext, _: None) -> dict[str, Any]:
        """(patient) Create a single-use link code, valid 10 minutes."""
        return await linking.create_code(ctx.principal, ctx.client)

    @m.events.event("links:redeem", RedeemIn, reply=LinkOut)
    async def _redeem(ctx: EventContext, body: RedeemIn) -> dict[str, Any]:
        """(caregiver, clinician) Redeem a link code; errors `invalid_code` (404), `forbidden`, `too_many_attempts`
        (wrong codes per account, per client address and over everyone; `details.retry_after_s`)."""
        return await linking.redeem(ctx.principal, body.code, ctx.client)

    @m.events.event("links:list", reply=list[LinkOut])
    async def _list(ctx: EventContext, _: None) -> list[dict[str, Any]]:
        """The caller's active links."""
        return await linking.links(ctx.principal)

    @m.events.event("links:revoke", RevokeIn, reply=LinkOut)
    async def _revoke(ctx: EventContext, body: RevokeIn) -> dict[str, Any]:
        """End a link (the patient or the member); error `not_found` for a link that is not the caller's or already
        ended."""
        return await linking.revoke(ctx.principal, body.link_id, ctx.client)


def _patients(m: Mount) -> None:
    rest = m.rest

    async def rest_list(request: web.Request) -> web.Response:
        """The patients whose data the caller may see (a patient sees themself)"""
        return web.json_response({"items": await list_patients(await rest.principal(request))})

    async def rest_get(request: web.Request) -> web.Response:
        """One patient's profile (patient-scoped; audited)"""
        principal = await rest.principal(request)
        return web.json_response(await get_patient(principal, request.match_info["patient_id"],
                                                   rest.client(request)))

    m.route("GET", "/api/patients", rest_list, Items[UserOut])
    m.route("GET", "/api/patients/{patient_id}", rest_get, UserOut)

    @m.events.event("patients:list", reply=list[UserOut])
    async def _list(ctx: EventContext, _: None) -> list[dict[str, Any]]:
        """The patients whose data the caller may see."""
        return await list_patients(ctx.principal)

    @m.events.event("patient:get", PatientRef, reply=UserOut)
    async def _get(ctx: EventContext, body: PatientRef) -> dict[str, Any]:
        """One patient's profile (patient-scoped, audited; `forbidden` unless linked)."""
        return await get_patient(ctx.principal, body.patient_id, ctx.client)


def _contacts(m: Mount, contacts: Contacts) -> None:
    rest = m.rest
    path = "/api/patients/{patient_id}/contacts"

    async def rest_list(request: web.Request) -> web.Response:
        """The patient's medical contacts"""
        principal = await rest.principal(request)
        items = await contacts.list(principal, request.match_info["patient_id"], rest.client(request))
        return web.json_response({"items": items})

    async def rest_add(request: web.Request) -> web.Response:
        """Add a contact (see `contact:add` for the validation rules and limits)"""
        principal = await rest.principal(request)
        body = await read_json(request, ContactIn)
        data = await contacts.add(principal, request.match_info["patient_id"], body, rest.client(request))
        return web.json_response(data, status=201)

    async def rest_update(request: web.Request) -> web.Response:
        """Change fields of a contact (making it a sixth emergency contact is 409 `too_many_emergency_contacts`)"""
        principal = await rest.principal(request)
        fields = await read_json(request, ContactPatch)  # validated; the id is checked where it is looked up
        body = ContactUpdate.model_construct(contact_id=request.match_info["contact_id"],
                                             **fields.model_dump(exclude_unset=True))
        return web.json_response(await contacts.update(principal, body, rest.client(request),
                                                       request.match_info["patient_id"]))

    async def rest_delete(request: web.Request) -> web.Response:
        """Delete a contact (kept in the audit)"""
        principal = await rest.principal(request)
        return web.json_response(await contacts.delete(principal, request.match_info["contact_id"],
                                                       rest.client(request), request.match_info["patient_id"]))

    m.route("GET", path, rest_list, Items[ContactOut])
    m.route("POST", path, rest_add, ContactOut, body=ContactIn, status=201)
    m.route("PATCH", path + "/{contact_id}", rest_update, ContactOut, body=ContactPatch)
    m.route("DELETE", path + "/{contact_id}", rest_delete, ContactOut)

    @m.events.event("contacts:list", PatientRef, reply=list[ContactOut])
    async def _list(ctx: EventContext, body: PatientRef) -> list[dict[str, Any]]:
        """The patient's medical contacts (patient and linked users)."""
        return await contacts.list(ctx.principal, body.patient_id, ctx.client)

    @m.events.event("contact:add", ContactAdd, reply=ContactOut)
    async def _add(ctx: EventContext, body: ContactAdd) -> dict[str, Any]:
        """Add a doctor, clinic, pharmacy or emergency contact. Phones are normalised to E.164 (`+` and 7-15 digits;
        `00` prefix accepted), emails as for accounts (trimmed, lower case, checked); an emergency contact needs a
        phone, others a phone or an email; at most 100 per patient (`too_many_contacts`), of which at most 5
        emergency contacts (409 `too_many_emergency_contacts`, `details.max`)."""
        return await contacts.add(ctx.principal, body.patient_id, body, ctx.client)

    @m.events.event("contact:update", ContactUpdate, reply=ContactOut)
    async def _update(ctx: EventContext, body: ContactUpdate) -> dict[str, Any]:
        """Change fields of a contact (same validation and limits; `too_many_emergency_contacts`)."""
        return await contacts.update(ctx.principal, body, ctx.client)

    @m.events.event("contact:delete", ContactRef, reply=ContactOut)
    async def _delete(ctx: EventContext, body: ContactRef) -> dict[str, Any]:
        """Delete a contact (its last state is kept in the audit as `contacts.deleted`)."""
        return await contacts.delete(ctx.principal, body.contact_id, ctx.client)


def _uploads(m: Mount, uploads: Uploads) -> None:
    rest = m.rest

    async def create(request: web.Request) -> web.Response:
        """``multipart/form-data``: ``purpose``, optionally ``patient_id``, then the ``file`` part."""
        principal = await rest.principal(request)
        if request.content_length is not None and request.content_length > uploads.max_request_bytes:
            raise uploads.too_big()
        if request.content_type != "multipart/form-data":
            raise ApiError("unsupported_media_type", "Send multipart/form-data with purpose, patient_id and file",
                           415)
        reader = await request.multipart()
        fields: dict[str, str] = {}
        while True:
            part = await reader.next()
            if part is None:
                raise ApiError("invalid_payload", "The file part is missing", 422, {"field": "file"})
            if not isinstance(part, BodyPartReader):
                raise ApiError("invalid_payload", "Nested multipart bodies are not accepted", 422)
            if part.name == "file":
                break
            if part.name not in FIELDS or part.name in fields:
                raise ApiError("invalid_payload", f"Unexpected field {part.name!r}", 422, {"field": part.name})
            fields[part.name] = await read_field(part)
        return web.json_response(await uploads.receive(principal, fields, part, rest.client(request)), status=201)

    async def readable(request: web.Request) -> dict[str, Any]:
        principal = await rest.principal(request)
        return await uploads.readable(principal, request.match_info["upload_id"], rest.client(request))

    async def serve(request: web.Request) -> web.StreamResponse:
        """The uploaded image, with its detected content type (its patient and users linked to its patient now; a
        patient's upload is refused to its uploader once their link has ended)

        A caregiver's or clinician's avatar is readable by its owner and the patients linked to them. Reads of
        patient uploads by others are audited (`upload.read`). One byte range is answered with 206, a range outside
        the file with 416 `range_not_satisfiable`."""
        doc = await readable(request)
        return await send_grid_file(request, await uploads.open(doc), {
            "Content-Type": doc["metadata"]["content_type"], "Cache-Control": "private, max-age=86400",
            "X-Content-Type-Options": "nosniff", "Content-Disposition": "inline",
            "Content-Security-Policy": "default-src 'none'"})

    async def info(request: web.Request) -> web.Response:
        """An upload's description (type, size, dimensions, owner, patient); same access as the image"""
        return web.json_response(upload_json(await readable(request)))

    m.route("POST", "/api/uploads", create, UploadOut, status=201, media="multipart/form-data")
    m.route("GET", "/api/uploads/{upload_id}", serve, media="image/*", status=(200, 206))
    m.route("GET", "/api/uploads/{upload_id}/info", info, UploadOut)
