"""The dose scheduler in one server over real sockets: doses planned from the schedule in the
patient's time zone, reminded at due time (``dose:due``), confirmed in the app, marked missed after
the grace window with caregivers told, reminders a dead process had claimed and not delivered
delivered once their lease ran out, and adherence counted per medication and per week."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from beanie import PydanticObjectId

from server.alerts.documents import Notification
from server.app import SERVER
from server.core.config import Settings
from server.core.documents import utcnow
from server.infra.embedded_store import EmbeddedStore
from server.meds.delivery import LEASE
from server.meds.documents import DoseClaim, DoseEvent, Medication
from server.meds.dose_times import resolve_local
from tests.conftest import make_settings
from tests.helpers import Api, Sock, User
from tests.test_medications import create

GRACE_S = 3
DEAD = "4242-deadbeef:0123456789abcdef"  # the claim token of a process that no longer exists


@pytest.fixture
async def settings(store: EmbeddedStore, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Grace ``GRACE_S``, or the test's ``@pytest.mark.parametrize("settings", [grace_s], indirect=True)``."""
    return make_settings(store.url, tmp_path, dose_grace_s=getattr(request, "param", GRACE_S), dose_recover_s=0.5)


async def add_dose(patient: User, med: dict[str, Any], due: datetime, state: str = "scheduled",
                   slot: str | None = None, **fields: Any) -> DoseEvent:
    dose = DoseEvent(patient_id=PydanticObjectId(patient.id), medication_id=PydanticObjectId(med["id"]),
                     slot=slot or due.isoformat(), timezone="UTC", due_at=due, medication_name=med["name"],
                     dose=med["dose"], drawer=med["drawer"], state=state, **fields)  # type: ignore[arg-type]
    await dose.insert()
    return dose


async def notes_of(sock: Sock, kind: str, count: int = 1) -> list[dict[str, Any]]:
    """The notifications of one kind a socket received, once at least ``count`` have arrived."""
    for _ in range(100):
        found = [n for n in sock.events.of("notification:new") if n["kind"] == kind]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} notification")


async def test_doses_planned_in_the_patients_time_zone_and_replanned_on_change(api: Api) -> None:
    patient = await api.register("patient")
    status, _ = await api.request("PATCH", "/api/me", patient, json={"timezone": "America/New_York"})
    assert status == 200
    sock = await api.socket(patient)
    med = await create(sock, patient.id, schedule={"times": ["08:00", "20:00"]})
    await create(sock, patient.id, name="Ibuprofen", schedule={"as_needed": True})
    now = utcnow()
    status, body = await api.request("GET", f"/api/patients/{patient.id}/doses", patient,
                                     params={"from": now.isoformat(), "to": (now + timedelta(hours=36)).isoformat()})
    assert status == 200
    ny = ZoneInfo("America/New_York")
    expected = []
    for offset in range(-1, 3):
        day = now.astimezone(ny).date() + timedelta(days=offset)
        for at in (time(8), time(20)):
            due = resolve_local(day, at, ny)
            if now <= due < now + timedelta(hours=36):
                expected.append((f"{day.isoformat()}T{at.strftime('%H:%M')}", due))
    got = [(d["planned_at"], datetime.fromisoformat(d["due_at"].replace("Z", "+00:00"))) for d in body["items"]]
    assert got == expected and len(got) >= 2
    assert {d["medication_id"] for d in body["items"]} == {med["id"]}  # as needed: nothing planned
    assert all(d["state"] == "scheduled" and d["timezone"] == "America/New_York" for d in body["items"])

    # The patient moves: the doses not yet due follow their local clock in the new zone.
    status, _ = await api.request("PATCH", "/api/me", patient, json={"timezone": "Europe/Paris"})
    assert status == 200
    _, moved = await api.request("GET", f"/api/patients/{patient.id}/doses", patient,
                                 params={"from": now.isoformat(), "to": (now + timedelta(hours=36)).isoformat()})
    paris = ZoneInfo("Europe/Paris")
    assert moved["items"] and all(d["timezone"] == "Europe/Paris" for d in moved["items"])
    for d in moved["items"]:
        local = datetime.fromisoformat(d["due_at"].replace("Z", "+00:00")).astimezone(paris)
        assert local.strftime("%H:%M") in ("08:00", "20:00") and d["planned_at"].endswith(local.strftime("%H:%M"))

    # A new schedule replaces the doses not yet due; the drawer travels with them.
    await sock.ok("med:update", {"patient_id": patient.id, "medication_id": med["id"],
                                 "schedule": {"times": ["12:00"]}, "drawer": 4})
    status, body = await api.request("GET", f"/api/patients/{patient.id}/doses", patient,
                                     params={"from": now.isoformat(), "to": (now + timedelta(hours=36)).isoformat()})
    assert body["items"] and all(d["planned_at"].endswith("T12:00") and d["drawer"] == 4 for d in body["items"])
    # A stock change alone does not touch them.
    ids = [d["id"] for d in body["items"]]
    await sock.ok("med:update", {"patient_id": patient.id, "medication_id": med["id"], "stock": 12})
    _, again = await api.request("GET", f"/api/patients/{patient.id}/doses", patient,
                                 params={"from": now.isoformat(), "to": (now + timedelta(hours=36)).isoformat()})
    assert [d["id"] for d in again["items"]] == ids
    await sock.ok("med:archive", {"patient_id": patient.id, "medication_id": med["id"]})
    _, gone = await api.request("GET", f"/api/patients/{patient.id}/doses", patient)
    assert [d for d in gone["items"] if d["state"] == "scheduled"] == []
    for bad in ({"from": "yesterday"}, {"from": now.isoformat(), "to": (now - timedelta(hours=1)).isoformat()},
                {"from": now.isoformat(), "to": (now + timedelta(days=40)).isoformat()}):
        status, err = await api.request("GET", f"/api/patients/{patient.id}/doses", patient, params=bad)
        assert status == 422 and err["error"]["code"] == "invalid_query", bad


