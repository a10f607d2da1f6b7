"""The embedded store: durability of acknowledged writes across SIGKILL, data across restarts,
a crash reported and recovered from, migrations that run once and in order, and writes sent without
the retryable-write bookkeeping that slows SecantusDB down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import ClientSession
from bson import ObjectId
from prometheus_client import REGISTRY
from pymongo import monitoring

from server.app import DOCUMENTS, SERVER, create_app
from server.infra.embedded_store import EmbeddedStore
from server.infra.migrations import MIGRATIONS, MigrationRecord, move_collection, run_migrations
from server.infra.store import init_documents, make_client
from server.meds.documents import DoseEvent
from server.streaming.documents import AnalysisChunk
from tests.conftest import make_settings
from tests.helpers import Api, process_alive


def restarts(reason: str) -> float:
    """``healthmate_embedded_store_restarts_total`` of the main store, for ``reason``."""
    return REGISTRY.get_sample_value("healthmate_embedded_store_restarts_total",
                                     {"store": "main", "reason": reason}) or 0.0


async def test_acknowledged_writes_survive_sigkill(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = EmbeddedStore(tmp_path)
    await store.start()
    client = make_client(store.url, serverSelectionTimeoutMS=20000, retryWrites=False)
    coll = client.durability.readings
    acknowledged: list[int] = []
    exited, hung = restarts("exited"), restarts("hung")

    async def writer(start: int) -> None:
        for i in range(start, start + 10_000, 10):
            try:
                await coll.insert_one({"_id": i, "payload": "x" * 200})
            except Exception:
                return  # the store died under us: this write was never acknowledged
            acknowledged.append(i)

    writers = [asyncio.create_task(writer(k)) for k in range(10)]
    while len(acknowledged) < 400:
        await asyncio.sleep(0.01)
    assert store.proc is not None
    with caplog.at_level(logging.ERROR, logger="server.infra.embedded_store"):
        os.kill(store.proc.pid, signal.SIGKILL)
        await asyncio.gather(*writers)
        # The supervisor reports the crash and brings the store back on the same port.
        for _ in range(300):
            if store.crashes == 1 and store.healthy:
                break
            await asyncio.sleep(0.1)
    assert store.crashes == 1 and store.healthy
    assert any("exited unexpectedly" in r.message for r in caplog.records)
    assert (restarts("exited"), restarts("hung")) == (exited + 1, hung)  # /metrics tells a crash from a hang
    stored = {d["_id"] async for d in coll.find({}, {"_id": 1})}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged writes lost of {len(acknowledged)}"
    await client.close()
    await store.stop()


async def test_a_store_that_runs_but_stops_answering_is_restarted_with_nothing_acknowledged_lost(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store process that is alive but answers nothing (here stopped with SIGSTOP; in the wild, a connection
    thread stuck in the storage engine with the store's lock held) is what a crash supervisor alone never sees:
    every command would wait for good. The watchdog ends it and the supervisor starts it again."""
    monkeypatch.setattr("server.infra.embedded_store.WATCH_EVERY_S", 0.2)
    monkeypatch.setattr("server.infra.embedded_store.TERM_GRACE_S", 1.0)  # a stopped process ignores SIGTERM
    store = EmbeddedStore(tmp_path, hang_s=2.0)
    await store.start()
    client = make_client(store.url, serverSelectionTimeoutMS=30000, retryWrites=False)
    coll = client.wedge.readings
    try:
        await coll.insert_many([{"_id": i} for i in range(100)])
        await asyncio.sleep(0.5)  # the watchdog has seen this process answer
        assert store.proc is not None
        wedged = store.proc.pid
        exited, hung = restarts("exited"), restarts("hung")
        with caplog.at_level(logging.ERROR, logger="server.infra.embedded_store"):
            os.kill(wedged, signal.SIGSTOP)
            waiting = asyncio.ensure_future(coll.count_documents({}))  # sent to the wedged store
            for _ in range(600):
                if store.hangs == 1 and store.healthy and store.proc.pid != wedged:
                    break
                await asyncio.sleep(0.1)
        assert store.hangs == 1 and store.healthy and store.proc.pid != wedged
        assert not process_alive(wedged)
        assert any("has not answered" in r.message for r in caplog.records)
        assert (restarts("exited"), restarts("hung"), store.crashes) == (exited, hung + 1, 0)  # a hang, not a crash
        # Its connection died with the process, and the read, retried once, was answered by the store restarted.
        assert await asyncio.wait_for(waiting, 30) == 100
        await coll.insert_one({"_id": 100})
        assert await coll.count_documents({}) == 101
        assert store.hangs == 1  # a store answering again is not judged again
    finally:
        await client.close()
        await store.stop()


