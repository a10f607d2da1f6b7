"""Care-team linking: codes (single use, expiring, QR), redeeming, listing, and revocation
that takes effect on live connections at once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from beanie import PydanticObjectId

from server.care.access import care_team, memberships
from server.care.documents import Link, LinkCode
from server.core.documents import utcnow
from tests.helpers import Api


async def test_code_create_and_redeem_rest(api: Api) -> None:
    patient = await api.register("patient", name="Ana")
    carer = await api.register("caregiver", name="Maria")
    status, code = await api.request("POST", "/api/links/codes", patient)
    assert status == 201 and len(code["code"]) == 8 and code["expires_at"].endswith("Z")
    status, link = await api.request("POST", "/api/links/redeem", carer, json={"code": code["code"].lower()})
    assert status == 201
    assert link["patient"] == {"id": patient.id, "name": "Ana"}
    assert link["member"]["id"] == carer.id and link["member"]["role"] == "caregiver"
    # Single use.
    other = await api.register("clinician")
    status, body = await api.request("POST", "/api/links/redeem", other, json={"code": code["code"]})
    assert status == 404 and body["error"]["code"] == "invalid_code"
    # Both sides see it.
    _, mine = await api.request("GET", "/api/links", patient)
    _, theirs = await api.request("GET", "/api/links", carer)
    assert [lk["id"] for lk in mine["items"]] == [lk["id"] for lk in theirs["items"]] == [link["id"]]
    _, patients = await api.request("GET", "/api/patients", carer)
    assert [p["id"] for p in patients["items"]] == [patient.id]


async def test_only_patients_create_and_only_members_redeem(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    status, body = await api.request("POST", "/api/links/codes", carer)
    assert status == 403 and body["error"]["code"] == "forbidden"
    _, code = await api.request("POST", "/api/links/codes", patient)
    other_patient = await api.register("patient")
    status, body = await api.request("POST", "/api/links/redeem", other_patient, json={"code": code["code"]})
    assert status == 403
    assert await Link.find_all().count() == 0


async def test_expired_code_refused(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    _, code = await api.request("POST", "/api/links/codes", patient)
    doc = await LinkCode.find_one(LinkCode.code == code["code"])
    assert doc is not None
    assert timedelta(minutes=9) < doc.expires_at - utcnow() <= timedelta(minutes=10)
    await doc.set({LinkCode.expires_at: utcnow() - timedelta(seconds=1)})
    status, body = await api.request("POST", "/api/links/redeem", carer, json={"code": code["code"]})
    assert status == 404 and body["error"]["code"] == "invalid_code"


async def test_qr_png_for_own_open_code_only(api: Api) -> None:
    patient = await api.register("patient")
    _, code = await api.request("POST", "/api/links/codes", patient)
    status, png = await api.request("GET", code["qr_url"], patient)
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(png[16:20], "big")
    assert width >= 21 * 8  # a version-1 QR at scale 8 at least
    stranger = await api.register("patient")
    status, body = await api.request("GET", code["qr_url"], stranger)
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_wrong_codes_throttled(api: Api) -> None:
    carer = await api.register("caregiver")
    for _ in range(10):
        status, _ = await api.request("POST", "/api/links/redeem", carer, json={"code": "ZZZZZZZZ"})
        assert status == 404
    status, body = await api.request("POST", "/api/links/redeem", carer, json={"code": "ZZZZZZZZ"})
    assert status == 429 and body["error"]["details"]["retry_after_s"] > 0


async def test_revocation_takes_effect_on_live_connections(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    carer_sock = await api.socket(carer)
    patient_sock = await api.socket(patient)
    # Linking over Socket.IO; the caregiver's live socket joins the patient's room at once.
    code = await patient_sock.ok("links:create-code")
    link = await carer_sock.ok("links:redeem", {"code": code["code"]})
    (changed,) = await patient_sock.events.wait("links:changed")
    assert changed["change"] == "added" and changed["link"]["member"]["id"] == carer.id
    await api.request("PATCH", "/api/me", patient, json={"name": "Before"})
    (update,) = await carer_sock.events.wait("patient:updated")
    assert update["name"] == "Before"
    assert (await carer_sock.call("patient:get", {"patient_id": patient.id}))["ok"] is True

    revoked = await patient_sock.ok("links:revoke", {"link_id": link["id"]})
    assert revoked["revoked_at"] is not None
    await carer_sock.events.wait("links:changed", count=2)
    await api.request("PATCH", "/api/me", patient, json={"name": "After"})
    await patient_sock.events.wait("patient:updated", count=2)
    await asyncio.sleep(0.2)
    assert [u["name"] for u in carer_sock.events.of("patient:updated")] == ["Before"]
    reply = await carer_sock.call("patient:get", {"patient_id": patient.id})
    assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
    status, _ = await api.request("GET", f"/api/patients/{patient.id}", carer)
    assert status == 403
    # Revoking again, or someone else's link, is refused without change.
    reply = await patient_sock.call("links:revoke", {"link_id": link["id"]})
    assert reply["error"]["code"] == "not_found"


async def test_relink_after_revoke(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("clinician")
    link = await api.link(patient, carer)
    status, _ = await api.request("DELETE", f"/api/links/{link['id']}", carer)
    assert status == 200
    again = await api.link(patient, carer)
    assert again["id"] == link["id"] and again["revoked_at"] is None
    status, _ = await api.request("GET", f"/api/patients/{patient.id}", carer)
    assert status == 200


async def test_care_team_is_the_unrevoked_links_of_the_roles_asked(api: Api) -> None:
    """The one care-team query (alerts, notifications, presence, medications, listing links, access)."""
    patient = await api.register("patient")
    carer, clinician, former = [await api.register(r) for r in ("caregiver", "clinician", "caregiver")]
    for member in (carer, clinician):
        await api.link(patient, member)
    link = await api.link(patient, former)
    status, _ = await api.request("DELETE", f"/api/links/{link['id']}", former)
    assert status == 200
    pid = PydanticObjectId(patient.id)
    assert {(str(lk.member_id), lk.member_role) for lk in await care_team(pid)} == {
        (carer.id, "caregiver"), (clinician.id, "clinician")}
    assert [str(lk.member_id) for lk in await care_team(pid, ("caregiver",))] == [carer.id]
    assert [str(lk.patient_id) for lk in await memberships(PydanticObjectId(clinician.id))] == [patient.id]
    assert await memberships(PydanticObjectId(former.id)) == []
