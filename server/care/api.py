"""The care concern's transport: REST routes and Socket.IO events of accounts, care-team links, patients,
the audit log, medical contacts and uploads, each handler bound once to its service."""

from __future__ import annotations

from functools import partial
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
from server.core.errors import ApiError
from server.transport.events import EventContext
from server.transport.http import cursor_page, page_params, read_json, send_grid_file
from server.transport.mount import Mount

NO_CONTENT = 204
# The refresh token as a cookie: out of reach of scripts (HttpOnly), sent only over TLS (localhost counts)
# and only by this site's own pages (SameSite=Strict), and only to /api/auth/refresh and /api/auth/logout.
REFRESH_COOKIE = "hm_refresh"
REFRESH_COOKIE_ATTRS: dict[str, Any] = {"path": "/api/auth", "secure": True, "httponly": True, "samesite": "Strict"}


def mount(m: Mount, auth: AuthService, profiles: Profiles, linking: Linking, contacts: Contacts,
          uploads: Uploads, orgs: Organisations) -> None:
    _accounts(m, auth, profiles)
    _orgs(m, orgs)
    _links(m, linking)
    _patients(m)
    _contacts(m, contacts)
    _uploads(m, uploads)

    async def list_audit(request: web.Request) -> web.Response:
        principal = await m.rest.principal(request)
        before, limit = page_params(request)
        return web.json_response(await cursor_page(AuditEntry, audit.concerning(principal.user_id), before, limit,
                                                   audit.entry_json))

    m.routes.add_get("/api/audit", list_audit)


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
        body = await read_json(request, RegisterIn)
        result = await auth.register(body.email, body.password, body.name, body.role, rest.client(request))
        return _tokens(result, body.cookie, refresh_ttl_s, 201)

    async def login(request: web.Request) -> web.Response:
        body = await read_json(request, LoginIn)
        return _tokens(await auth.login(body.email, body.password, rest.client(request)), body.cookie, refresh_ttl_s)

    async def refresh(request: web.Request) -> web.Response:
        """The refresh token from the body, else from the cookie (then the new one goes back in the cookie)."""
        body = await read_json(request, RefreshIn)
        token = body.refresh_token or request.cookies.get(REFRESH_COOKIE, "")
        result = await auth.refresh(token, rest.client(request))
        return _tokens(result, body.cookie or body.refresh_token is None, refresh_ttl_s)

    async def logout(request: web.Request) -> web.Response:
        await auth.logout(await rest.principal(request), rest.client(request))
        response = web.Response(status=NO_CONTENT)
        response.del_cookie(REFRESH_COOKIE, **REFRESH_COOKIE_ATTRS)
        return response

    async def get_me(request: web.Request) -> web.Response:
        return web.json_response(await profiles.get(await rest.principal(request)))

    async def patch_me(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        changes = (await read_json(request, ProfilePatch)).model_dump(exclude_unset=True)
        return web.json_response(await profiles.update(principal, changes, rest.client(request)))

    async def change_password(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        body = await read_json(request, PasswordChange)
        await auth.change_password(principal, body.current_password, body.new_password, rest.client(request))
        return web.Response(status=NO_CONTENT)

    r = m.routes
    r.add_post("/api/auth/register", register)
    r.add_post("/api/auth/login", login)
    r.add_post("/api/auth/refresh", refresh)
    r.add_post("/api/auth/logout", logout)
    r.add_get("/api/me", get_me)
    r.add_patch("/api/me", patch_me)
    r.add_post("/api/me/password", change_password)


def _orgs(m: Mount, orgs: Organisations) -> None:
    rest = m.rest

    async def mine(request: web.Request) -> web.Response:
        return web.json_response({"items": await orgs.mine(await rest.principal(request))})

    async def members(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        return web.json_response(await orgs.members(principal, request.match_info["org_id"], rest.client(request)))

    async def invite(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        body = await read_json(request, InviteIn)
        result = await orgs.invite(principal, request.match_info["org_id"], body, f"{request.scheme}://{request.host}",
                                   rest.client(request))
        return web.json_response(result, status=201, headers={"Cache-Control": "no-store"})

    async def revoke(request: web.Request) -> web.Response:
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

    r = m.routes
    r.add_get("/api/orgs", mine)
    r.add_get("/api/orgs/{org_id}/members", members)
    r.add_post("/api/orgs/{org_id}/invitations", invite)
    r.add_delete("/api/orgs/{org_id}/invitations/{invitation_id}", revoke)
    r.add_post("/api/orgs/{org_id}/members/{user_id}/suspend", partial(set_status, True))
    r.add_post("/api/orgs/{org_id}/members/{user_id}/reinstate", partial(set_status, False))
    r.add_post("/api/invitations/accept", accept)


def _links(m: Mount, linking: Linking) -> None:
    rest = m.rest

    async def post_code(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        return web.json_response(await linking.create_code(principal, rest.client(request)), status=201)

    async def get_qr(request: web.Request) -> web.Response:
        png = await linking.qr_png(await rest.principal(request), request.match_info["code"])
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})

    async def post_redeem(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        body = await read_json(request, RedeemIn)
        return web.json_response(await linking.redeem(principal, body.code, rest.client(request)), status=201)

    async def get_links(request: web.Request) -> web.Response:
        return web.json_response({"items": await linking.links(await rest.principal(request))})

    async def delete_link(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        return web.json_response(await linking.revoke(principal, request.match_info["link_id"], rest.client(request)))

    r = m.routes
    r.add_post("/api/links/codes", post_code)
    r.add_get("/api/links/codes/{code}/qr.png", get_qr)
    r.add_post("/api/links/redeem", post_redeem)
    r.add_get("/api/links", get_links)
    r.add_delete("/api/links/{link_id}", delete_link)

    @m.events.event("links:create-code")
    async def _create(ctx: EventContext, _: None) -> dict[str, Any]:
        return await linking.create_code(ctx.principal, ctx.client)

    @m.events.event("links:redeem", RedeemIn)
    async def _redeem(ctx: EventContext, body: RedeemIn) -> dict[str, Any]:
        return await linking.redeem(ctx.principal, body.code, ctx.client)

    @m.events.event("links:list")
    async def _list(ctx: EventContext, _: None) -> list[dict[str, Any]]:
        return await linking.links(ctx.principal)

    @m.events.event("links:revoke", RevokeIn)
    async def _revoke(ctx: EventContext, body: RevokeIn) -> dict[str, Any]:
        return await linking.revoke(ctx.principal, body.link_id, ctx.client)


def _patients(m: Mount) -> None:
    rest = m.rest

    async def rest_list(request: web.Request) -> web.Response:
        return web.json_response({"items": await list_patients(await rest.principal(request))})

    async def rest_get(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        return web.json_response(await get_patient(principal, request.match_info["patient_id"],
                                                   rest.client(request)))

    m.routes.add_get("/api/patients", rest_list)
    m.routes.add_get("/api/patients/{patient_id}", rest_get)

    @m.events.event("patients:list")
    async def _list(ctx: EventContext, _: None) -> list[dict[str, Any]]:
        return await list_patients(ctx.principal)

    @m.events.event("patient:get", PatientRef)
    async def _get(ctx: EventContext, body: PatientRef) -> dict[str, Any]:
        return await get_patient(ctx.principal, body.patient_id, ctx.client)


def _contacts(m: Mount, contacts: Contacts) -> None:
    rest = m.rest
    path = "/api/patients/{patient_id}/contacts"

    async def rest_list(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        items = await contacts.list(principal, request.match_info["patient_id"], rest.client(request))
        return web.json_response({"items": items})

    async def rest_add(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        body = await read_json(request, ContactIn)
        data = await contacts.add(principal, request.match_info["patient_id"], body, rest.client(request))
        return web.json_response(data, status=201)

    async def rest_update(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        fields = await read_json(request, ContactPatch)  # validated; the id is checked where it is looked up
        body = ContactUpdate.model_construct(contact_id=request.match_info["contact_id"],
                                             **fields.model_dump(exclude_unset=True))
        return web.json_response(await contacts.update(principal, body, rest.client(request),
                                                       request.match_info["patient_id"]))

    async def rest_delete(request: web.Request) -> web.Response:
        principal = await rest.principal(request)
        return web.json_response(await contacts.delete(principal, request.match_info["contact_id"],
                                                       rest.client(request), request.match_info["patient_id"]))

    m.routes.add_get(path, rest_list)
    m.routes.add_post(path, rest_add)
    m.routes.add_patch(path + "/{contact_id}", rest_update)
    m.routes.add_delete(path + "/{contact_id}", rest_delete)

    @m.events.event("contacts:list", PatientRef)
    async def _list(ctx: EventContext, body: PatientRef) -> list[dict[str, Any]]:
        return await contacts.list(ctx.principal, body.patient_id, ctx.client)

    @m.events.event("contact:add", ContactAdd)
    async def _add(ctx: EventContext, body: ContactAdd) -> dict[str, Any]:
        return await contacts.add(ctx.principal, body.patient_id, body, ctx.client)

    @m.events.event("contact:update", ContactUpdate)
    async def _update(ctx: EventContext, body: ContactUpdate) -> dict[str, Any]:
        return await contacts.update(ctx.principal, body, ctx.client)

    @m.events.event("contact:delete", ContactRef)
    async def _delete(ctx: EventContext, body: ContactRef) -> dict[str, Any]:
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
        doc = await readable(request)
        return await send_grid_file(request, await uploads.open(doc), {
            "Content-Type": doc["metadata"]["content_type"], "Cache-Control": "private, max-age=86400",
            "X-Content-Type-Options": "nosniff", "Content-Disposition": "inline",
            "Content-Security-Policy": "default-src 'none'"})

    async def info(request: web.Request) -> web.Response:
        return web.json_response(upload_json(await readable(request)))

    m.routes.add_post("/api/uploads", create)
    m.routes.add_get("/api/uploads/{upload_id}", serve)
    m.routes.add_get("/api/uploads/{upload_id}/info", info)