async def test_a_shutdown_while_the_watchdog_stops_the_store_signals_it_once(tmp_path: Path) -> None:
    """The server stopping while the watchdog is ending a wedged store: both wait for the one exit, and the
    store gets one SIGTERM (SecantusDB's handler is not re-entrant: a second one, while the first is writing its
    threads' stacks, breaks it)."""
    store = EmbeddedStore(tmp_path)
    await store.start()
    assert store.proc is not None
    proc, sent = store.proc, []
    terminate = proc.popen.terminate
    proc.popen.terminate = lambda: (sent.append(time.monotonic()), terminate())  # type: ignore[method-assign]
    await asyncio.gather(store._terminate(proc, 10), store.stop())  # the watchdog's stop, and the shutdown's
    assert len(sent) == 1 and proc.returncode is not None and not process_alive(proc.pid)


@contextlib.asynccontextmanager
async def watchdog_reads_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              hold_ms: int) -> AsyncIterator[tuple[EmbeddedStore, int]]:
    """A store (``hang_s`` 2 s, read every 0.2 s) that the watchdog has seen answer, from then on each of the
    watchdog's reads held ``hold_ms`` in the store (a failpoint on its connection); the store and its pid."""
    monkeypatch.setattr("server.infra.embedded_store.WATCH_EVERY_S", 0.2)
    store = EmbeddedStore(tmp_path, hang_s=2.0, test_commands=True)
    await store.start()
    client = make_client(store.url)
    try:
        assert store.proc is not None
        pid = store.proc.pid
        await asyncio.sleep(0.6)  # the watchdog has seen this process answer: from now on it judges it
        await client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": {
            "appName": "healthmate-watchdog", "blockConnection": True, "blockTimeMS": hold_ms,
            "failCommands": ["find"]}})
        yield store, pid
    finally:
        await client.close()
        await store.stop()


async def test_a_store_slow_to_answer_but_answering_is_left_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watchdog's bound is on silence, not on slowness: each of its reads held in the store for most of
    ``hang_s`` is still an answer, and the store keeps running."""
    async with watchdog_reads_held(tmp_path, monkeypatch, 1500) as (store, pid):
        await asyncio.sleep(8)  # four held reads, 6 s in all: three times hang_s
        assert store.hangs == 0 and store.crashes == 0 and store.proc is not None and store.proc.pid == pid
        # Nor is a holdup of the server's own loop taken for the store's silence (in the tests, a synchronous
        # test leaves the session's loop waiting for minutes): 5 s of it, most likely with a held read under way.
        time.sleep(5)
        await asyncio.sleep(2)
        assert store.hangs == 0 and store.crashes == 0 and store.proc.pid == pid


async def test_a_store_kept_silent_by_a_start_up_step_is_not_judged_until_the_step_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Index builds and migrations on a large data dir can keep the store from answering for longer than the
    watchdog's bound (``unwatched``, around the start-up's steps in ``server.lifecycle.connected``). The same
    silence after the step is judged."""
    async with watchdog_reads_held(tmp_path, monkeypatch, 3000) as (store, pid):  # each read held past hang_s
        with store.unwatched():
            await asyncio.sleep(7)
            assert store.hangs == 0 and store.proc is not None and store.proc.pid == pid
        for _ in range(100):
            if store.hangs:
                break
            await asyncio.sleep(0.1)
        assert store.hangs == 1  # the step over, the same silence ends the store


