"""REST for accounts: register, log in, refresh, log out, profile, password."""

from __future__ import annotations

import re
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from server.care import audit
from server.care.documents import Role, User
from server.care.uploads import require_own_upload
from server.core.identity import as_object_id
from server.core.patch import Patch
from server.transport.http import client_of, read_json, require_principal, services

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Secret = Annotated[str, Field(min_length=1, max_length=256)]


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("not an IANA time zone (e.g. Europe/Lisbon)") from None
    return value


def _object_id(value: str) -> str:
    return str(as_object_id(value, "avatar_id"))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterIn(Strict):
    email: Annotated[str, Field(max_length=254)]
    password: Secret
    name: Name
    role: Role


class LoginIn(Strict):
    email: Annotated[str, Field(max_length=254)]
    password: Secret


class RefreshIn(Strict):
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)]


class ProfilePatch(Patch):
    keep = frozenset({"name", "timezone", "language"})
    name: Name | None = None
    phone: Annotated[str, StringConstraints(pattern=re.compile(r"^\+[1-9]\d{6,14}$"))] | None = None
    timezone: Annotated[str, Field(max_length=64), AfterValidator(_timezone)] | None = None
    language: Annotated[str, StringConstraints(pattern=re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$"))] | None = None
    avatar_id: Annotated[str, AfterValidator(_object_id)] | None = None


class PasswordChange(Strict):
    current_password: Secret
    new_password: Secret


async def register(request: web.Request) -> web.Response:
    body = await read_json(request, RegisterIn)
    result = await services(request).auth.register(body.email, body.password, body.name, body.role,
                                                   client_of(request))
    return web.json_response(result, status=201)


async def login(request: web.Request) -> web.Response:
    body = await read_json(request, LoginIn)
    return web.json_response(await services(request).auth.login(body.email, body.password, client_of(request)))


async def refresh(request: web.Request) -> web.Response:
    body = await read_json(request, RefreshIn)
    return web.json_response(await services(request).auth.refresh(body.refresh_token, client_of(request)))


async def logout(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    await services(request).auth.logout(principal, client_of(request))
    return web.Response(status=204)


async def get_me(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    user = await User.get(principal.user_id)
    assert user is not None  # authenticate() checked it exists
    return web.json_response(user.public())


async def patch_me(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    changes = (await read_json(request, ProfilePatch)).model_dump(exclude_unset=True)
    user = await User.get(principal.user_id)
    assert user is not None
    if changes.get("avatar_id") is not None:
        await require_own_upload(services(request), principal.user_id, changes["avatar_id"], "avatar")
    moved = "timezone" in changes and changes["timezone"] != user.timezone
    if changes:
        await user.set(changes)
    patient_id = user.id if user.role == "patient" else None
    scheduler = services(request).scheduler
    if moved and patient_id is not None and scheduler is not None:
        await scheduler.replan_patient(patient_id)  # reminders follow the patient's local clock
    await audit.record("profile.update", principal=principal, patient_id=patient_id, client=client_of(request),
                       fields=sorted(changes))
    if patient_id is not None and changes:
        await services(request).realtime.to_patient(patient_id, "patient:updated", user.public())
    return web.json_response(user.public())


async def change_password(request: web.Request) -> web.Response:
    principal = await require_principal(request)
    body = await read_json(request, PasswordChange)
    await services(request).auth.change_password(principal, body.current_password, body.new_password,
                                                 client_of(request))
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/auth/register", register)
    r.add_post("/api/auth/login", login)
    r.add_post("/api/auth/refresh", refresh)
    r.add_post("/api/auth/logout", logout)
    r.add_get("/api/me", get_me)
    r.add_patch("/api/me", patch_me)
    r.add_post("/api/me/password", change_password)
