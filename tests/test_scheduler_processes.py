"""The scheduler across whole server processes: catching up after a restart by the stated policy,
and two processes on one Redis and one store firing each dose exactly once."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from beanie import PydanticObjectId
from pymongo import AsyncMongoClient

from server.core.documents import utcnow
from server.infra.embedded_store import EmbeddedStore, free_port
from tests.helpers import Api, ServerProcess, User, process_env, server_processes
from tests.test_medications import create


def env_for(store: EmbeddedStore, tmp_path: Path, redis_url: str = "", grace_s: int = 60) -> dict[str, str]:
    return process_env(store.url, tmp_path, redis_url, dose_grace_s=grace_s)


def dose_row(patient: User, med: dict[str, Any], due: datetime, slot: str) -> dict[str, Any]:
    """A stored DoseEvent as the scheduler would have planned it (written straight into the store)."""
    return {"schema_version": 1, "patient_id": PydanticObjectId(patient.id),
            "medication_id": PydanticObjectId(med["id"]), "slot": slot, "timezone": "UTC", "due_at": due,
            "medication_name": med["name"], "dose": None, "drawer": None, "state": "scheduled",
            "created_at": utcnow()}


async def states(api: Api, patient: User) -> dict[str, dict[str, Any]]:
    now = utcnow()
    status, body = await api.request("GET", f"/api/patients/{patient.id}/doses", patient, params={
        "from": (now - timedelta(hours=2)).isoformat(), "to": (now + timedelta(hours=2)).isoformat()})
    assert status == 200, body
    return {d["planned_at"]: d for d in body["items"]}


async def test_restart_catches_up_by_the_stated_policy(store: EmbeddedStore, tmp_path: Path) -> None:
    env = env_for(store, tmp_path, grace_s=60)
    port = free_port()
    first = await ServerProcess(env, port).start()
    async with Api(first.url) as api:
        patient = await api.register("patient")
        carer = await api.register("caregiver")
        await api.link(patient, carer)
        med = await create(await api.socket(patient), patient.id, schedule={"as_needed": True}, drawer=None)
    assert await first.stop() == 0

    # While the server is down: one dose falls due (still within its grace window), and one dose's
    # grace window ends without anyone having been reminded.
    now = utcnow()
    db = AsyncMongoClient(store.url, tz_aware=True)[env["HEALTHMATE_MONGODB_DB"]]
    await db.dose_events.insert_many([dose_row(patient, med, now - timedelta(seconds=5), "recent"),
                                      dose_row(patient, med, now - timedelta(minutes=10), "old"),
                                      dose_row(patient, med, now + timedelta(minutes=30), "future")])
    second = await ServerProcess(env, port).start()
    try:
        async with Api(second.url) as api:
            for _ in range(100):
                seen = await states(api, patient)
                if seen["recent"]["state"] == "reminded" and seen["old"]["state"] == "missed":
                    break
                await asyncio.sleep(0.1)
            assert seen["recent"]["state"] == "reminded", seen  # late, but reminded
            assert seen["recent"]["reminded_at"] > seen["recent"]["due_at"]
            assert seen["old"]["state"] == "missed" and seen["old"]["reminded_at"] is None  # too late to remind
            assert seen["future"]["state"] == "scheduled"
        row = await db.dose_events.find_one({"slot": "old"})
        assert row is not None and row["missed_notified_at"] is not None  # the caregivers were told, once
        # The reminder notification goes out from its own loop, after the reminder itself (scheduler.py).
        expected = sorted([(carer.id, "dose_missed"), (patient.id, "reminder")])
        for _ in range(100):
            notes = await db.notifications.find({"patient_id": PydanticObjectId(patient.id)}).to_list(None)
            got = sorted((str(n["user_id"]), n["kind"]) for n in notes)
            if len(got) >= len(expected):
                break
            await asyncio.sleep(0.1)
        assert got == expected
    finally:
        assert await second.stop() == 0
        await db.client.close()


async def test_two_processes_fire_each_dose_exactly_once(store: EmbeddedStore, redis_url: str,
                                                         tmp_path: Path) -> None:
    env = env_for(store, tmp_path, redis_url)
    async with server_processes(env, env) as (one, two):
        db = AsyncMongoClient(store.url, tz_aware=True)[env["HEALTHMATE_MONGODB_DB"]]
        try:
            async with Api(one.url) as api_one, Api(two.url) as api_two:
                patient = await api_one.register("patient")
                carer = await api_one.register("caregiver")
                await api_one.link(patient, carer)
                on_one = await api_one.socket(patient)
                on_two = await api_two.socket(carer)
                med = await create(on_one, patient.id, schedule={"as_needed": True}, drawer=None)
                count = 80
                start = utcnow() + timedelta(seconds=2)
                await db.dose_events.insert_many([
                    dose_row(patient, med, start + timedelta(milliseconds=25 * i), f"d{i}") for i in range(count)])
                for sock in (on_one, on_two):
                    await sock.events.wait("dose:due", count=count, timeout=20)
                await asyncio.sleep(1.5)  # time for any duplicate to arrive
                for sock in (on_one, on_two):
                    ids = [d["id"] for d in sock.events.of("dose:due")]
                    assert len(ids) == count and len(set(ids)) == count
                assert await db.dose_events.count_documents({"state": "reminded"}) == count
        finally:
            await db.client.close()