async def test_an_empty_window_bound_means_the_default_and_a_malformed_one_is_refused(api: Api) -> None:
    """``from``/``to`` left empty, as a form sends a field nobody filled in, mean the default window (the last
    day and the next); a time that is not ISO 8601 is refused, naming the field (``server.core.params``)."""
    patient = await api.register("patient")
    await create(await api.socket(patient), patient.id, schedule={"times": ["08:00", "20:00"]})
    path = f"/api/patients/{patient.id}/doses"
    _, default = await api.request("GET", path, patient)
    status, empty = await api.request("GET", path, patient, params={"from": "", "to": ""})
    assert status == 200 and [d["id"] for d in empty["items"]] == [d["id"] for d in default["items"]]
    assert len(default["items"]) >= 2
    for field in ("from", "to"):
        status, body = await api.request("GET", path, patient, params={field: "yesterday"})
        assert status == 422 and body["error"]["code"] == "invalid_query", body
        assert body["error"]["details"] == {"field": field}


async def test_reminded_at_due_time_confirmed_in_the_app_or_missed_after_grace(api: Api) -> None:
    patient = await api.register("patient")
    carer = await api.register("caregiver")
    await api.link(patient, carer)
    p_sock, c_sock = await api.socket(patient), await api.socket(carer)
    med = await create(p_sock, patient.id, schedule={"times": ["03:00"]}, stock=6, low_stock_at=5)
    soon = utcnow() + timedelta(seconds=1)
    taken = await add_dose(patient, med, soon, slot="taken")
    skipped = await add_dose(patient, med, soon + timedelta(milliseconds=200), slot="skipped")
    later = await add_dose(patient, med, utcnow() + timedelta(hours=5), slot="later")

    due = await p_sock.events.wait("dose:due", count=2)
    assert {d["id"] for d in due} == {str(taken.id), str(skipped.id)}
    first = next(d for d in due if d["id"] == str(taken.id))
    assert first["state"] == "reminded" and first["drawer"] == 2 and first["late_ms"] >= 0
    assert first["medication_name"] == "Metformin" and first["due_at"].endswith("Z")
    await c_sock.events.wait("dose:due", count=2)  # everyone linked sees the reminder
    stored = await DoseEvent.get(taken.id)
    assert stored is not None and stored.state == "reminded" and stored.reminded_at is not None

    confirmed = await p_sock.ok("dose:confirm", {"patient_id": patient.id, "dose_id": str(taken.id)})
    assert confirmed["state"] == "confirmed" and confirmed["confirmed_via"] == "app"
    (pushed,) = await c_sock.events.wait("dose:confirmed")
    assert pushed["id"] == str(taken.id)
    # The dose came out of stock, and that is a medication change like any other.
    changes = await c_sock.events.wait("med:changed", count=2)
    assert changes[-1]["change"] == "stock" and changes[-1]["medication"]["stock"] == 5
    assert changes[-1]["medication"]["low_stock"] is True
    assert (await Medication.get(med["id"])).stock == 5  # type: ignore[union-attr]
    again = await p_sock.ok("dose:confirm", {"patient_id": patient.id, "dose_id": str(taken.id)})
    assert again["state"] == "confirmed"
    assert (await Medication.get(med["id"])).stock == 5  # type: ignore[union-attr]  # once

    (missed,) = await c_sock.events.wait("dose:missed", timeout=GRACE_S + 5)
    assert missed["id"] == str(skipped.id) and missed["state"] == "missed"
    # The patient was reminded of each dose; the caregiver told of the missed one, once.
    reminders = [n for n in p_sock.events.of("notification:new") if n["kind"] == "reminder"]
    assert sorted(n["data"]["dose_id"] for n in reminders) == sorted([str(taken.id), str(skipped.id)])
    assert reminders[0]["title"] == "Time for Metformin" and "drawer 2" in reminders[0]["body"]
    # The claim at due time took the reminder notifications too; delivered and stored, the claim is deleted.
    for dose in (taken, skipped):
        row = await DoseEvent.get(dose.id)
        assert row is not None and row.due_owner is not None and row.reminder_notified_at is not None
        assert row.reminder_lease_until is None
    assert await DoseClaim.find_all().count() == 0
    lows = [n for n in c_sock.events.of("notification:new") if n["kind"] == "low_stock"]
    assert len(lows) == 1 and lows[0]["data"]["stock"] == 5  # the confirmed dose took stock to its low mark
    missed_notes = await notes_of(c_sock, "dose_missed")
    assert len(missed_notes) == 1 and missed_notes[0]["urgency"] == "high"
    assert missed_notes[0]["data"]["dose_id"] == str(skipped.id)
    assert not [n for n in c_sock.events.of("notification:new") if n["kind"] == "reminder"]
    reply = await p_sock.call("dose:confirm", {"patient_id": patient.id, "dose_id": str(skipped.id)})
    assert reply["ok"] is False and reply["error"]["code"] == "dose_missed"
    reply = await p_sock.call("dose:confirm", {"patient_id": patient.id, "dose_id": str(later.id)})
    assert reply["ok"] is False and reply["error"]["code"] == "not_due_yet"
    for bad in ({"patient_id": patient.id, "dose_id": "nope"}, {"patient_id": patient.id},
                {"patient_id": patient.id, "dose_id": str(PydanticObjectId())}):
        reply = await p_sock.call("dose:confirm", bad)
        assert reply["ok"] is False and reply["error"]["code"] in ("invalid_payload", "invalid_id", "not_found")
    assert [(await DoseEvent.get(d.id)).state for d in (taken, skipped, later)] == [  # type: ignore[union-attr]
        "confirmed", "missed", "scheduled"]
    assert len(p_sock.events.of("dose:due")) == 2  # each reminder once


