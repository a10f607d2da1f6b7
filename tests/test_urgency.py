"""Urgent before bulk (issue 18): bulk work (reminders pushed, box commands, notifications sent live) gives the
event loop a turn every few milliseconds and holds back while an alert is being raised; a reading in crisis is
urgent from its first step. The servers here are real (in this process, over real sockets, on the embedded
store), so the ``URGENCY`` they use is this process's."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from beanie import PydanticObjectId
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

from server.alerts.documents import Alert
from server.app import create_app
from server.care.documents import AuditEntry
from server.core import urgency
from server.core.documents import utcnow
from server.core.urgency import URGENCY, Urgency
from server.infra.embedded_store import EmbeddedStore
from server.infra.group_commit import COMMITS
from server.infra.store import URGENT_LANE, make_client
from server.meds.documents import DoseEvent
from server.vitals import blood_pressure
from server.vitals.documents import BPReading
from tests.alert_clients import crisis
from tests.conftest import make_settings, store_of_tests
from tests.helpers import Api
from tests.test_medications import create
from tests.test_scheduler import add_dose

HELD_MS = 5000  # how long the store holds each command of the main client
HELD_APP = "healthmate-held"  # that client's name: the failpoint holds its commands only


@pytest.fixture(scope="module")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedStore]:
    """This module's own store, in place of the shared one: its tests hold the store's commands with failpoints
    (SecantusDB's, as mongod's: test commands on), which the other tests' store should neither allow nor see."""
    async with store_of_tests(tmp_path_factory, "urgency-store", test_commands=True) as s:
        yield s


async def urgent_until(pace: Urgency, release: asyncio.Event) -> asyncio.Task[None]:
    """Urgent work in progress (started before this returns) until ``release`` is set."""

    async def urgent() -> None:
        async with pace.urgent():
            await release.wait()

    holder = asyncio.create_task(urgent())
    await asyncio.sleep(0)
    return holder


async def test_bulk_work_lets_what_is_ready_run_once_per_slice() -> None:
    """A bulk loop of 100 sends, each taking a millisecond of a (fake) clock: work that became ready while it
    ran (an alert's next step) runs after at most one slice, not after the whole loop."""
    now = [0.0]
    pace = Urgency(clock=lambda: now[0])
    order: list[str] = []
    ready = asyncio.Event()

    async def alert() -> None:
        await ready.wait()
        order.append("alert")

    async def bulk() -> None:
        for i in range(100):
            await pace.give_way()
            if i == 10:
                ready.set()
            now[0] += 0.001  # one send
            order.append("send")

    waiting = asyncio.create_task(alert())
    await asyncio.sleep(0)  # it waits for the event
    await bulk()
    await waiting
    sends_before = order.index("alert")
    assert 11 <= sends_before <= 11 + round(urgency.SLICE_S / 0.001) + 1, order


async def test_bulk_work_holds_back_while_urgent_work_is_in_progress_but_not_beyond_its_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pace = Urgency()
    sent: list[int] = []

    async def bulk(n: int) -> None:
        for i in range(n):
            await pace.give_way()
            sent.append(i)

    release = asyncio.Event()
    holder = await urgent_until(pace, release)
    loop = asyncio.create_task(bulk(5))
    await asyncio.sleep(0.1)
    assert sent == []  # not one send while the alert is raised
    release.set()
    await holder
    await loop
    assert sent == [0, 1, 2, 3, 4]

    # Urgent work that never ends (a stuck alert) holds bulk work back a second at most: here 5 x 2 ms.
    monkeypatch.setattr(urgency, "CLEAR_WAITS", 5)
    sent.clear()
    release.clear()
    holder = await urgent_until(pace, release)
    await asyncio.wait_for(bulk(3), 5)
    assert sent == [0, 1, 2] and pace.in_progress == 1
    release.set()
    await holder


