"""Clinicians are verified, not self-declared (issue 14, item 1).

The attacks: register as a clinician and move a patient's critical heart-rate thresholds to 300/15 (their
alarms switched off). Now self-registration as a clinician is refused; a clinician who registered before is
unverified after the migration and acts as a caregiver; a verified clinician stays within the clinical limits,
and every change is audited with its old and new values and announced to the patient and the care team."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestServer
from pymongo import AsyncMongoClient

from server.app import create_app
from server.care.documents import User
from server.care.security import hash_password
from server.core.config import Settings
from server.core.documents import utcnow
from server.vitals.documents import THRESHOLD_LIMITS, PatientThresholds
from tests.helpers import PASSWORD, Api, Sock
from tests.security.test_orgs import assert_uniform

DEFAULTS = {"tachycardia_critical_hr": 150.0, "bradycardia_critical_hr": 40.0}


async def thresholds(sock: Sock, patient_id: str) -> dict:
    return await sock.ok("vitals:get-thresholds", {"patient_id": patient_id})


async def test_self_registering_as_clinician_is_refused_and_creates_nothing(api: Api) -> None:
    email = "dr.self-declared@example.org"
    status, body = await api.request("POST", "/api/auth/register", json={
        "email": email, "password": PASSWORD, "name": "Dr Self", "role": "clinician"})
    assert status == 403
    assert_uniform(body, "clinician_invite_required")
    assert await User.find_one(User.email == email) is None
    status, body = await api.request("POST", "/api/auth/login", json={"email": email, "password": PASSWORD})
    assert status == 401 and body["error"]["code"] == "invalid_credentials"


async def _seed_legacy(settings: Settings) -> None:
    """What a database held before this release: a clinician who chose the role at registration, linked to a
    patient (link role clinician), and no ``verified`` field anywhere."""
    client: AsyncMongoClient = AsyncMongoClient(settings.mongodb_url)
    db = client[settings.mongodb_db]
    hashed, now = await hash_password(PASSWORD), utcnow()
    users = [{"email": email, "password_hash": hashed, "name": name, "role": role, "timezone": "UTC",
              "language": "en", "created_at": now, "password_changed_at": now, "schema_version": 1}
             for email, name, role in (("legacy.patient@example.org", "Pat", "patient"),
                                       ("legacy.dr@example.org", "Dr Legacy", "clinician"))]
    patient_id, clinician_id = (await db.users.insert_many(users)).inserted_ids
    await db.links.insert_one({"_id": f"{patient_id}:{clinician_id}", "patient_id": patient_id,
                               "member_id": clinician_id, "member_role": "clinician", "created_at": now,
                               "revoked_at": None, "schema_version": 1})
    await client.close()


async def _login(api: Api, email: str) -> dict:
    status, body = await api.request("POST", "/api/auth/login", json={"email": email, "password": PASSWORD})
    assert status == 200, body
    return body


async def test_unverified_migrated_clinician_cannot_move_thresholds(settings: Settings, aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    await _seed_legacy(settings)
    server: TestServer = await aiohttp_server(create_app(settings))  # start-up runs the migration
    async with Api(str(server.make_url("")).rstrip("/"), server.app) as api:
        legacy = await _login(api, "legacy.dr@example.org")
        assert legacy["user"]["verified"] is False and legacy["user"]["acting_role"] == "caregiver"
        patient = await _login(api, "legacy.patient@example.org")
        pid = patient["user"]["id"]
        as_patient = {"Authorization": f"Bearer {patient['access_token']}"}
        _, links = await api.request("GET", "/api/links", headers=as_patient)
        assert [link["member"]["role"] for link in links["items"]] == ["caregiver"]

        sock = await api.socket(token=legacy["access_token"])
        assert (await thresholds(sock, pid))["tachycardia_critical_hr"] == 150.0  # a caregiver may read them
        reply = await sock.call("vitals:set-thresholds", {"patient_id": pid, "tachycardia_critical_hr": 200,
                                                          "bradycardia_critical_hr": 30})
        assert reply["ok"] is False and reply["error"]["code"] == "forbidden", reply
        assert await PatientThresholds.get(pid) is None
        await sock.close()

        # An organisation verifies them: its admin invites their email, they accept as the logged-in account.
        admin, org_id = await api.org_admin()
        token = await api.invite(admin, org_id, "legacy.dr@example.org")
        status, joined = await api.request("POST", "/api/invitations/accept", json={"token": token},
                                           headers={"Authorization": f"Bearer {legacy['access_token']}"})
        assert status == 200 and joined["user"]["verified"] is True, joined
        sock = await api.socket(token=legacy["access_token"])  # a new connection acts with the new role
        changed = await sock.ok("vitals:set-thresholds", {"patient_id": pid, "tachycardia_critical_hr": 170})
        assert changed["tachycardia_critical_hr"] == 170


@pytest.mark.parametrize(("tachycardia", "bradycardia"), [(300, 15), (221, 40), (150, 29)])
async def test_verified_clinician_cannot_switch_alarms_off(api: Api, tachycardia: float, bradycardia: float) -> None:
    patient, clinician = await api.register("patient"), await api.register("clinician")
    await api.link(patient, clinician)
    watching, sock = await api.socket(patient), await api.socket(clinician)
    reply = await sock.call("vitals:set-thresholds", {"patient_id": patient.id, "tachycardia_critical_hr": tachycardia,
                                                      "bradycardia_critical_hr": bradycardia})
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload", reply
    assert {p["field"] for p in reply["error"]["details"]["problems"]} <= set(DEFAULTS)
    assert await PatientThresholds.get(patient.id) is None
    assert {k: (await thresholds(sock, patient.id))[k] for k in DEFAULTS} == DEFAULTS
    assert watching.events.of("vitals:thresholds-changed") == []


async def test_every_threshold_has_clinical_limits(api: Api) -> None:
    patient, clinician = await api.register("patient"), await api.register("clinician")
    await api.link(patient, clinician)
    sock = await api.socket(clinician)
    for name, (low, high) in THRESHOLD_LIMITS.items():
        for value in (low - 0.01 * max(abs(low), 1), high + 0.01 * max(abs(high), 1)):
            reply = await sock.call("vitals:set-thresholds", {"patient_id": patient.id, name: value})
            assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload", (name, value, reply)
    assert await PatientThresholds.get(patient.id) is None


async def test_change_within_limits_is_audited_and_announced(api: Api) -> None:
    patient, carer, clinician = [await api.register(r) for r in ("patient", "caregiver", "clinician")]
    await api.link(patient, carer)
    await api.link(patient, clinician)
    patient_sock, carer_sock, sock = await api.socket(patient), await api.socket(carer), await api.socket(clinician)
    result = await sock.ok("vitals:set-thresholds", {"patient_id": patient.id, "tachycardia_critical_hr": 220,
                                                     "bradycardia_critical_hr": 30})
    assert (result["tachycardia_critical_hr"], result["bradycardia_critical_hr"]) == (220, 30)

    (event,) = await patient_sock.events.wait("vitals:thresholds-changed")
    assert event["changed"] == {"tachycardia_critical_hr": {"old": 150.0, "new": 220.0},
                                "bradycardia_critical_hr": {"old": 40.0, "new": 30.0}}
    assert event["by"]["id"] == clinician.id and event["thresholds"]["tachycardia_critical_hr"] == 220
    await carer_sock.events.wait("vitals:thresholds-changed")
    for s in (patient_sock, carer_sock):
        notes = [n for n in await s.events.wait("notification:new") if n["kind"] == "thresholds_changed"]
        assert notes and notes[0]["data"]["changed"] == event["changed"]

    status, page = await api.request("GET", "/api/audit", patient)
    assert status == 200
    (entry,) = [e for e in page["items"] if e["action"] == "thresholds.changed"]
    assert entry["actor_id"] == clinician.id and entry["patient_id"] == patient.id
    assert entry["details"] == {"old": {"tachycardia_critical_hr": 150.0, "bradycardia_critical_hr": 40.0},
                                "new": {"tachycardia_critical_hr": 220.0, "bradycardia_critical_hr": 30.0}}

    # The old values of the next change are the ones this one set.
    await sock.ok("vitals:set-thresholds", {"patient_id": patient.id, "tachycardia_critical_hr": 180})
    (_, second) = await patient_sock.events.wait("vitals:thresholds-changed", count=2)
    assert second["changed"] == {"tachycardia_critical_hr": {"old": 220.0, "new": 180.0}}


def test_documented_limits_are_the_enforced_ones() -> None:
    from tests.test_docs import ASYNCAPI

    ref = ASYNCAPI["components"]["messages"]["vitals.set-thresholds"]["payload"]["$ref"]
    documented = ASYNCAPI["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    bounds = {name: next(s for s in documented[name]["anyOf"] if s.get("type") == "number")
              for name in THRESHOLD_LIMITS}
    assert {name: (b["minimum"], b["maximum"]) for name, b in bounds.items()} == THRESHOLD_LIMITS