async def test_adherence_per_medication_and_per_week(api: Api) -> None:
    patient = await api.register("patient")
    status, _ = await api.request("PATCH", "/api/me", patient, json={"timezone": "Europe/Lisbon"})
    sock = await api.socket(patient)
    med = await create(sock, patient.id, schedule={"as_needed": True})
    other = await create(sock, patient.id, name="Lisinopril", schedule={"as_needed": True})
    lisbon = ZoneInfo("Europe/Lisbon")
    today = utcnow().astimezone(lisbon).date()
    monday = today - timedelta(days=today.weekday())
    last_week = monday - timedelta(days=7)
    # Local midnight: this Monday's dose is then never in the future, whenever in the week the test runs.
    at = lambda day: resolve_local(day, time(0), lisbon)  # noqa: E731
    for i, state in enumerate(["confirmed", "confirmed", "missed"]):
        await add_dose(patient, med, at(last_week + timedelta(days=i)), state, slot=f"m{i}")
    await add_dose(patient, other, at(last_week), "missed", slot="o1")
    await add_dose(patient, med, at(monday), "confirmed", slot="m9")
    await add_dose(patient, med, at(monday - timedelta(days=60)), "missed", slot="old")  # outside the window
    status, body = await api.request("GET", f"/api/patients/{patient.id}/adherence?weeks=2", patient)
    assert status == 200 and body["timezone"] == "Europe/Lisbon"
    per_med = {m["medication_id"]: m for m in body["medications"]}
    assert per_med[med["id"]]["confirmed"] == 3 and per_med[med["id"]]["missed"] == 1
    assert per_med[med["id"]]["adherence"] == 0.75 and per_med[other["id"]]["adherence"] == 0.0
    weeks = {w["week_start"]: w for w in body["weeks"]}
    assert set(weeks) == {last_week.isoformat(), monday.isoformat()}
    assert weeks[last_week.isoformat()]["due"] == 4 and weeks[last_week.isoformat()]["adherence"] == 0.5
    assert weeks[last_week.isoformat()]["medications"][other["id"]]["missed"] == 1
    assert weeks[monday.isoformat()]["adherence"] == 1.0
    for bad in ("0", "53", "x"):
        status, err = await api.request("GET", f"/api/patients/{patient.id}/adherence?weeks={bad}", patient)
        assert status == 422 and err["error"]["code"] == "invalid_query"
    assert date.fromisoformat(body["weeks"][0]["week_start"]).weekday() == 0


