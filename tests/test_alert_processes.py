"""Alerts across server processes on one Redis: raised on one, delivered on the other, an ack on
either seen by all, no duplicate per device; and a process killed between persisting an alert and
emitting it loses nothing (the other process resumes the emit)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from server.infra.embedded_store import EmbeddedStore
from tests.alert_clients import crisis, device_sock
from tests.helpers import Api, process_env, server_processes


def env(store: EmbeddedStore, redis_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**process_env(store.url, tmp_path, redis_url, alert_sweep_s=0.2, alert_emit_lease_s=1), **extra}


async def test_alert_raised_on_one_process_reaches_and_is_acked_across_both(
        store: EmbeddedStore, redis_url: str, tmp_path: Path) -> None:
    shared = env(store, redis_url, tmp_path)
    async with server_processes(shared, shared) as (one, two):
        async with Api(one.url, operator_env=shared) as api:
            patient = await api.register("patient")
            maria, doctor = await api.register("caregiver", name="Maria"), await api.register("clinician")
            await api.link(patient, maria)
            await api.link(patient, doctor)
            maria_one = await device_sock(one.url, maria, "maria-phone")
            maria_two = await device_sock(two.url, maria, "maria-tablet")
            doctor_two = await device_sock(two.url, doctor, "desk")
            ps = await device_sock(one.url, patient)
            await ps.ok("bp:add", crisis())
            socks = (maria_one, maria_two, doctor_two)
            alerts = [(await s.events.wait("alert:new"))[0] for s in socks]
            assert len({a["id"] for a in alerts}) == 1
            # Acknowledged on process two, seen on both.
            await doctor_two.ok("alert:ack", {"alert_id": alerts[0]["id"]})
            for s in socks:
                (shown,) = await s.events.wait("alert:acknowledged")
                assert shown["by"]["user_id"] == doctor.id
            await asyncio.sleep(0.5)
            for s in socks:
                assert len(s.events.of("alert:new")) == 1 and len(s.events.of("alert:acknowledged")) == 1
            for s in (*socks, ps):
                await s.close()


async def test_process_killed_between_persisting_and_emitting_loses_nothing(
        store: EmbeddedStore, redis_url: str, tmp_path: Path) -> None:
    healthy = env(store, redis_url, tmp_path)
    crashing = {**healthy, "HEALTHMATE_FAULT_INJECTION": "crash_after_alert_persist"}
    async with server_processes(crashing, healthy) as (doomed, survivor):
        async with Api(survivor.url) as api:
            patient = await api.register("patient")
            maria = await api.register("caregiver", name="Maria")
            await api.link(patient, maria)
            on_doomed = await device_sock(doomed.url, maria, "maria-tablet")
            on_survivor = await device_sock(survivor.url, maria, "maria-phone")
            ps = await device_sock(doomed.url, patient)
            reply = asyncio.create_task(ps.call("bp:add", crisis(), timeout=5))
            reply.add_done_callback(lambda t: t.cancelled() or t.exception())  # its process dies: no reply
            assert await asyncio.get_running_loop().run_in_executor(None, doomed.proc.wait, 20) == 70
            # The alert was stored but never emitted; the surviving process resumes it after the lease.
            (alert,) = await on_survivor.events.wait("alert:new", timeout=10)
            assert alert["kind"] == "bp_crisis"
            assert on_doomed.events.of("alert:new") == []
            for _ in range(50):  # emitted_at is recorded right after the emit that delivered it
                status, life = await api.request("GET", f"/api/alerts/{alert['id']}", maria)
                if life.get("emitted_at"):
                    break
                await asyncio.sleep(0.1)
            assert status == 200 and life["emitted_at"] is not None
            await on_survivor.ok("alert:received", {"alert_id": alert["id"]})
            # The tablet that was on the dead process reconnects to the survivor and gets it once.
            tablet = await device_sock(survivor.url, maria, "maria-tablet")
            (again,) = await tablet.events.wait("alert:new")
            assert again["id"] == alert["id"]
            await asyncio.sleep(1.0)
            assert len(on_survivor.events.of("alert:new")) == 1 and len(tablet.events.of("alert:new")) == 1
            for s in (on_survivor, tablet):
                await s.close()
            reply.cancel()
