"""Organisations vouch for clinicians (issue 14, item 1): the attacks on the invitation and on a suspension.

An invitation is single-use, expires, is bound to its email (nobody else can take it: neither by typing
another email nor by accepting it logged in as someone else) and cannot be guessed (256 random bits, only a
hash stored). Only an admin invites or suspends. A suspended member's open sockets end at once, in every
process, and they cannot log in or refresh while suspended. Where SMTP is configured the link is mailed."""

from __future__ import annotations

import asyncio
import re
import secrets
from email import message_from_bytes
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller

from server.app import create_app
from server.care.documents import Invitation, Membership, User
from server.core.documents import utcnow
from server.infra.embedded_store import EmbeddedStore, free_port
from tests.conftest import make_settings
from tests.helpers import PASSWORD, Api, Sock, process_env, run_cli, server_processes


def assert_uniform(body: dict, code: str) -> None:
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body


async def _accept(api: Api, token: str, email: str, **headers: str) -> tuple[int, Any]:
    return await api.request("POST", "/api/invitations/accept", headers=headers, json={
        "token": token, "email": email, "name": "Dr Who", "password": PASSWORD})


async def test_invitation_is_single_use(api: Api) -> None:
    admin, org_id = await api.org_admin()
    token = await api.invite(admin, org_id, "once@example.org")
    status, first = await _accept(api, token, "once@example.org")
    assert status == 201 and first["user"]["role"] == "clinician" and first["user"]["verified"] is True
    assert first["org"]["id"] == org_id
    status, again = await _accept(api, token, "once@example.org")
    assert status == 410
    assert_uniform(again, "invitation_invalid")
    # Accepted concurrently by two requests: one account, one win.
    token = await api.invite(admin, org_id, "race@example.org")
    results = await asyncio.gather(*(_accept(api, token, "race@example.org") for _ in range(3)))
    assert sorted(status for status, _ in results)[0] == 201 and [s for s, _ in results].count(201) == 1
    assert await User.find(User.email == "race@example.org").count() == 1


async def test_invitation_expires(api: Api) -> None:
    admin, org_id = await api.org_admin()
    token = await api.invite(admin, org_id, "late@example.org")
    await Invitation.get_pymongo_collection().update_many({"email": "late@example.org"},
                                                          {"$set": {"expires_at": utcnow()}})
    status, body = await _accept(api, token, "late@example.org")
    assert status == 410
    assert_uniform(body, "invitation_invalid")
    assert await User.find_one(User.email == "late@example.org") is None


async def test_invitation_is_bound_to_its_email(api: Api) -> None:
    admin, org_id = await api.org_admin()
    token = await api.invite(admin, org_id, "invited@example.org")
    status, body = await _accept(api, token, "intruder@example.org")
    assert status == 403
    assert_uniform(body, "invitation_email_mismatch")
    assert await User.find_one(User.email == "intruder@example.org") is None
    # Logged in as someone else, the invitation does not attach their account either.
    carer = await api.register("caregiver")
    status, body = await api.request("POST", "/api/invitations/accept", carer, json={"token": token})
    assert status == 403
    assert_uniform(body, "invitation_email_mismatch")
    _, me = await api.request("GET", "/api/me", carer)
    assert me["role"] == "caregiver" and await Membership.find(Membership.user_id == me["id"]).count() == 0
    # The refusals did not use it up: the invited address still can.
    status, body = await _accept(api, token, "invited@example.org")
    assert status == 201, body


async def test_invitation_cannot_be_guessed_or_read_back(api: Api) -> None:
    admin, org_id = await api.org_admin()
    tokens = [await api.invite(admin, org_id, f"guess{i}@example.org") for i in range(5)]
    assert len(set(tokens)) == 5 and all(re.fullmatch(r"[A-Za-z0-9_-]{43}", t) for t in tokens)  # 256 bits each
    stored = await Invitation.get_pymongo_collection().find({"org_id": {"$exists": True}}).to_list()
    assert not any(t in repr(doc) for doc in stored for t in tokens)  # only hashes are kept
    _, listing = await api.request("GET", f"/api/orgs/{org_id}/members", admin)
    assert not any(t in repr(listing) for t in tokens) and len(listing["invitations"]) >= 5
    status, body = await _accept(api, secrets.token_urlsafe(32), "guess0@example.org")
    assert status == 410
    assert_uniform(body, "invitation_invalid")


async def test_only_an_admin_invites_or_suspends(api: Api) -> None:
    admin, org_id = await api.org_admin()
    member, stranger = await api.register("clinician"), await api.register("caregiver")
    before = await Invitation.count()
    for who in (member, stranger):
        status, body = await api.request("POST", f"/api/orgs/{org_id}/invitations", who,
                                         json={"email": "sneaky@example.org"})
        assert status == 403
        assert_uniform(body, "forbidden")
        status, body = await api.request("POST", f"/api/orgs/{org_id}/members/{admin.id}/suspend", who)
        assert status == 403
        assert_uniform(body, "forbidden")
    assert await Invitation.count() == before
    _, me = await api.request("GET", "/api/me", admin)
    assert me["verified"] is True


async def _dropped(sock: Sock) -> asyncio.Event:
    gone = asyncio.Event()

    async def on_disconnect(*_: Any) -> None:
        gone.set()

    sock.client.on("disconnect", on_disconnect)
    return gone