@pytest.mark.parametrize("settings", [600], indirect=True)  # a grace window longer than the lease
async def test_a_dose_claimed_by_a_dead_process_and_never_pushed_is_pushed_once_its_lease_runs_out(
        api: Api) -> None:
    from tests.test_medicine_box import pair_box, running_box, until  # it imports this module

    patient = await api.register("patient")
    p_sock = await api.socket(patient)
    med = await create(p_sock, patient.id, schedule={"as_needed": True})
    async with running_box(api, await pair_box(api, patient), scenario="never") as box:
        # What a process leaves that claimed doses at due time (scheduled → reminded, its claim leased) and died
        # before pushing them, the lease since run out: one died before telling the box, one after (the box
        # acknowledged), one whose notification it had stored, and one dose was confirmed in the app meanwhile.
        at = utcnow() - LEASE - timedelta(seconds=30)
        await DoseClaim(id=DEAD, owner="4242-deadbeef", lease_until=at + LEASE, notes=True).insert()
        claimed = {"reminded_at": at, "due_owner": DEAD, "reminder_notified_at": at}
        crashed = await add_dose(patient, med, at, "reminded", slot="crashed", **claimed)
        commanded = await add_dose(patient, med, at, "reminded", slot="commanded", **claimed,
                                   box_attempts=1, box_acked_at=at)
        noted = await add_dose(patient, med, at, "reminded", slot="noted", **claimed, box_attempts=1, box_acked_at=at)
        await Notification(user_id=PydanticObjectId(patient.id), kind="reminder", title="Time for Metformin",
                           patient_id=PydanticObjectId(patient.id), data={"dose_id": str(noted.id)}).insert()
        taken = await add_dose(patient, med, at, "confirmed", slot="taken", **claimed,
                               confirmed_at=at + timedelta(minutes=1), confirmed_via="app")

        due = await p_sock.events.wait("dose:due", count=3, timeout=10)
        assert sorted(d["id"] for d in due) == sorted(str(d.id) for d in (crashed, commanded, noted))
        assert all(d["state"] == "reminded" and d["late_ms"] >= (LEASE.total_seconds() + 30) * 1000 for d in due)
        await until(lambda: len(box.behaviour.commands) >= 1)
        notes = await notes_of(p_sock, "reminder", count=2)
        assert sorted(n["data"]["dose_id"] for n in notes) == sorted([str(crashed.id), str(commanded.id)])
        await asyncio.sleep(2.5)  # a few scheduler passes: nothing is pushed, commanded or notified twice
    assert len(p_sock.events.of("dose:due")) == 3
    # The box is commanded once per dose: not again for the doses the dead process had commanded.
    assert [(c.action, c.dose_id, c.attempt) for c in box.behaviour.commands] == [("remind", str(crashed.id), 1)]
    assert len([n for n in p_sock.events.of("notification:new") if n["kind"] == "reminder"]) == 2
    assert await Notification.find({"data.dose_id": str(noted.id)}).count() == 1
    assert await DoseClaim.find_all().count() == 0  # finished, the claim is deleted
    for dose in (crashed, commanded):
        row = await DoseEvent.get(dose.id)
        assert row is not None and row.box_attempts == 1 and row.box_acked_at is not None and row.box_next_at is None
    left = await DoseEvent.get(taken.id)
    assert left is not None and left.state == "confirmed"  # confirmed: not pushed
    assert await Notification.find({"data.dose_id": str(taken.id)}).count() == 0


