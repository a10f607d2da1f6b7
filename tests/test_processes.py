"""Whole server processes: two processes sharing rooms through one Redis, and `healthmate serve`
on the embedded store keeping users, data and its development secret across a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

from server.infra.embedded_store import EmbeddedStore, free_port
from tests.helpers import PASSWORD, Api, ServerProcess, process_env, server_processes


async def test_two_processes_share_rooms_through_redis(store: EmbeddedStore, redis_url: str, tmp_path: Path) -> None:
    env = process_env(store.url, tmp_path, redis_url)
    async with server_processes(env, env) as (one, two):
        async with Api(one.url) as api_one, Api(two.url) as api_two:
            patient = await api_one.register("patient")
            carer = await api_one.register("caregiver")
            on_two_patient = await api_two.socket(patient)
            on_two_carer = await api_two.socket(carer)
            # A link redeemed on process one reaches the patient's socket on process two...
            await api_one.link(patient, carer)
            (changed,) = await on_two_patient.events.wait("links:changed")
            assert changed["change"] == "added"
            # ...and the caregiver's socket on process two joined the patient's room.
            await api_one.request("PATCH", "/api/me", patient, json={"name": "Across"})
            (update,) = await on_two_carer.events.wait("patient:updated")
            assert update["name"] == "Across"
            # Revoked on process one: the caregiver on process two stops hearing the patient at once.
            _, links = await api_one.request("GET", "/api/links", patient)
            status, _ = await api_one.request("DELETE", f"/api/links/{links['items'][0]['id']}", patient)
            assert status == 200
            await on_two_carer.events.wait("links:changed", count=2)
            await api_one.request("PATCH", "/api/me", patient, json={"name": "Private"})
            await on_two_patient.events.wait("patient:updated", count=2)
            await asyncio.sleep(0.3)
            assert [u["name"] for u in on_two_carer.events.of("patient:updated")] == ["Across"]
            # Logging out on process one drops the socket held by process two.
            await api_one.request("POST", "/api/auth/logout", carer)
            for _ in range(100):
                if not on_two_carer.client.connected:
                    break
                await asyncio.sleep(0.05)
            assert not on_two_carer.client.connected


async def test_serve_on_embedded_store_keeps_data_across_restart(tmp_path: Path) -> None:
    env = {"HEALTHMATE_DATA_DIR": str(tmp_path / "data"), "HEALTHMATE_MONGODB_URL": "", "HEALTHMATE_REDIS_URL": "",
           "HEALTHMATE_JWT_SECRET": ""}
    port = free_port()
    first = await ServerProcess(env, port).start()
    async with Api(first.url) as api:
        user = await api.register("patient")
    assert await first.stop() == 0
    assert "data lives in" in "".join(first.output)
    assert (tmp_path / "data" / "db").is_dir() and (tmp_path / "data" / "jwt_secret").exists()

    second = await ServerProcess(env, port).start()
    try:
        async with Api(second.url) as api:
            status, _ = await api.request("POST", "/api/auth/login", json={"email": user.email, "password": PASSWORD})
            assert status == 200
            # The development secret was kept, so the refresh token from before the restart still works.
            status, body = await api.request("POST", "/api/auth/refresh", json={"refresh_token": user.refresh_token})
            assert status == 200, body
    finally:
        assert await second.stop() == 0