async def test_suspended_member_is_cut_off_and_cannot_log_in(api: Api) -> None:
    admin, org_id = await api.org_admin()
    patient, clinician = await api.register("patient"), await api.register("clinician")
    await api.link(patient, clinician)
    sock = await api.socket(clinician)
    gone = await _dropped(sock)
    status, member = await api.request("POST", f"/api/orgs/{org_id}/members/{clinician.id}/suspend", admin)
    assert status == 200 and member["status"] == "suspended", member
    await asyncio.wait_for(gone.wait(), 5)
    status, body = await api.request("POST", "/api/auth/login", json={"email": clinician.email, "password": PASSWORD})
    assert status == 403
    assert_uniform(body, "account_suspended")
    status, body = await api.request("POST", "/api/auth/refresh", json={"refresh_token": clinician.refresh_token})
    assert status == 401
    status, _ = await api.request("GET", f"/api/patients/{patient.id}", clinician)
    assert status == 401
    # Reinstated: they log in again, as a verified clinician.
    status, _ = await api.request("POST", f"/api/orgs/{org_id}/members/{clinician.id}/reinstate", admin)
    assert status == 200
    status, body = await api.request("POST", "/api/auth/login", json={"email": clinician.email, "password": PASSWORD})
    assert status == 200 and body["user"]["acting_role"] == "clinician", body


async def test_suspension_reaches_every_process(store: EmbeddedStore, redis_url: str, tmp_path: Path) -> None:
    env = process_env(store.url, tmp_path, redis_url)
    async with server_processes(env, env) as (one, two), \
            Api(one.url, operator_env=env) as api_one, Api(two.url) as api_two:
        admin, org_id = await api_one.org_admin()  # the operator's `healthmate org create`, then accepted
        clinician = await api_one.register("clinician")
        sock = await api_two.socket(clinician)
        gone = await _dropped(sock)
        status, _ = await api_one.request("POST", f"/api/orgs/{org_id}/members/{clinician.id}/suspend", admin)
        assert status == 200
        await asyncio.wait_for(gone.wait(), 10)  # held by process two, ended by process one's suspension
        status, body = await api_two.request("POST", "/api/auth/login",
                                             json={"email": clinician.email, "password": PASSWORD})
        assert status == 403
        assert_uniform(body, "account_suspended")


async def test_operator_makes_an_existing_account_admin(api: Api, store: EmbeddedStore, settings: Any,
                                                       tmp_path: Path) -> None:
    carer = await api.register("caregiver")
    env = process_env(store.url, tmp_path, "", mongodb_db=settings.mongodb_db)
    out = await run_cli(env, "org", "create", "Riverside home care", "--admin", carer.email.upper())
    org_id = re.search(r"created: ([0-9a-f]{24})", out).group(1)  # type: ignore[union-attr]
    assert "existing account" in out and "#invitation=" not in out
    status, mine = await api.request("GET", "/api/orgs", carer)
    assert status == 200 and mine["items"] == [{"org": {"id": org_id, "name": "Riverside home care",
                                                        "created_at": mine["items"][0]["org"]["created_at"]},
                                                "role": "admin", "status": "active"}]


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


async def test_invitation_is_mailed_where_smtp_is_configured(store: EmbeddedStore, tmp_path: Path,
                                                             aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    inbox, port = _Inbox(), free_port()
    receiver = Controller(inbox, hostname="127.0.0.1", port=port)
    receiver.start()
    try:
        settings = make_settings(store.url, tmp_path, smtp_url=f"smtp://127.0.0.1:{port}",
                                 smtp_from="Health Mate <no-reply@example.org>", public_url="https://care.example.org")
        server: TestServer = await aiohttp_server(create_app(settings))
        async with Api(str(server.make_url("")).rstrip("/"), server.app) as api:
            admin, org_id = await api.org_admin()
            status, sent = await api.request("POST", f"/api/orgs/{org_id}/invitations", admin,
                                             json={"email": "Mailed@Example.org"})
            assert status == 201 and sent["mailed"] is True, sent
            assert sent["link"].startswith("https://care.example.org/#invitation=")
            (envelope,) = inbox.messages
            assert envelope.rcpt_tos == ["mailed@example.org"]
            mail = message_from_bytes(envelope.content)
            assert mail["From"] == "Health Mate <no-reply@example.org>" and "Test clinic" in mail["Subject"]
            assert sent["link"] in mail.get_payload(decode=True).decode()
            token = sent["link"].split("#invitation=")[1]
            status, _ = await _accept(api, token, "mailed@example.org")
            assert status == 201
            receiver.stop()
            status, unsent = await api.request("POST", f"/api/orgs/{org_id}/invitations", admin,
                                               json={"email": "offline@example.org"})
            assert status == 201 and unsent["mailed"] is False and "#invitation=" in unsent["link"]
    finally:
        if receiver.loop.is_running():
            receiver.stop()


async def test_a_patient_account_cannot_be_made_a_clinician(api: Api) -> None:
    admin, org_id = await api.org_admin()
    patient = await api.register("patient")
    token = await api.invite(admin, org_id, patient.email)
    status, body = await api.request("POST", "/api/invitations/accept", patient, json={"token": token})
    assert status == 409
    assert_uniform(body, "role_conflict")
    _, me = await api.request("GET", "/api/me", patient)
    assert me["role"] == "patient"
    status, body = await _accept(api, token, "someone.else@example.org")  # and the refusal did not use it up
    assert status == 403 and body["error"]["code"] == "invitation_email_mismatch"
    assert await Invitation.find_one(Invitation.email == patient.email, Invitation.accepted_at == None) is not None  # noqa: E711