@pytest.mark.parametrize("settings", [600], indirect=True)
async def test_a_reminder_notification_claimed_by_a_dead_process_is_sent_once_its_lease_runs_out(api: Api) -> None:
    patient = await api.register("patient")
    p_sock = await api.socket(patient)
    med = await create(p_sock, patient.id, schedule={"as_needed": True})
    # Both pushed; their notifications claimed by a process that died (one of them after storing it),
    # the lease since run out.
    at = utcnow() - LEASE - timedelta(seconds=30)
    dead = {"reminded_at": at, "reminder_notified_at": at, "lease_owner": DEAD,
            "reminder_lease_until": at + LEASE}
    unsent = await add_dose(patient, med, at, "reminded", slot="unsent", **dead)
    stored = await add_dose(patient, med, at, "reminded", slot="stored", **dead)
    await Notification(user_id=PydanticObjectId(patient.id), kind="reminder", title="Time for Metformin",
                       patient_id=PydanticObjectId(patient.id), data={"dose_id": str(stored.id)}).insert()

    (note,) = await notes_of(p_sock, "reminder")
    assert note["data"]["dose_id"] == str(unsent.id) and note["title"] == "Time for Metformin"
    await asyncio.sleep(1.5)  # the loop's next passes send neither again
    assert len([n for n in p_sock.events.of("notification:new") if n["kind"] == "reminder"]) == 1
    for dose in (unsent, stored):
        assert await Notification.find({"data.dose_id": str(dose.id)}).count() == 1
        row = await DoseEvent.get(dose.id)
        assert row is not None and row.reminder_lease_until is None and row.lease_owner is None
    assert p_sock.events.of("dose:due") == []  # pushed already: not again


@pytest.mark.parametrize("settings", [600], indirect=True)
async def test_a_claim_left_with_only_its_notifications_unsent_sends_them_and_pushes_nothing_again(api: Api) -> None:
    """A claim whose doses were pushed but whose notifications were not all stored (the process stopped or the
    store failed) is kept, ``pushed``; once its lease runs out another process sends what was not stored."""
    patient = await api.register("patient")
    p_sock = await api.socket(patient)
    med = await create(p_sock, patient.id, schedule={"as_needed": True})
    at = utcnow() - LEASE - timedelta(seconds=30)
    await DoseClaim(id=DEAD, owner="4242-deadbeef", lease_until=at + LEASE, notes=True, pushed=True).insert()
    claimed = {"reminded_at": at, "due_owner": DEAD, "reminder_notified_at": at}
    unsent = await add_dose(patient, med, at, "reminded", slot="unsent", **claimed)
    stored = await add_dose(patient, med, at, "reminded", slot="stored", **claimed)
    await Notification(user_id=PydanticObjectId(patient.id), kind="reminder", title="Time for Metformin",
                       patient_id=PydanticObjectId(patient.id), data={"dose_id": str(stored.id)}).insert()

    (note,) = await notes_of(p_sock, "reminder")
    assert note["data"]["dose_id"] == str(unsent.id)
    await asyncio.sleep(1.5)  # the next passes: nothing sent again
    assert len([n for n in p_sock.events.of("notification:new") if n["kind"] == "reminder"]) == 1
    assert p_sock.events.of("dose:due") == []  # pushed already: not again
    assert await Notification.find({"data.dose_id": str(stored.id)}).count() == 1
    assert await DoseClaim.find_all().count() == 0


async def test_the_box_is_told_of_a_batch_of_due_doses_once_the_next_batch_is_pushed(api: Api) -> None:
    """A batch's box commands (a store update and a send per box: 2-3 s for 500 doses under the rush bench at 800
    patients) come after the next batch's ``dose:due``, not before it; every claim is done once its box was told."""
    delivery = api.app[SERVER].scheduler.delivery  # type: ignore[index]
    delivery.batch = 1  # a batch per dose
    pushed: list[str] = []
    told: list[tuple[list[str], list[str]]] = []  # (a batch's doses, the doses pushed by then)
    broadcaster = delivery.out

    class Recorder:
        async def to_patient(self, patient_id: Any, event: str, data: dict[str, Any]) -> None:
            pushed.append(data["id"])
            await broadcaster.to_patient(patient_id, event, data)

    async def box(doses: list[dict[str, Any]]) -> None:
        told.append(([str(d["_id"]) for d in doses], list(pushed)))

    delivery.out = Recorder()
    delivery.on_due.insert(0, box)
    patient = await api.register("patient")
    p_sock = await api.socket(patient)
    med = await create(p_sock, patient.id, schedule={"as_needed": True})
    due = utcnow() + timedelta(seconds=1)  # both stored before either falls due
    first = await add_dose(patient, med, due, slot="first")
    second = await add_dose(patient, med, due, slot="second")
    await p_sock.events.wait("dose:due", count=2)
    for _ in range(150):
        if len(told) == 2 and await DoseClaim.find_all().count() == 0:
            break
        await asyncio.sleep(0.02)
    assert told == [([str(first.id)], [str(first.id), str(second.id)]),
                    ([str(second.id)], [str(first.id), str(second.id)])]
    assert await DoseClaim.find_all().count() == 0  # both claims done once their box was told