async def test_urgent_work_calling_a_bulk_helper_does_not_wait_for_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bulk helper (``give_way``, ``until_clear``) called by urgent work, or by a task it started, goes on:
    waiting for urgent work to end would be waiting for itself (a second, the cap; here the cap is an hour)."""
    monkeypatch.setattr(urgency, "CLEAR_WAITS", 1_800_000)
    pace = Urgency()
    async with pace.urgent():
        await asyncio.wait_for(pace.give_way(), 5)
        await asyncio.wait_for(asyncio.create_task(pace.until_clear()), 5)
    release = asyncio.Event()
    holder = await urgent_until(pace, release)  # someone else's urgent work: bulk work does wait for that
    waiting = asyncio.create_task(pace.until_clear())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    release.set()
    await holder
    await asyncio.wait_for(waiting, 5)


async def test_while_urgent_work_is_in_progress_other_writes_hold_back_but_its_own_go_at_once(
        store: EmbeddedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The group commit's batches (other patients' readings, access records, reminder notifications) wait while
    an alert is being raised, so that the store serves the alert's commands without theirs in between; a write
    of the urgent work itself goes at once on the urgent lane, whatever it is."""
    monkeypatch.setattr(urgency, "CLEAR_WAITS", 1_800_000)  # held until the urgent work ends, however long
    client = make_client(store.url)
    coll = client[f"hold_{PydanticObjectId()}"].writes
    await URGENT_LANE.open(client, store.url)
    release = asyncio.Event()
    holder = await urgent_until(URGENCY, release)
    try:
        other = asyncio.create_task(COMMITS.insert(coll, [{"_id": "another patient's reading"}]))
        async with URGENCY.urgent():
            await asyncio.wait_for(COMMITS.insert(coll, [{"_id": "the crisis reading's own"}]), 5)
        await asyncio.sleep(0.3)
        assert not other.done()
        assert [d["_id"] async for d in coll.find()] == ["the crisis reading's own"]
        release.set()
        await holder
        await asyncio.wait_for(other, 5)
        assert await coll.count_documents({}) == 2
    finally:
        release.set()
        await URGENT_LANE.close(client)
        await client.close()


async def test_with_urgent_first_off_bulk_work_neither_waits_nor_yields() -> None:
    """``HEALTHMATE_URGENT_FIRST=off`` (the rush bench's comparison, the path before): bulk work runs through
    while urgent work is in progress, and keeps the event loop for its whole length."""
    now = [0.0]
    pace = Urgency(clock=lambda: now[0])
    pace.enabled = False
    release = asyncio.Event()
    holder = await urgent_until(pace, release)
    assert pace.in_progress == 0  # urgent work is not counted
    order: list[str] = []

    async def other() -> None:
        order.append("other")

    waiting = asyncio.create_task(other())
    for _ in range(100):  # 100 ms of (fake) sends: 20 slices
        await pace.give_way()
        now[0] += 0.001
        order.append("send")
    await waiting
    assert order == ["send"] * 100 + ["other"]
    release.set()
    await holder


def collections_while(work: Any) -> list[int]:
    """The generations the garbage collector collected while ``work()`` ran (it makes garbage enough for several
    young collections)."""
    seen: list[int] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(watch)
    try:
        work()
    finally:
        gc.callbacks.remove(watch)
    return seen


def garbage() -> None:
    for _ in range(5):
        cycles = [[] for _ in range(gc.get_threshold()[0])]
        for c in cycles:
            c.append(c)  # (a cycle: only the collector frees it)


async def test_the_garbage_collector_waits_while_urgent_work_is_in_progress_and_not_beyond_its_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A collection due while an alert is raised runs once it is out, not in its way; a flood of urgent work
    holds the collector back for at most ``GC_HOLD_S``, and with urgent-first off it is never held."""
    assert gc.isenabled()
    pace = Urgency()
    release = asyncio.Event()
    holder = await urgent_until(pace, release)
    assert not gc.isenabled() and collections_while(garbage) == []
    release.set()
    await holder
    assert gc.isenabled() and collections_while(garbage)  # what was due runs now

    monkeypatch.setattr(urgency, "GC_HOLD_S", 0.05)
    release = asyncio.Event()
    holder = await urgent_until(pace, release)
    second = await urgent_until(pace, asyncio.Event())  # (overlapping: still held by the first one's turn)
    assert not gc.isenabled()
    await asyncio.sleep(0.1)
    assert gc.isenabled() and collections_while(garbage)  # urgent work still in progress, the collector back
    release.set()
    await holder
    second.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await second
    assert pace.in_progress == 0 and gc.isenabled()

    pace.enabled = False
    release = asyncio.Event()
    holder = await urgent_until(pace, release)
    assert gc.isenabled() and collections_while(garbage)
    release.set()
    await holder


async def test_a_collector_turned_off_elsewhere_stays_off_after_urgent_work() -> None:
    gc.disable()
    try:
        async with Urgency().urgent():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_hold_whose_loop_no_longer_runs_ends_at_the_next_bulk_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Urgent work left unfinished on a loop that stopped (a server torn down mid-alert): its timer never fires,
    and nothing would collect that work while the collector is off. Bulk work on another loop, once the cap has
    passed, turns the collector back on."""
    monkeypatch.setattr(urgency, "GC_HOLD_S", 0.05)
    pace = Urgency()
    gone = asyncio.new_event_loop()
    try:
        holder = gone.run_until_complete(urgent_until(pace, asyncio.Event()))  # never released
        assert not gc.isenabled()
        time.sleep(0.1)  # (that loop no longer runs: its timer cannot fire)
        assert not gc.isenabled()
        asyncio.run(pace.give_way())
        assert gc.isenabled() and pace.in_progress == 1
    finally:
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            gone.run_until_complete(holder)
        gone.close()
        gc.enable()
    assert pace.in_progress == 0


