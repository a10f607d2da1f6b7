"""Blood pressure over real sockets: from the patient, a caregiver on the patient's behalf and a paired
cuff; implausible input refused; live push; correction and soft delete; statistics; REST history; FHIR."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import socketio
from beanie import PydanticObjectId

from server.care.documents import AuditEntry
from server.vitals.documents import BPReading
from tests.helpers import Api, User
from tests.query_plans import QUERIES


def at(minutes_ago: float = 0) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()


async def pair(api: Api, patient: User, kind: str = "bp_cuff", serial: str = "CUFF-1") -> str:
    status, body = await api.request("POST", f"/api/patients/{patient.id}/devices", patient,
                                     json={"kind": kind, "serial": serial, "model": "Arm 3"})
    assert status == 201, body
    return body["credential"]


async def device_socket(api: Api, credential: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(api.base_url, auth={"device_token": credential}, transports=["websocket"])
    return client


async def test_readings_from_patient_caregiver_and_cuff(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    await api.link(patient, carer)
    ps, cs = await api.socket(patient), await api.socket(carer)
    mine = await ps.ok("bp:add", {"systolic": 118, "diastolic": 76, "pulse": 64, "measured_at": at(3),
                                  "position": "sitting", "arm": "left"})
    assert mine["category"] == "normal" and mine["entered_by"] == patient.id and mine["source"] == "app"
    theirs = await cs.ok("bp:add", {"patient_id": patient.id, "systolic": 142, "diastolic": 85,
                                    "measured_at": at(2), "note": "after walk"})
    assert theirs["category"] == "hypertension_stage_2"
    assert theirs["entered_by"] == carer.id and theirs["entered_by_role"] == "caregiver"
    cuff = await device_socket(api, await pair(api, patient))
    try:
        reply = await cuff.call("bp:add", {"systolic": 131, "diastolic": 70, "pulse": 70, "measured_at": at(1)})
        assert reply["ok"] and reply["data"]["source"] == "device" and reply["data"]["device_id"]
    finally:
        await cuff.disconnect()
    # Everyone in the patient's room hears each new reading live.
    for sock in (ps, cs):
        pushed = await sock.events.wait("bp:new", 3)
        assert [p["category"] for p in pushed] == ["normal", "hypertension_stage_2", "hypertension_stage_1"]
    # A caregiver without the patient id acts for nobody.
    reply = await cs.call("bp:add", {"systolic": 120, "diastolic": 80, "measured_at": at()})
    assert reply["error"]["code"] == "forbidden"
    assert await BPReading.find_all().count() == 3


async def test_only_a_cuff_sends_readings(api: Api) -> None:
    patient = await api.register("patient")
    ecg = await device_socket(api, await pair(api, patient, "ecg", "ECG-1"))
    try:
        reply = await ecg.call("bp:add", {"systolic": 120, "diastolic": 70, "measured_at": at()})
        assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
    finally:
        await ecg.disconnect()


async def test_implausible_and_malformed_rejected_and_nothing_stored(api: Api) -> None:
    patient = await api.register("patient")
    ps = await api.socket(patient)
    before = await BPReading.find_all().count()
    for bad, field in (({"systolic": 80, "diastolic": 90}, "systolic"),
                       ({"systolic": 320, "diastolic": 90}, "systolic"),
                       ({"systolic": 120, "diastolic": 10}, "diastolic"),
                       ({"systolic": 120, "diastolic": 80, "pulse": 300}, "pulse"),
                       ({"systolic": 120, "diastolic": 80, "measured_at": at(-60)}, "measured_at")):
        reply = await ps.call("bp:add", {"measured_at": at(), **bad})
        assert reply["ok"] is False and reply["error"]["code"] == "implausible_reading", bad
        assert reply["error"]["details"]["field"] == field
    for bad in ({"systolic": "high", "diastolic": 80, "measured_at": at()},
                {"systolic": 120, "diastolic": 80, "measured_at": "2024-01-01T10:00:00"},  # naive time
                {"systolic": 120, "diastolic": 80, "measured_at": at(), "arm": "leg"},
                {"systolic": 120, "diastolic": 80, "measured_at": at(), "note": "x" * 501},
                {"systolic": 120, "diastolic": 80, "measured_at": at(), "extra": 1}, None, [1, 2]):
        reply = await ps.call("bp:add", bad)
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_payload", bad
    assert await BPReading.find_all().count() == before
    assert ps.events.of("bp:new") == []


async def test_correct_and_soft_delete(api: Api) -> None:
    patient = await api.register("patient")
    stranger = await api.register("caregiver")
    ps, ss = await api.socket(patient), await api.socket(stranger)
    reading = await ps.ok("bp:add", {"systolic": 150, "diastolic": 95, "measured_at": at(10)})
    fixed = await ps.ok("bp:update", {"reading_id": reading["id"], "systolic": 128, "diastolic": 78})
    assert fixed["category"] == "elevated" and fixed["updated_at"]
    (pushed,) = await ps.events.wait("bp:updated")
    assert pushed["systolic"] == 128
    corrected = await AuditEntry.find(AuditEntry.action == "bp.corrected",
                                      AuditEntry.patient_id == PydanticObjectId(reading["patient_id"])).to_list()
    assert corrected[0].details["before"] == {"systolic": 150, "diastolic": 95}
    reply = await ps.call("bp:update", {"reading_id": reading["id"], "diastolic": 140})
    assert reply["error"]["code"] == "implausible_reading"
    reply = await ss.call("bp:update", {"reading_id": reading["id"], "systolic": 110})
    assert reply["error"]["code"] == "forbidden"
    reply = await ss.call("bp:delete", {"reading_id": reading["id"]})
    assert reply["error"]["code"] == "forbidden"
    other = await ps.ok("bp:add", {"systolic": 120, "diastolic": 70, "measured_at": at(5)})
    gone = await ps.ok("bp:delete", {"reading_id": reading["id"], "reason": "cuff was loose"})
    assert gone["deleted_at"]
    await ps.events.wait("bp:deleted")
    # Kept (soft delete, in the audit), but out of history and statistics; cannot be deleted twice.
    assert (await BPReading.get(reading["id"])) is not None
    entry = await AuditEntry.find_one(AuditEntry.action == "bp.deleted")
    assert entry is not None and entry.details["reading"]["systolic"] == 128
    page = await ps.ok("bp:list", {"patient_id": patient.id})
    assert [r["id"] for r in page["items"]] == [other["id"]]
    stats = await ps.ok("bp:stats", {"patient_id": patient.id, "window": "day"})
    assert stats["count"] == 1 and stats["systolic"]["mean"] == 120
    assert (await ps.call("bp:delete", {"reading_id": reading["id"]}))["error"]["code"] == "not_found"
    assert (await ps.call("bp:update", {"reading_id": "nonsense", "systolic": 1}))["error"]["code"] == "invalid_id"


async def test_history_stats_and_fhir_export(api: Api) -> None:
    patient = await api.register("patient")
    clinician = await api.register("clinician")
    await api.link(patient, clinician)
    ps = await api.socket(patient)
    for i in range(5):
        await ps.ok("bp:add", {"systolic": 120 + i, "diastolic": 70 + i, "pulse": 60 + i,
                               "measured_at": at(60 * 24 * (5 - i))})
    await ps.ok("bp:add", {"systolic": 135, "diastolic": 82, "measured_at": at(1)})
    status, page = await api.request("GET", f"/api/patients/{patient.id}/bp?limit=4", clinician)
    assert status == 200 and len(page["items"]) == 4 and page["next_cursor"]
    status, rest = await api.request("GET", f"/api/patients/{patient.id}/bp?limit=4&before={page['next_cursor']}",
                                     clinician)
    assert len(rest["items"]) == 2 and rest["next_cursor"] is None
    assert [r["systolic"] for r in page["items"] + rest["items"]] == [135, 124, 123, 122, 121, 120]
    status, week = await api.request("GET", f"/api/patients/{patient.id}/bp/stats?window=week", clinician)
    assert status == 200 and week["count"] == 6 and week["systolic"]["max"] == 135
    assert week["trend_per_day"]["systolic"] > 0
    status, day = await api.request("GET", f"/api/patients/{patient.id}/bp/stats?window=day", clinician)
    assert day["count"] == 1
    status, err = await api.request("GET", f"/api/patients/{patient.id}/bp/stats?window=year", clinician)
    assert status == 422 and err["error"]["code"] == "invalid_query"
    status, raw = await api.request("GET", f"/api/patients/{patient.id}/bp/fhir", clinician)
    assert status == 200
    bundle: dict[str, Any] = json.loads(raw)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    resources = [e["resource"] for e in bundle["entry"]]
    panels = [r for r in resources if r["code"]["coding"][0]["code"] == "85354-9"]
    rates = [r for r in resources if r["code"]["coding"][0]["code"] == "8867-4"]
    assert len(panels) == 6 and len(rates) == 5
    first = panels[0]
    assert first["subject"] == {"reference": f"Patient/{patient.id}"} and first["status"] == "final"
    assert first["category"][0]["coding"][0]["code"] == "vital-signs"
    (sys_c, dia_c) = first["component"]
    assert sys_c["code"]["coding"][0] == {"system": "http://loinc.org", "code": "8480-6",
                                          "display": "Systolic blood pressure"}
    assert sys_c["valueQuantity"] == {"value": 120, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org",
                                      "code": "mm[Hg]"}
    assert dia_c["code"]["coding"][0]["code"] == "8462-4" and dia_c["valueQuantity"]["value"] == 70
    assert rates[0]["valueQuantity"] == {"value": 60, "unit": "/min", "system": "http://unitsofmeasure.org",
                                         "code": "/min"}


async def test_a_page_of_a_long_history_is_looked_for_in_its_last_week_first(api: Api) -> None:
    """The store sorts every match of a filter before the limit: a page is looked for in the week before its
    start, then further back (``PAGE_SPANS``), so a page of a long history reads the week it shows, not the
    years behind it; across the spans' edges the pages still hold every reading once, newest first."""
    patient, clinician = await api.register("patient"), await api.register("clinician")
    await api.link(patient, clinician)
    now = datetime.now(UTC)

    def reading(days_ago: float, systolic: int) -> BPReading:
        at = now - timedelta(days=days_ago)
        return BPReading(id=PydanticObjectId.from_datetime(at), patient_id=PydanticObjectId(patient.id),
                         systolic=systolic, diastolic=80, measured_at=at, category="elevated",
                         source="app", entered_by=PydanticObjectId(patient.id), entered_by_role="patient")

    ages = [0.1, 0.2, 0.3, 0.4, 20, 30, 500, 501, 900]  # a dense week, then sparser further back
    await BPReading.insert_many([reading(d, 100 + k) for k, d in enumerate(ages)])
    url = f"/api/patients/{patient.id}/bp?limit=3"
    with QUERIES.tap() as seen:
        status, first = await api.request("GET", url, clinician)
    assert status == 200 and [r["systolic"] for r in first["items"]] == [100, 101, 102]
    pages = [q for c, q in seen if c == "bp_readings"]
    assert len(pages) == 1 and pages[0]["_id"]["$gte"].generation_time > now - timedelta(days=8)  # that week alone
    systolics, cursor = [r["systolic"] for r in first["items"]], first["next_cursor"]
    while cursor:
        status, page = await api.request("GET", f"{url}&before={cursor}", clinician)
        assert status == 200 and len(page["items"]) <= 3
        systolics += [r["systolic"] for r in page["items"]]
        cursor = page["next_cursor"]
    assert systolics == [100 + k for k in range(len(ages))]