async def test_a_store_runs_no_server_code_in_its_child_and_dies_with_a_server_killed_outright(
        tmp_path: Path) -> None:
    """The server's loop with ``HEALTHMATE_URGENT_FIRST=off`` is uvloop, whose subprocesses run the process's at-fork
    hooks in the child; PyMongo's fails there when a client is collected meanwhile (a traceback in the log whenever
    the two stores start side by side, as CI saw). A hook of our own says whether any ran. Then the server is
    SIGKILLed: its store must not outlive it."""
    code = ("import asyncio, os, pathlib, sys, uvloop\n"
            "from server.infra.embedded_store import EmbeddedStore\n"
            "os.register_at_fork(after_in_child=lambda: os.write(2, b'an at-fork hook ran\\n'))\n"
            "async def main():\n"
            "    store = EmbeddedStore(pathlib.Path(sys.argv[1]))\n"
            "    await store.start()\n"
            "    print(store.proc.pid, flush=True)\n"
            "    await asyncio.sleep(600)\n"
            "uvloop.run(main())\n")
    server = await asyncio.create_subprocess_exec(sys.executable, "-c", code, str(tmp_path),
                                                  stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert server.stdout is not None and server.stderr is not None
    store_pid = int(await asyncio.wait_for(server.stdout.readline(), 60))
    assert process_alive(store_pid)
    server.kill()
    await server.wait()
    assert b"at-fork hook ran" not in await server.stderr.read()
    for _ in range(100):
        if not process_alive(store_pid):
            return
        await asyncio.sleep(0.1)
    os.kill(store_pid, signal.SIGKILL)
    raise AssertionError("the store outlived its server by 10 s")


async def test_data_survives_store_restart(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    await store.start()
    client = make_client(store.url)
    await client.keep.things.insert_many([{"n": i} for i in range(100)])
    await client.close()
    await store.stop()
    assert store.proc is not None and store.proc.returncode is not None

    again = EmbeddedStore(tmp_path)
    await again.start()
    client = make_client(again.url)
    assert await client.keep.things.count_documents({}) == 100
    await client.close()
    await again.stop()


@pytest.mark.parametrize("which", [0, 1], ids=["main", "bulk"])
async def test_readyz_reports_store_crash_and_recovery(which: int, tmp_path: Path, aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings("unused", tmp_path, mongodb_url=None)
    server = await aiohttp_server(create_app(settings))
    base = str(server.make_url("")).rstrip("/")
    async with Api(base) as api, ClientSession() as http:
        user = await api.register("patient")
        stores = server.app[SERVER].stores
        assert stores is not None and [s.path for s in stores.embedded] == [(tmp_path / "db").resolve(),
                                                                            (tmp_path / "bulk" / "db").resolve()]
        store = stores.embedded[which]
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 200
        assert store.proc is not None
        os.kill(store.proc.pid, signal.SIGKILL)
        for _ in range(50):
            async with http.get(base + "/readyz") as resp:
                if resp.status == 503:
                    body = await resp.json()
                    break
            await asyncio.sleep(0.02)
        assert body["error"]["code"] == "not_ready" and body["error"]["details"]["checks"]["store"].startswith("down")
        for _ in range(300):
            async with http.get(base + "/readyz") as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.1)
        assert resp.status == 200
        status, me = await api.request("GET", "/api/me", user)
        assert status == 200 and me["id"] == user.id


async def test_a_data_dir_from_before_the_bulk_store_has_its_bulk_documents_moved_there(
        tmp_path: Path, aiohttp_server) -> None:  # type: ignore[no-untyped-def]
    """The embedded store's server keeps its bulk collections in a second store process under <data dir>/bulk; a data
    dir whose store still holds them (written before) has them moved there at start-up, and served from there."""
    settings = make_settings("unused", tmp_path, mongodb_url=None)
    old = EmbeddedStore(tmp_path)
    await old.start()
    client = make_client(old.url)
    patient = ObjectId()
    due = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
    await client[settings.mongodb_db].dose_events.insert_many([
        {"schema_version": 1, "patient_id": patient, "medication_id": ObjectId(), "slot": f"s{i}", "timezone": "UTC",
         "due_at": due, "medication_name": "Metformin", "dose": "1 tablet", "drawer": 1, "state": "confirmed"}
        for i in range(3)])
    await client[settings.mongodb_db].notifications.insert_one({"user_id": patient, "kind": "reminder"})
    await client[settings.mongodb_db].analyses.insert_one({  # a stream's analyses: ECG history, bulk too
        "schema_version": 1, "stream_id": ObjectId(), "patient_id": patient, "start": due, "items": [{"hr": 61}]})
    await client.close()
    await old.stop()

    server = await aiohttp_server(create_app(settings))
    stores = server.app[SERVER].stores
    assert stores.bulk is not None
    main, bulk = stores.client[settings.mongodb_db], stores.bulk[settings.mongodb_db]
    assert await main.dose_events.count_documents({}) == 0 and await main.notifications.count_documents({}) == 0
    assert await bulk.dose_events.count_documents({"patient_id": patient}) == 3
    assert await bulk.notifications.count_documents({"user_id": patient}) == 1
    assert {d.slot for d in await DoseEvent.find(DoseEvent.patient_id == patient).to_list()} == {"s0", "s1", "s2"}
    assert await main.analyses.count_documents({}) == 0 and await bulk.analyses.count_documents({}) == 1
    assert [c.items for c in await AnalysisChunk.find(AnalysisChunk.patient_id == patient).to_list()] == [[{"hr": 61}]]


async def test_a_move_cut_short_is_taken_up_again_keeping_what_was_copied(store: EmbeddedStore) -> None:
    """Copied, then dropped where it was: a move that died between the two copies again (what is there already is
    kept) and then drops."""
    client = make_client(store.url)
    source, target = client.hm_move.source, client.hm_move_target.target
    await source.insert_many([{"_id": i, "n": i} for i in range(2500)])
    await target.insert_many([{"_id": i, "n": i} for i in range(1200)])  # a first move copied these, then died
    assert await move_collection(source, target) == 1300
    assert await target.count_documents({}) == 2500 and await source.count_documents({}) == 0
    assert await move_collection(source, target) == 0  # nothing left: nothing done
    await client.close()


async def test_migrations_run_once_in_order(store: EmbeddedStore) -> None:
    client = make_client(store.url)
    db_name = "hm_migrations_test"
    await client[db_name].users.insert_one({"email": "Old.User@Example.ORG", "name": "Old", "role": "patient",
                                            "password_hash": "x"})
    box, cuff = ObjectId(), ObjectId()  # a box's battery from box:hello was 0-1; a cuff's heartbeat said percent
    await client[db_name].devices.insert_many([{"_id": box, "kind": "medicine_box", "battery": 0.87},
                                               {"_id": cuff, "kind": "bp_cuff", "battery": 0.5}])
    await client[db_name].medicine_boxes.insert_one({"_id": box, "battery": 0.87})
    # Doses claimed at due time before claims were documents: two of one claim in flight (one of them with its
    # notification), one delivered; and the index their lease needed.
    lease = datetime(2026, 12, 3, 8, 5, tzinfo=UTC)
    await client[db_name].dose_events.insert_many([
        {"slot": "1", "state": "reminded", "due_owner": "p1:a", "due_lease_until": lease, "due_pushed_at": None},
        {"slot": "2", "state": "reminded", "due_owner": "p1:a", "due_lease_until": lease - timedelta(seconds=1),
         "due_pushed_at": None, "reminder_lease_until": lease},
        {"slot": "3", "state": "reminded", "due_owner": None, "due_lease_until": None, "due_pushed_at": lease}])
    await client[db_name].dose_events.create_index([("state", 1), ("due_pushed_at", 1), ("due_lease_until", 1)],
                                                   name="due_lease")
    for owner in ("lease_owner", "due_owner", "box_owner"):  # claims' owners were indexed before 0006
        await client[db_name].dose_events.create_index(owner, name=owner)
    await client[db_name].bp_readings.create_index([("patient_id", 1), ("_id", -1)], name="patient_recent")  # 0007
    await client[db_name].notifications.create_index([("user_id", 1), ("read_at", 1), ("deleted_at", 1)],
                                                     name="user_unread")
    await client[db_name].alerts.create_index([("recipient_ids", 1), ("status", 1), ("raised_at", 1)],
                                              name="recipient_status")
    await init_documents(client, db_name, DOCUMENTS)
    applied = await run_migrations(client[db_name])
    assert applied == [name for name, _ in MIGRATIONS]
    old = await client[db_name].users.find_one({"name": "Old"})
    assert old["schema_version"] == 1 and old["email"] == "old.user@example.org"
    batteries = [(await client[db_name][c].find_one({"_id": i}))["battery"]
                 for c, i in (("devices", box), ("medicine_boxes", box), ("devices", cuff))]
    assert batteries == [87.0, 87.0, 0.5]
    claims = await client[db_name].dose_claims.find({}).to_list(None)
    assert [(c["_id"], c["lease_until"].replace(tzinfo=UTC), c["notes"], c["pushed"]) for c in claims] == [
        ("p1:a", lease, True, False)]
    indexes = await client[db_name].dose_events.index_information()
    assert not {"due_lease", "lease_owner", "due_owner", "box_owner"} & set(indexes), indexes
    indexes = await client[db_name].bp_readings.index_information()
    assert "patient_live" in indexes and "patient_recent" not in indexes, indexes
    indexes = await client[db_name].notifications.index_information()
    assert "user_unread_recent" in indexes and "user_unread" not in indexes, indexes
    indexes = await client[db_name].alerts.index_information()
    assert "recipient_status_recent" in indexes and "recipient_status" not in indexes, indexes
    assert await run_migrations(client[db_name]) == []
    assert [r.id async for r in MigrationRecord.find_all()] == [name for name, _ in MIGRATIONS]
    # Two processes starting together: the lock lets one apply, the other sees it done.
    await client[db_name].migrations.delete_many({})
    results = await asyncio.gather(run_migrations(client[db_name]), run_migrations(client[db_name]))
    assert sorted(len(r) for r in results) == [0, len(MIGRATIONS)]
    await client.close()


class _Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[dict[str, object]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_writes_to_the_embedded_store_are_not_retryable(store: EmbeddedStore) -> None:
    """A retryable write carries a transaction number that SecantusDB records and rescans on every later
    write (server/infra/embedded_store.py); the store's URL turns them off for every client given it."""
    listener = _Commands()
    client = make_client(store.url, event_listeners=[listener])
    try:
        coll = client["hm_retry"]["docs"]
        await coll.insert_one({"n": 1})
        await coll.update_one({"n": 1}, {"$set": {"n": 2}})
        await coll.delete_one({"n": 2})
    finally:
        await client.close()
    writes = [c for c in listener.commands if {"insert", "update", "delete"} & c.keys()]
    assert len(writes) == 3
    assert all("txnNumber" not in c for c in writes), writes


async def test_healthz_counts_the_store_commands_the_process_sent(api: Api) -> None:
    """Command monitoring on the server's client: a registration's writes show in ``/healthz``, which the
    benchmarks read to give store commands per operation."""
    status, before = await api.request("GET", "/healthz")
    assert status == 200 and isinstance(before["store_commands"], int)
    await api.register("patient")
    _, after = await api.request("GET", "/healthz")
    assert after["store_commands"] >= before["store_commands"] + 2  # at least the user and the session stored


async def test_beanie_queries_of_several_conditions_reach_the_store_as_one_filter_on_an_index(
        store: EmbeddedStore) -> None:
    """Beanie joins ``find(A, B)`` with ``$and``, through which the embedded store plans no index (each such
    query read the whole collection); they go as one filter, and one whose field repeats keeps its ``$and``."""
    from server.care.documents import Link

    listener = _Commands()
    client = make_client(store.url, event_listeners=[listener])
    await init_documents(client, "hm_one_filter", DOCUMENTS)
    patient, member, other = ObjectId(), ObjectId(), ObjectId()
    await Link.get_pymongo_collection().insert_many([
        {"_id": f"{p}:{m}", "patient_id": p, "member_id": m, "member_role": "caregiver", "revoked_at": r,
         "created_at": datetime.now(UTC)}
        for p, m, r in ((patient, member, None), (patient, other, datetime.now(UTC)), (other, member, None))])
    listener.commands.clear()
    found = await Link.find(Link.patient_id == patient, Link.revoked_at == None).to_list()  # noqa: E711
    one = await Link.find_one(Link.member_id == member, Link.patient_id == other)
    count = await Link.find(Link.member_id == member, Link.revoked_at == None).count()  # noqa: E711
    since = datetime.now(UTC) - timedelta(hours=1)
    both = await Link.find(Link.created_at > since, Link.created_at < datetime.now(UTC)).to_list()
    assert [link.member_id for link in found] == [member] and one is not None and count == 2 and len(both) == 3
    filters = [c.get("filter", (c.get("pipeline") or [{}])[0].get("$match")) for c in listener.commands
               if {"find", "aggregate"} & c.keys()]
    assert filters[:3] == [{"patient_id": patient, "revoked_at": None}, {"member_id": member, "patient_id": other},
                           {"member_id": member, "revoked_at": None}]
    assert list(filters[3]) == ["$and"]  # the same field twice: left as it was
    plan = await client["hm_one_filter"].command(
        {"explain": {"find": "links", "filter": filters[0]}, "verbosity": "queryPlanner"})
    assert "IXSCAN" in str(plan["queryPlanner"]["winningPlan"])
    await client.close()


async def test_open_alert_check_is_planned_on_its_index(store: EmbeddedStore) -> None:
    """Every crisis reading checks for the patient's open alert of its kind (no alert storm), and the overview
    counts a patient's open alerts: both on ``patient_open``, which holds exactly those alerts. Without it the
    embedded store looked the check up by ``patient_id`` alone (``patient_recent``) and read every past alert of
    the patient: 14.7 ms with 500 of them, 0.76 ms on the index (docs/operations.md). The store's ``explain``
    names the index it plans on (its counts of examined documents are derived from that plan, not measured)."""
    from server.alerts.documents import Alert

    client = make_client(store.url)
    await init_documents(client, "hm_open_alert", DOCUMENTS)
    patient = ObjectId()
    for kind in ("bp_crisis", "fall", None):
        plan = await client["hm_open_alert"].command(
            {"explain": {"find": "alerts", "filter": Alert.open_of(patient, kind)}, "verbosity": "queryPlanner"})
        assert plan["queryPlanner"]["winningPlan"]["inputStage"]["indexName"] == "patient_open"
    await client.close()