async def test_due_reminders_wait_while_an_alert_is_being_raised(api: Api) -> None:
    """A dose falls due while urgent work is in progress: it is claimed, but its ``dose:due`` waits for the
    urgent work to end."""
    patient = await api.register("patient")
    sock = await api.socket(patient)
    med = await create(sock, patient.id, schedule={"times": ["03:00"]})
    async with URGENCY.urgent():
        dose = await add_dose(patient, med, utcnow())
        for _ in range(100):
            stored = await DoseEvent.get(dose.id)
            if stored is not None and stored.state == "reminded":
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the dose was not claimed")
        await asyncio.sleep(0.3)
        assert sock.events.of("dose:due") == []
    (due,) = await sock.events.wait("dose:due")
    assert due["id"] == str(dose.id)


async def test_a_reading_in_crisis_is_urgent_from_its_access_check_a_normal_one_is_not(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    check = blood_pressure.admit_patient

    async def watched(*args: Any, **kwargs: Any) -> Any:
        seen.append({"urgent_work": URGENCY.in_progress, "audit_at_once": kwargs.get("urgent", False)})
        return await check(*args, **kwargs)

    monkeypatch.setattr(blood_pressure, "admit_patient", watched)
    patient = await api.register("patient")
    sock = await api.socket(patient)
    await sock.ok("bp:add", {"systolic": 121, "diastolic": 79, "pulse": 70,
                             "measured_at": (utcnow() - timedelta(seconds=1)).isoformat()})
    reading = await sock.ok("bp:add", crisis())
    assert reading["category"] == "hypertensive_crisis"
    assert seen == [{"urgent_work": 0, "audit_at_once": False}, {"urgent_work": 1, "audit_at_once": True}]
    assert URGENCY.in_progress == 0  # and over once the reading is stored and its alert raised


async def test_the_alert_of_a_reading_in_crisis_is_stored_and_sent_only_once_the_reading_is(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The alert's lookups go while the reading is being stored; if the reading's write fails (the store lost
    mid-write), the sender is told and no alert about a reading that is not stored reaches anyone. If only the
    access record's write fails, the reading is stored and its alert goes out (the sender is told to retry)."""
    patient, carer = await api.register("patient"), await api.register("caregiver")
    await api.link(patient, carer)
    p_sock, c_sock = await api.socket(patient), await api.socket(carer)
    write, failing_for = COMMITS.insert_documents, [BPReading]

    async def failing(docs: Any, **options: Any) -> None:
        if docs and type(docs[0]) in failing_for:
            await asyncio.sleep(0.05)  # the lookups are under way meanwhile
            raise AutoReconnect("connection closed")
        await write(docs, **options)

    monkeypatch.setattr(COMMITS, "insert_documents", failing)
    reply = await p_sock.call("bp:add", crisis())
    assert "error" in reply, reply
    await asyncio.sleep(0.3)
    assert c_sock.events.of("alert:new") == []
    assert await Alert.find(Alert.patient_id == PydanticObjectId(patient.id)).count() == 0
    assert await BPReading.find(BPReading.patient_id == PydanticObjectId(patient.id)).count() == 0

    failing_for[:] = [AuditEntry]
    reply = await p_sock.call("bp:add", crisis())
    assert "error" in reply, reply
    (stored,) = await BPReading.find(BPReading.patient_id == PydanticObjectId(patient.id)).to_list()
    (alert,) = await c_sock.events.wait("alert:new")
    assert alert["kind"] == "bp_crisis" and alert["data"]["reading_id"] == str(stored.id)


async def test_a_crisis_readings_access_record_is_written_once_its_alert_is_out_and_before_its_ack(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the way to the care team the store writes the reading and the alert, one disk sync each, nothing else;
    the access record follows (the reading names who entered it) and the sender's ack waits for it."""
    patient, carer = await api.register("patient"), await api.register("caregiver")
    await api.link(patient, carer)
    p_sock, c_sock = await api.socket(patient), await api.socket(carer)
    write, writes = COMMITS.insert_documents, []

    async def watched(docs: Any, **options: Any) -> None:
        writes.append(("start", type(docs[0]).__name__))
        await write(docs, **options)
        writes.append(("stored", type(docs[0]).__name__))

    monkeypatch.setattr(COMMITS, "insert_documents", watched)
    reading = await p_sock.ok("bp:add", crisis())
    # (the alert's notifications are written in the background meanwhile)
    assert [w for w in writes if w[1] != "Notification"] == [
        ("start", "BPReading"), ("stored", "BPReading"), ("start", "Alert"), ("stored", "Alert"),
        ("start", "AuditEntry"), ("stored", "AuditEntry")]
    (alert,) = c_sock.events.of("alert:new")  # (it arrived before the ack)
    assert alert["data"]["reading_id"] == reading["id"]
    assert await AuditEntry.find(AuditEntry.action == "bp.add", AuditEntry.actor_id == PydanticObjectId(patient.id),
                                 AuditEntry.outcome == "ok").count() == 1


async def test_a_flood_of_urgent_work_slows_bulk_work_but_never_starves_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Urgent work without a gap (crisis readings one after another: a patient in trouble, or someone sending
    them on purpose): bulk work waits, then runs at least as long as it waited before it waits again."""
    monkeypatch.setattr(urgency, "CLEAR_WAITS", 10)  # a wait gives up after 20 ms here (a second in service)
    pace = Urgency()
    waits = 0
    until_clear = pace.until_clear

    async def counted() -> None:
        nonlocal waits
        waits += 1
        await until_clear()

    monkeypatch.setattr(pace, "until_clear", counted)
    release = asyncio.Event()
    holder = await urgent_until(pace, release)  # a flood: urgent work without a gap
    for _ in range(200):
        await pace.give_way()
        time.sleep(0.001)  # one send's work
    release.set()
    await holder
    # Each wait (about 20 ms) buys about 20 sends before the next: a handful of waits, not one per send.
    assert 1 <= waits <= 40, waits


async def test_a_crisis_alert_reaches_the_care_team_while_the_store_holds_every_bulk_command(
        store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any) -> None:
    """Urgent work has its own store connections: with every command of the server's main client held in the store
    (a failpoint of the embedded store, as mongod's, scoped to the client's name: this server's own, given in its
    URL, so that no other test's client is held), a reading in crisis is stored and its alert reaches the caregiver
    while an ordinary reading sent before it still waits; nothing is lost."""
    settings = make_settings(f"{store.url}&appName={HELD_APP}", tmp_path)
    server = await aiohttp_server(create_app(settings))
    async with Api.of(server) as api:
        patient, carer = await api.register("patient"), await api.register("caregiver")
        await api.link(patient, carer)
        p_sock, c_sock = await api.socket(patient), await api.socket(carer)
        admin: AsyncMongoClient[Any] = AsyncMongoClient(store.url)
        hold = {"configureFailPoint": "failCommand", "mode": "alwaysOn",
                "data": {"appName": HELD_APP, "blockConnection": True, "blockTimeMS": HELD_MS,
                         "failCommands": ["find", "insert", "update", "delete", "findAndModify", "getMore", "count"]}}
        try:
            await admin.admin.command(hold)
            normal = asyncio.ensure_future(p_sock.call("bp:add", {"systolic": 121, "diastolic": 79, "pulse": 70,
                                                                  "measured_at": utcnow().isoformat()}, timeout=60))
            urgent = asyncio.ensure_future(p_sock.call("bp:add", crisis(), timeout=60))
            # Without its own connections the alert would wait for two held commands (its lookups, then its insert).
            (alert,) = await c_sock.events.wait("alert:new", timeout=HELD_MS / 1000 * 0.8)
            assert alert["kind"] == "bp_crisis"
            assert not normal.done()
        finally:
            await admin.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
            await admin.close()
        assert (await urgent)["data"]["category"] == "hypertensive_crisis"
        assert (await normal)["data"]["category"] != "hypertensive_crisis"
        readings = await BPReading.find(BPReading.patient_id == PydanticObjectId(patient.id)).count()
        assert readings == 2


@pytest.fixture
async def bulk_store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    """A store for one server's bulk collections (as the embedded store's server starts under <data dir>/bulk), with
    failpoints; it outlives the server (requested before ``aiohttp_server``)."""
    bulk = EmbeddedStore(tmp_path / "bulk-store", test_commands=True)
    await bulk.start()
    yield bulk
    await bulk.stop()


async def test_an_alert_goes_through_while_the_bulk_store_holds_every_command(
        bulk_store: EmbeddedStore, store: EmbeddedStore, tmp_path: Path, aiohttp_server: Any) -> None:
    """Bulk work's collections (doses, claims, box states, notifications, waveform history) live in a store of their
    own: with every command of that store held, a dose falling due waits (its claim is held), while a reading in
    crisis is stored and its alert reaches the caregiver; once the store lets go, the dose arrives: nothing lost."""
    settings = make_settings(store.url, tmp_path, bulk_mongodb_url=bulk_store.url)
    server = await aiohttp_server(create_app(settings))
    async with Api.of(server) as api:
        patient, carer = await api.register("patient"), await api.register("caregiver")
        await api.link(patient, carer)
        p_sock, c_sock = await api.socket(patient), await api.socket(carer)
        med = await create(p_sock, patient.id, schedule={"times": ["03:00"]})
        dose = await add_dose(patient, med, utcnow() + timedelta(seconds=0.5))
        admin: AsyncMongoClient[Any] = AsyncMongoClient(bulk_store.url)
        hold = {"configureFailPoint": "failCommand", "mode": "alwaysOn",
                "data": {"blockConnection": True, "blockTimeMS": HELD_MS,
                         "failCommands": ["find", "insert", "update", "delete", "findAndModify", "getMore", "count"]}}
        try:
            await admin.admin.command(hold)
            await asyncio.sleep(1.0)  # the dose is due, and its claim held
            urgent = asyncio.ensure_future(p_sock.call("bp:add", crisis(), timeout=60))
            (alert,) = await c_sock.events.wait("alert:new", timeout=HELD_MS / 1000 * 0.5)
            assert alert["kind"] == "bp_crisis"
            assert p_sock.events.of("dose:due") == []
        finally:
            await admin.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
            await admin.close()
        (due,) = await p_sock.events.wait("dose:due", timeout=HELD_MS / 1000 * 4)
        assert due["id"] == str(dose.id)
        assert (await urgent)["data"]["category"] == "hypertensive_crisis"
        for url, doses in ((bulk_store.url, 1), (store.url, 0)):  # the dose in the bulk store, not in the main one
            async with AsyncMongoClient(url) as client:
                assert await client[settings.mongodb_db].dose_events.count_documents({"_id": dose.id}) == doses


async def test_each_client_of_the_same_store_keeps_its_own_urgent_lane(store: EmbeddedStore) -> None:
    """Two servers in one process (as in tests) each have their lane; one stopping closes its own, not the other's
    (PyMongo's clients of the same store compare equal, so the lanes are kept by identity)."""
    one, two = make_client(store.url), make_client(store.url)
    await URGENT_LANE.open(one, store.url)
    await URGENT_LANE.open(two, store.url)
    try:
        lane_one, lane_two = (URGENT_LANE(c.hm_lanes.probe).database.client for c in (one, two))
        assert len({id(lane_one), id(lane_two), id(one), id(two)}) == 4
        await URGENT_LANE.close(one)
        assert URGENT_LANE(one.hm_lanes.probe).database.client is one  # its lane gone: its own connections
        assert URGENT_LANE(two.hm_lanes.probe).database.client is lane_two
        await URGENT_LANE(two.hm_lanes.probe).insert_one({"still": "open"})
    finally:
        await URGENT_LANE.close(one)
        await URGENT_LANE.close(two)
        await one.close()
        await two.close()
