"""Emergency alerts over real sockets: raised by a crisis reading to every device of every linked
caregiver and clinician with the emergency contacts; first acknowledgement shown to all; offline
devices get what they missed, in order, until they confirm it; escalation to a signed webhook,
resumed when the process that claimed a step died before finishing it;
the lifecycle is queryable."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from beanie import PydanticObjectId

from server.alerts.alerts import Alerts
from server.alerts.documents import Alert
from server.app import SERVER, create_app
from server.infra.embedded_store import EmbeddedStore
from server.infra.webhook import sign
from server.transport.http import KEEP_BATCH
from tests.alert_clients import crisis, device_sock
from tests.conftest import make_settings
from tests.helpers import Api, Sock, User, connect_refused
from tests.query_plans import QUERIES


async def team(api: Api) -> tuple[User, User, User, User]:
    patient = await api.register("patient")
    maria = await api.register("caregiver", name="Maria")
    doctor = await api.register("clinician", name="Dr. Lee")
    stranger = await api.register("caregiver")
    await api.link(patient, maria)
    await api.link(patient, doctor)
    status, _ = await api.request("POST", f"/api/patients/{patient.id}/contacts", patient,
                                  json={"kind": "emergency", "name": "Son", "phone": "+15551234567"})
    assert status == 201
    return patient, maria, doctor, stranger


async def test_crisis_reaches_every_device_and_first_ack_is_shown_to_all_and_the_patient(api: Api) -> None:
    patient, maria, doctor, stranger = await team(api)
    phone, tablet = await device_sock(api.base_url, maria, "maria-phone"), await device_sock(api.base_url, maria)
    desk, other = await device_sock(api.base_url, doctor, "desk"), await device_sock(api.base_url, stranger)
    ps = await api.socket(patient)
    reading = await ps.ok("bp:add", crisis())
    assert reading["category"] == "hypertensive_crisis"
    stored = await Alert.find_one(Alert.patient_id == PydanticObjectId(patient.id), Alert.kind == "bp_crisis")
    assert stored is not None and stored.emitted_at is not None
    for sock in (phone, tablet, desk):
        (alert,) = await sock.events.wait("alert:new")
        assert alert["kind"] == "bp_crisis" and alert["urgency"] == "high" and alert["recipients"] == 2
        assert alert["emergency_contacts"] == [{"id": alert["emergency_contacts"][0]["id"], "name": "Son",
                                                "phone": "+15551234567", "email": None, "relationship": None}]
        assert alert["patient"] == {"id": patient.id, "name": patient.data["name"]}
    # A second crisis reading while the alert is open joins it instead of raising another.
    await ps.ok("bp:add", crisis())
    acked = await phone.ok("alert:ack", {"alert_id": alert["id"], "note": "on my way"})
    assert acked["acknowledged_by_you"] is True and acked["status"] == "acknowledged"
    for sock in (phone, tablet, desk):
        (shown,) = await sock.events.wait("alert:acknowledged")
        assert shown["message"] == "Maria is handling it" and shown["by"]["user_id"] == maria.id
    late = await desk.ok("alert:ack", {"alert_id": alert["id"]})
    assert late["acknowledged_by_you"] is False and late["acknowledged_by"]["name"] == "Maria"
    await asyncio.sleep(0.3)
    for sock in (phone, tablet, desk):
        assert len(sock.events.of("alert:new")) == 1 and len(sock.events.of("alert:acknowledged")) == 1
    assert other.events.of("alert:new") == [] and ps.events.of("alert:new") == []
    # The patient's own device is told who is handling it (once), a stranger is not.
    (told,) = await ps.events.wait("alert:acknowledged")
    assert told["alert_id"] == alert["id"] and told["message"] == "Maria is handling it"
    assert other.events.of("alert:acknowledged") == []
    # The alert is also in each recipient's notifications (not pushed live a second time).
    for _ in range(40):  # written in the background, after the live fan-out
        _, notes = await api.request("GET", "/api/notifications", maria)
        if notes["items"]:
            break
        await asyncio.sleep(0.05)
    assert [n["kind"] for n in notes["items"]] == ["alert"] and notes["items"][0]["data"]["alert_id"] == alert["id"]
    assert phone.events.of("notification:new") == []
    assert (await other.call("alert:ack", {"alert_id": alert["id"]}))["error"]["code"] == "not_found"
    resolved = await desk.ok("alert:resolve", {"alert_id": alert["id"], "note": "BP back to 150/95"})
    assert resolved["status"] == "resolved" and resolved["resolved_by"]["name"] == "Dr. Lee"
    await phone.events.wait("alert:resolved")
    (closed,) = await ps.events.wait("alert:resolved")
    assert closed["alert_id"] == alert["id"] and closed["by"]["name"] == "Dr. Lee"
    assert (await desk.call("alert:resolve", {"alert_id": alert["id"]}))["error"]["code"] == "already_resolved"
    for sock in (phone, tablet, desk, other):
        await sock.close()


async def test_offline_devices_get_open_alerts_in_order_until_they_confirm(api: Api) -> None:
    first, second = await api.register("patient"), await api.register("patient")
    carer = await api.register("caregiver")
    await api.link(first, carer)
    await api.link(second, carer)
    ids = []
    for p in (first, second):
        ps = await api.socket(p)
        await ps.ok("bp:add", crisis())
        alert = await Alert.find_one(Alert.patient_id == PydanticObjectId(p.id))
        assert alert is not None
        ids.append(str(alert.id))
    phone = await device_sock(api.base_url, carer, "phone-1")
    got = await phone.events.wait("alert:new", 2)
    assert [a["id"] for a in got] == ids  # oldest first
    assert (await phone.ok("alert:received", {"alert_id": ids[0]}))["device_id"] == "phone-1"
    await phone.close()
    # Reconnecting, the same device gets only what it has not confirmed; another device gets both.
    phone = await device_sock(api.base_url, carer, "phone-1")
    tablet = await device_sock(api.base_url, carer, "tablet-1")
    assert [a["id"] for a in await phone.events.wait("alert:new")] == [ids[1]]
    assert [a["id"] for a in await tablet.events.wait("alert:new", 2)] == ids
    await phone.ok("alert:received", {"alert_id": ids[1]})
    await phone.ok("alert:received", {"alert_id": ids[1]})  # a repeated confirmation changes nothing
    await asyncio.sleep(0.3)
    assert len(phone.events.of("alert:new")) == 1
    await phone.close()
    phone = await device_sock(api.base_url, carer, "phone-1")
    await asyncio.sleep(0.5)
    assert phone.events.of("alert:new") == []
    # Once acknowledged, nothing is redelivered anywhere.
    await tablet.ok("alert:ack", {"alert_id": ids[0]})
    await tablet.ok("alert:ack", {"alert_id": ids[1]})
    laptop = await device_sock(api.base_url, carer, "laptop")
    await asyncio.sleep(0.5)
    assert laptop.events.of("alert:new") == []
    # The lifecycle shows who received it on which device, and who acknowledged.
    status, life = await api.request("GET", f"/api/alerts/{ids[1]}", carer)
    assert status == 200 and sorted(d["device_id"] for d in life["deliveries"]) == ["phone-1", "tablet-1"]
    assert life["acknowledged_by"]["user_id"] == carer.id and life["emitted_at"] and life["raised_at"]
    assert life["recipients"] == [{"user_id": carer.id, "role": "caregiver", "name": carer.data["name"]}]
    status, mine = await api.request("GET", "/api/alerts?status=acknowledged", carer)
    assert [a["id"] for a in mine["items"]] == ids[::-1]
    status, theirs = await api.request("GET", f"/api/patients/{first.id}/alerts", first)
    assert [a["id"] for a in theirs["items"]] == [ids[0]]
    listed = await laptop.ok("alerts:list", {"patient_id": second.id})
    assert [a["id"] for a in listed["items"]] == [ids[1]]
    assert (await laptop.ok("alert:get", {"alert_id": ids[0]}))["status"] == "acknowledged"
    for bad in ({"alert_id": "x"}, {"alert_id": ids[0], "extra": 1}, {}):
        assert (await laptop.call("alert:received", bad))["ok"] is False
    for sock in (phone, tablet, laptop):
        await sock.close()


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/hook", received
    await runner.cleanup()


@contextlib.asynccontextmanager
async def escalation_ward(store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any, **settings: Any
                          ) -> AsyncIterator[tuple[Api, tuple[User, User, User], Sock, Sock]]:
    """A server with ``settings``, the team (patient, Maria, the doctor), Maria's phone and the doctor's desk."""
    server = await aiohttp_server(create_app(make_settings(store.url, tmp_path, **settings)))
    async with Api.of(server) as api:
        patient, maria, doctor, _ = await team(api)
        phone, desk = await device_sock(api.base_url, maria, "p"), await device_sock(api.base_url, doctor, "d")
        try:
            yield api, (patient, maria, doctor), phone, desk
        finally:
            for sock in (phone, desk):
                await sock.close()


async def test_unacknowledged_alert_escalates_then_calls_the_emergency_webhook(
        store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any, webhook: tuple[str, list[Any]]) -> None:
    url, received = webhook
    async with escalation_ward(store, tmp_path, aiohttp_server, alert_escalation_s=1, alert_sweep_s=0.2,
                               emergency_webhook_url=url, webhook_secret="hook-secret-" + "y" * 20) as ward:
        api, (patient, _, _), phone, desk = ward
        await (await api.socket(patient)).ok("bp:add", crisis())
        (alert,) = await phone.events.wait("alert:new")
        (louder,) = await phone.events.wait("alert:escalated", timeout=5)
        assert louder["escalation"] == 1 and louder["urgency"] == "critical" and louder["id"] == alert["id"]
        escalated = await desk.events.wait("alert:escalated", 2, timeout=5)
        assert [e["escalation"] for e in escalated] == [1, 2]
        for _ in range(50):
            if received:
                break
            await asyncio.sleep(0.1)
        ((headers, body),) = received
        payload = json.loads(body)
        assert headers["X-HealthMate-Event"] == "alert.escalated"
        assert headers["X-HealthMate-Signature"] == sign("hook-secret-" + "y" * 20,
                                                         headers["X-HealthMate-Timestamp"], body)
        assert payload["emergency_contacts"][0]["phone"] == "+15551234567"
        assert payload["alert"]["id"] == alert["id"]
        await asyncio.sleep(1.5)
        assert len(phone.events.of("alert:escalated")) == 1  # level 2 goes to clinicians only
        life = await desk.ok("alert:get", {"alert_id": alert["id"]})
        assert [e["level"] for e in life["escalations"]] == [1, 2, 2] and life["escalations"][2]["ok"] is True


async def claimed_by_a_dead_process(alert_id: str, level: int, escalate_at: datetime | None) -> None:
    """The store as a process leaves it that dies right after claiming escalation ``level`` (lease expired)."""
    now = datetime.now(UTC)
    await Alert.get_pymongo_collection().update_one({"_id": PydanticObjectId(alert_id)}, {
        "$set": {"level": level, "urgency": "critical", "escalate_at": escalate_at,
                 "escalation_pending": level, "escalation_lease_until": now - timedelta(seconds=1)},
        "$push": {"escalations": {"level": level, "at": now, "by": "dead"}}})


async def settled(alert_id: str) -> Alert:
    """The alert once its pending escalation step is marked done (or after 5 s)."""
    for _ in range(50):
        alert = await Alert.get(PydanticObjectId(alert_id))
        assert alert is not None
        if alert.escalation_pending is None:
            break
        await asyncio.sleep(0.1)
    return alert


async def test_an_escalation_step_left_unfinished_by_a_dead_process_is_run_again(
        store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any) -> None:
    async with escalation_ward(store, tmp_path, aiohttp_server, alert_escalation_s=60, alert_sweep_s=0.2,
                               alert_emit_lease_s=1) as ward:
        api, (patient, maria, doctor), phone, desk = ward
        other = await api.register("patient")
        await api.link(other, maria)
        await api.link(other, doctor)
        for p in (patient, other):
            await (await api.socket(p)).ok("bp:add", crisis())
        ids = {a["patient"]["id"]: a["id"] for a in await phone.events.wait("alert:new", 2)}
        open_id, acked_id = ids[patient.id], ids[other.id]
        # Acknowledged after a dead process's claim (the ack clears escalate_at): that step is not run again.
        await desk.ok("alert:ack", {"alert_id": acked_id})
        await claimed_by_a_dead_process(acked_id, 1, None)
        await claimed_by_a_dead_process(open_id, 1, datetime.now(UTC) + timedelta(seconds=60))
        for sock in (phone, desk):
            (louder,) = await sock.events.wait("alert:escalated")
            assert louder["id"] == open_id and louder["escalation"] == 1 and louder["urgency"] == "critical"
        stored = await settled(open_id)
        assert stored.escalation_pending is None and stored.escalation_lease_until is None
        _, notes = await api.request("GET", "/api/notifications", maria)
        assert [n["data"] for n in notes["items"] if n["data"]["level"] == 1] == [{"alert_id": open_id, "level": 1}]
        await asyncio.sleep(1.5)  # several sweeps and more than a lease later: nothing more
        for sock in (phone, desk):
            assert len(sock.events.of("alert:escalated")) == 1
        stored = await Alert.get(PydanticObjectId(open_id))
        assert stored is not None and stored.level == 1 and [e["level"] for e in stored.escalations] == [1]
        acked = await Alert.get(PydanticObjectId(acked_id))
        assert acked is not None and acked.status == "acknowledged" and acked.escalation_pending == 1


async def test_an_unfinished_outward_escalation_reaches_the_clinicians_and_the_webhook(
        store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any, webhook: tuple[str, list[Any]]) -> None:
    url, received = webhook
    async with escalation_ward(store, tmp_path, aiohttp_server, alert_escalation_s=60, alert_sweep_s=0.2,
                               alert_emit_lease_s=1, emergency_webhook_url=url) as ward:
        api, (patient, _, _), phone, desk = ward
        await (await api.socket(patient)).ok("bp:add", crisis())
        (alert,) = await phone.events.wait("alert:new")
        await claimed_by_a_dead_process(alert["id"], 2, None)
        (outward,) = await desk.events.wait("alert:escalated")
        assert outward["id"] == alert["id"] and outward["escalation"] == 2
        stored = await settled(alert["id"])
        assert stored.escalation_pending is None and stored.escalations[-1]["ok"] is True
        assert [json.loads(body)["alert"]["id"] for _, body in received] == [alert["id"]]
        await asyncio.sleep(1.5)
        assert len(received) == 1 and len(desk.events.of("alert:escalated")) == 1
        assert phone.events.of("alert:escalated") == []  # level 2 goes to clinicians only


async def test_critical_vital_event_raises_an_alert(api: Api) -> None:
    patient, maria, _, _ = await team(api)
    phone = await device_sock(api.base_url, maria, "p")
    assert api.app is not None
    vitals = api.app[SERVER].vitals
    await vitals.record(PydanticObjectId(patient.id), None, "ecg",
                        {"type": "tachycardia", "severity": "critical", "detail": {"hr": 171}})
    (alert,) = await phone.events.wait("alert:new")
    assert alert["kind"] == "vital_tachycardia" and alert["data"] == {"hr": 171}
    await vitals.record(PydanticObjectId(patient.id), None, "ecg",
                        {"type": "irregular_rhythm", "severity": "warning"})
    await asyncio.sleep(0.3)
    assert len(phone.events.of("alert:new")) == 1
    await phone.close()


async def test_a_member_whose_link_ended_gets_no_more_of_the_patients_alerts(api: Api) -> None:
    patient, carer = await api.register("patient"), await api.register("caregiver")
    await api.link(patient, carer)
    await (await api.socket(patient)).ok("bp:add", crisis())
    alert = await Alert.find_one(Alert.patient_id == PydanticObjectId(patient.id))
    assert alert is not None
    _, links = await api.request("GET", "/api/links", patient)
    status, _ = await api.request("DELETE", f"/api/links/{links['items'][0]['id']}", patient)
    assert status == 200
    phone = await device_sock(api.base_url, carer, "phone")
    await asyncio.sleep(0.5)
    assert phone.events.of("alert:new") == []
    assert (await phone.call("alert:ack", {"alert_id": str(alert.id)}))["error"]["code"] == "not_found"
    await phone.close()


async def test_a_malformed_device_id_is_refused_at_connect(api: Api) -> None:
    carer = await api.register("caregiver")
    for bad in ("has space", "x" * 65, "dot.ted", 42):
        data = await connect_refused(api.base_url, {"token": carer.access_token, "device_id": bad})
        assert data["error"]["code"] == "invalid_device_id", bad


async def test_receipts_arriving_together_share_one_lookup_of_the_recipients(api: Api, monkeypatch: Any) -> None:
    """A thousand devices confirm an alert within milliseconds of its push: one store query for its recipients,
    not one per receipt (each missing the cache while the first query is in flight, as they used to)."""
    patient, carer = await api.register("patient"), await api.register("caregiver")
    await api.link(patient, carer)
    (alerting,) = [c for c in api.app[SERVER].components if isinstance(c, Alerts)]
    acks = alerting.acks
    loads: list[Any] = []
    real = acks._load_recipients

    async def counted(alert_id: Any) -> Any:
        loads.append(alert_id)
        await asyncio.sleep(0.2)  # a slow store: every receipt below arrives while the query is in flight
        return await real(alert_id)

    monkeypatch.setattr(acks, "_load_recipients", counted)
    devices = [await device_sock(api.base_url, carer, f"phone-{n}") for n in range(12)]
    await (await api.socket(patient)).ok("bp:add", crisis())
    (alert,) = await devices[0].events.wait("alert:new")
    replies = await asyncio.gather(*(d.ok("alert:received", {"alert_id": alert["id"]}) for d in devices))
    assert sorted(r["device_id"] for r in replies) == sorted(f"phone-{n}" for n in range(12))
    assert len(loads) == 1
    for d in devices:
        await d.close()


async def test_a_recipients_alert_list_reads_a_span_and_leaves_out_patients_no_longer_cared_for(api: Api) -> None:
    """The list of alerts a caregiver received: the store's filter a span of ``_id`` on an index (no ``$in`` of
    their patients, which made it read every alert they ever received for each page), those about a patient whose
    link ended left out in the server, by status as well."""
    patient, former, carer = (await api.register("patient"), await api.register("patient"),
                              await api.register("caregiver"))
    await api.link(patient, carer)
    now = datetime.now(UTC)

    def alert(days_ago: float, title: str, about: User, status: str = "open") -> Alert:
        at = now - timedelta(days=days_ago)
        return Alert(id=PydanticObjectId.from_datetime(at), patient_id=PydanticObjectId(about.id), kind="bp_crisis",
                     title=title, recipient_ids=[PydanticObjectId(carer.id)], raised_at=at, status=status,
                     emit_lease_until=at, emitted_at=at)

    await Alert.insert_many([alert(0.1, "a", patient), alert(0.2, "x", former), alert(2, "b", patient, "resolved"),
                             alert(50, "y", former), alert(300, "c", patient)])
    with QUERIES.tap() as seen:
        status, first = await api.request("GET", "/api/alerts?limit=1", carer)
    assert status == 200 and [a["title"] for a in first["items"]] == ["a"]
    [query] = [q for c, q in seen if c == "alerts" and "_id" in q]
    assert "patient_id" not in query and query["_id"]["$gte"].generation_time > now - timedelta(days=8)
    titles, cursor = ["a"], first["next_cursor"]
    while cursor:
        _, page = await api.request("GET", f"/api/alerts?limit=1&before={cursor}", carer)
        titles += [a["title"] for a in page["items"]]
        cursor = page["next_cursor"]
    assert titles == ["a", "b", "c"]
    _, still_open = await api.request("GET", "/api/alerts?status=open", carer)
    assert [a["title"] for a in still_open["items"]] == ["a", "c"]
    _, own = await api.request("GET", "/api/alerts?status=resolved", patient)  # a patient's own, by status
    assert [a["title"] for a in own["items"]] == ["b"]


async def test_a_page_checked_in_the_server_reads_the_store_a_batch_at_a_time_and_no_further(api: Api) -> None:
    """Alerts about a former patient between a caregiver's newest ones and the rest: a page streams through them
    ``KEEP_BATCH`` at a time (the server never holds them all), and stops reading once it has its page."""
    patient, former, carer = (await api.register("patient"), await api.register("patient"),
                              await api.register("caregiver"))
    await api.link(patient, carer)
    now = datetime.now(UTC)

    def alert(minutes_ago: float, title: str, about: User) -> Alert:
        at = now - timedelta(minutes=minutes_ago)
        return Alert(id=PydanticObjectId.from_datetime(at), patient_id=PydanticObjectId(about.id), kind="bp_crisis",
                     title=title, recipient_ids=[PydanticObjectId(carer.id)], raised_at=at, emit_lease_until=at,
                     emitted_at=at)

    others = [alert(10 + n, f"x{n}", former) for n in range(2 * KEEP_BATCH + 50)]
    await Alert.insert_many([alert(1, "a", patient), alert(2, "a2", patient), *others, alert(900, "b", patient)])
    with QUERIES.replies() as batches:
        _, first = await api.request("GET", "/api/alerts?limit=1", carer)
    assert [a["title"] for a in first["items"]] == ["a"]
    assert sum(n for c, n in batches if c == "alerts") <= KEEP_BATCH  # "a" and "a2", then no further
    with QUERIES.replies() as batches:
        _, second = await api.request("GET", f"/api/alerts?limit=1&before={first['next_cursor']}", carer)
    assert [a["title"] for a in second["items"]] == ["a2"]  # with a next page: "b", found past the former's
    read = [n for c, n in batches if c == "alerts"]
    assert sum(read) > len(others) and max(read) <= KEEP_BATCH
    _, third = await api.request("GET", f"/api/alerts?limit=1&before={second['next_cursor']}", carer)
    assert [a["title"] for a in third["items"]] == ["b"] and third["next_cursor"] is None
