"""The emergency channel can't be turned into a broadcast or a pager-bomb: at most five emergency contacts per
patient (also when added in parallel, or by turning another contact into one); alerts raised on demand
(triage) are capped per patient per day (``too_many_alerts`` with ``retry_after_s``, nothing raised); and the
emergency webhook is called at most ``emergency_webhook_per_day`` times per patient per day, a call past it
logged for the operator, counted, and noted on the alert instead of made."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from beanie import PydanticObjectId

from server.alerts.documents import Alert, DailyCount
from server.care.documents import MedicalContact
from server.infra.embedded_store import EmbeddedStore
from tests.alert_clients import crisis, device_sock
from tests.helpers import Api
from tests.test_alerts import escalation_ward, webhook  # noqa: F401 (the webhook receiver fixture)

EMERGENCY = {"kind": "emergency", "name": "Neighbour", "phone": "+15550000000"}
TRIAGE_EMERGENCY = {"symptoms": ["chest_pain"]}


async def _emergency_contacts(patient_id: str) -> int:
    return await MedicalContact.find(MedicalContact.patient_id == PydanticObjectId(patient_id),
                                     MedicalContact.kind == "emergency").count()


async def test_at_most_five_emergency_contacts(api: Api) -> None:
    patient = await api.register("patient")
    sock = await api.socket(patient)
    contacts = f"/api/patients/{patient.id}/contacts"
    for n in range(5):
        status, _ = await api.request("POST", contacts, patient, json={**EMERGENCY, "name": f"Neighbour {n}"})
        assert status == 201
    status, doctor = await api.request("POST", contacts, patient, json={"kind": "doctor", "name": "Dr. X",
                                                                        "phone": "+15550000001"})
    assert status == 201
    refusal = {"code": "too_many_emergency_contacts", "message": "A patient has at most 5 emergency contacts",
               "details": {"max": 5}}
    status, err = await api.request("POST", contacts, patient, json=EMERGENCY)
    assert status == 409 and err["error"] == refusal
    reply = await sock.call("contact:add", {"patient_id": patient.id, **EMERGENCY})
    assert reply == {"ok": False, "error": refusal}
    # Turning the doctor into a sixth emergency contact, over REST or as an event, is refused too.
    status, err = await api.request("PATCH", f"{contacts}/{doctor['id']}", patient, json={"kind": "emergency"})
    assert status == 409 and err["error"] == refusal
    reply = await sock.call("contact:update", {"contact_id": doctor["id"], "kind": "emergency"})
    assert reply == {"ok": False, "error": refusal}
    assert await _emergency_contacts(patient.id) == 5
    assert (await MedicalContact.get(PydanticObjectId(doctor["id"]))).kind == "doctor"  # type: ignore[union-attr]

    # Many at once, from a fresh patient: however they interleave, never more than five are kept.
    other = await api.register("patient")
    other_sock = await api.socket(other)
    replies = await asyncio.gather(*(other_sock.call("contact:add", {"patient_id": other.id, **EMERGENCY})
                                     for _ in range(12)))
    kept = [r for r in replies if r["ok"]]
    assert all(r["error"] == refusal for r in replies if not r["ok"])
    assert len(kept) == await _emergency_contacts(other.id) <= 5


async def test_alerts_raised_on_demand_are_capped_per_day(store: EmbeddedStore, tmp_path: Path,
                                                           aiohttp_server: Any) -> None:
    async with escalation_ward(store, tmp_path, aiohttp_server, alerts_on_demand_per_day=2) as ward:
        api, (patient, maria, _), phone, _ = ward
        sock = await api.socket(patient)
        for n in (1, 2):  # raised, and resolved by the team, twice
            answer = await sock.ok("ml:triage", TRIAGE_EMERGENCY)
            assert answer["level"] == "emergency" and answer["alert_id"]
            assert len(await phone.events.wait("alert:new", n)) == n
            again = await sock.ok("ml:triage", TRIAGE_EMERGENCY)  # while it is open: the same alert, not counted
            assert again["alert_id"] == answer["alert_id"]
            await phone.ok("alert:resolve", {"alert_id": answer["alert_id"]})
        reply = await sock.call("ml:triage", TRIAGE_EMERGENCY)
        assert reply["ok"] is False and reply["error"]["code"] == "too_many_alerts"
        assert "emergency number" in reply["error"]["message"]
        details = reply["error"]["details"]
        assert details["limit"] == 2 and 0 < details["retry_after_s"] <= 24 * 3600
        carer = await api.socket(maria)  # a linked caregiver asking for the patient: the same cap
        reply = await carer.call("ml:triage", {"patient_id": patient.id, **TRIAGE_EMERGENCY})
        assert reply["ok"] is False and reply["error"]["code"] == "too_many_alerts"
        assert await Alert.find(Alert.patient_id == PydanticObjectId(patient.id)).count() == 2
        await sock.ok("bp:add", crisis())  # a crisis reading is not raised on demand: it still alerts
        kinds = [a["kind"] for a in await phone.events.wait("alert:new", 3)]
        assert kinds == ["symptom_emergency", "symptom_emergency", "bp_crisis"]


async def test_emergency_webhook_calls_are_capped_per_patient_per_day(
        store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any, webhook: tuple[str, list[Any]],  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    url, received = webhook
    async with escalation_ward(store, tmp_path, aiohttp_server, alert_escalation_s=1, alert_sweep_s=0.2,
                               emergency_webhook_url=url, emergency_webhook_per_day=1) as ward:
        api, (patient, _, _), _, desk = ward
        sock = await api.socket(patient)
        with caplog.at_level(logging.WARNING, logger="server.alerts.escalation"):
            first = (await sock.ok("ml:triage", TRIAGE_EMERGENCY))["alert_id"]
            await sock.ok("bp:add", crisis())  # a second alert, open at the same time
            alerts = await device_sock(api.base_url, await api.register("clinician"))  # not linked: hears nothing
            ids = {a["id"] for a in await desk.events.wait("alert:new", 2)}
            assert first in ids
            calls: dict[str, list[dict[str, Any]]] = {}
            for _ in range(100):  # both escalate to level 2; each records what became of its webhook call
                calls = {i: [e for e in (await desk.ok("alert:get", {"alert_id": i}))["escalations"]
                             if e.get("channel") == "webhook"] for i in ids}
                if all(calls.values()):
                    break
                await asyncio.sleep(0.1)
        outcomes = sorted((c[0]["ok"], c[0].get("suppressed")) for c in calls.values())
        assert outcomes == [(False, "daily_cap"), (True, None)]
        assert len(received) == 1  # one call reached the contacts' channel; the other was never made
        (held,) = [c[0] for c in calls.values() if not c[0]["ok"]]
        assert held["calls_today"] == 2 and held["cap"] == 1
        warned = [r.getMessage() for r in caplog.records if "NOT called" in r.getMessage()]
        assert len(warned) == 1 and patient.id in warned[0] and "1 held back today" in warned[0]
        counted = await DailyCount.find({"_id": {"$regex": f"^emergency_webhook:{patient.id}:"}}).to_list()
        assert [c.times for c in counted] == [2]
        (day,) = counted  # dropped by the store's TTL index after a month, not kept forever
        assert day.expires_at is not None and day.expires_at.date() > datetime.now(UTC).date() + timedelta(days=28)
        indexes = await DailyCount.get_pymongo_collection().index_information()
        assert indexes["expiry"].get("expireAfterSeconds") == 0
        assert alerts.events.of("alert:escalated") == []
        await alerts.close()
